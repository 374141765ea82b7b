"""Prometheus metrics of the server, shared across worker processes.

prometheus-client's multi-process mode: every worker writes its samples to
files under PROMETHEUS_MULTIPROC_DIR (set by the supervisor before the workers
start), and the supervisor's /metrics endpoint adds them up. The names below
are what the dashboard (docs/grafana-dashboard.json) and alerts use.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    multiprocess,
    start_http_server,
    values,
)
from prometheus_client.registry import Collector

from payauth.v1 import authorizer_pb2, common_pb2

_PID = os.getpid()


def _this_process() -> int:
    """This process's pid, read once. prometheus-client's multi-process values compare it
    with the current pid at every sample to notice a fork; the default calls getpid() each
    time, a system call worth about 3 % of a worker's CPU under load. Workers are spawned,
    never forked, so the pid read at import is theirs for life."""
    return _PID


# This process's metric values whose increments wait in memory for `flush_metrics`.
_buffered: list[Any] = []


def _buffered_value_class() -> type:
    """prometheus-client's multi-process value, its increments added up in memory and
    written to the shared file by `flush_metrics` (a worker runs `flush_metrics_every`).

    Each write to the file takes a lock and packs the value into the mmap: eight of them
    per Authorize (three latency histograms, the call, the decision) were about 7 % of a
    worker's CPU at saturation. A scrape sees a worker's counts at most one flush
    interval late; values that are set (gauges) are written at once."""
    base: Any = values.MultiProcessValue(_this_process)

    class BufferedValue(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._pending = 0.0
            _buffered.append(self)

        def inc(self, amount: float) -> None:
            self._pending += amount

        def set(self, value: float, timestamp: float | None = None) -> None:
            self._pending = 0.0  # a set replaces what was added before it
            super().set(value, timestamp)

        def get(self) -> float:
            return float(super().get()) + self._pending

        def write_pending(self) -> None:
            pending = self._pending
            if pending:
                self._pending = 0.0
                super().inc(pending)

    return BufferedValue


if "PROMETHEUS_MULTIPROC_DIR" in os.environ:  # a worker: set before any metric exists
    values.ValueClass = _buffered_value_class()


def flush_metrics() -> None:
    """Write this process's pending increments to its multi-process file."""
    for value in _buffered:
        value.write_pending()


async def flush_metrics_every(interval_s: float, stopping: asyncio.Event) -> None:
    """Flush every `interval_s` until `stopping` is set, and once more then."""
    while not stopping.is_set():
        try:
            await asyncio.wait_for(stopping.wait(), interval_s)
        except TimeoutError:
            pass
        flush_metrics()

# Sub-millisecond resolution where Authorize lives, seconds where trouble lives.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005,
                   0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

RPC_REQUESTS = Counter("payauth_rpc_requests", "RPCs (and stream messages) handled, by method "
                       "and gRPC status code", ("method", "code"))
RPC_LATENCY = Histogram("payauth_rpc_latency_seconds", "Time to answer an RPC (or a stream "
                        "message), by method", ("method",), buckets=LATENCY_BUCKETS)
DECISIONS = Counter("payauth_decisions", "Authorization decisions by decision and ISO 8583 "
                    "response code", ("decision", "response_code"))
REPLAYS = Counter("payauth_replays", "Answers replayed for a repeated request_id, by method",
                  ("method",))
STAND_IN = Counter("payauth_stand_in_decisions", "Decisions taken under the stand-in policy "
                   "because the state store did not answer")
REDIS_LATENCY = Histogram("payauth_redis_latency_seconds", "Time of one Redis round trip, by "
                          "operation", ("operation",), buckets=LATENCY_BUCKETS)
EXPIRED_HOLDS = Counter("payauth_expired_holds", "Holds released by the expiry sweeper")
# Where stalls live: from a tenth of a millisecond (a busy turn) to seconds.
STALL_BUCKETS = (0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
EVENT_LOOP_LAG = Histogram("payauth_event_loop_lag_seconds", "How late a worker's event loop "
                           "ran a timer probe (set every 20 ms): what a ready call waited",
                           buckets=STALL_BUCKETS)
GC_PAUSE = Histogram("payauth_gc_pause_seconds", "Duration of each garbage collection in a "
                     "worker, by generation; the event loop stops while it runs",
                     ("generation",), buckets=STALL_BUCKETS)
LOYALTY_POINTS = Counter("payauth_loyalty_points", "Loyalty points moved through the Loyalty "
                         "API and the expiry sweeper, by program, A/B variant ('-' without a "
                         "test) and movement (issued, redeemed, expired, adjusted_in, "
                         "adjusted_out)", ["program", "variant", "movement"])


# Children of labelled metrics by (metric, label values): labels() takes a lock and
# builds its key on every call, and the hot path asks for the same few children.
_children: dict[tuple[Any, tuple[str, ...]], Any] = {}


def child(metric: Any, *labels: str) -> Any:
    """`metric.labels(*labels)`, looked up once."""
    found = _children.get((metric, labels))
    if found is None:
        found = _children[(metric, labels)] = metric.labels(*labels)
    return found


def count_decision(response: authorizer_pb2.AuthorizeResponse,
                   method: str) -> authorizer_pb2.AuthorizeResponse:
    """Count an authorization answer (and a replay); return it."""
    child(DECISIONS, _DECISION_NAMES[response.decision], response.iso_response_code).inc()
    if response.replayed:
        child(REPLAYS, method).inc()
    return response


_DECISION_NAMES = {number: name.removeprefix("DECISION_")
                   for name, number in common_pb2.Decision.items()}


def prepare_directory(folder: Path) -> None:
    """Empty the multi-process sample folder and point this process (and its future
    workers) at it; call before any worker starts."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)


def serve_metrics(host: str, port: int, collectors: Sequence[Collector] = ()) -> None:
    """Serve /metrics, summing every worker's samples, from a daemon thread; `collectors`
    add figures read at each scrape (the loyalty programs')."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    for collector in collectors:
        registry.register(collector)
    start_http_server(port, addr=host, registry=registry)


def worker_exited(pid: int) -> None:
    """Drop a dead worker's live gauges (counters and histograms keep their totals)."""
    multiprocess.mark_process_dead(pid)
