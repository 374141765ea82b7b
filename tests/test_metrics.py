"""The Prometheus endpoint sums every worker's samples: RPC counts and latencies,
decisions by response code, replays, Redis latency."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from payauth.clients import AcquirerClient, IssuerClient
from tests.conftest import authorize_request, issue_card, open_account
from tests.servers import PayauthProcess


def _samples(server: PayauthProcess) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics",
                                  timeout=10).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_count_decisions_across_workers(payauth: PayauthProcess, issuer: IssuerClient,
                                                acquirer: AcquirerClient) -> None:
    before = _samples(payauth)
    account = open_account(issuer, 2_000)
    card = issue_card(issuer, account)
    requests = [authorize_request(card_token=card, amount_minor=1_000) for _ in range(3)]
    for request in requests:
        acquirer.authorize(request)
    acquirer.authorize(requests[0])  # a replay

    expected = {
        ("payauth_rpc_requests_total", (("code", "OK"), ("method", "Authorize"))): 4,
        ("payauth_decisions_total", (("decision", "APPROVE"), ("response_code", "00"))): 3,
        ("payauth_decisions_total", (("decision", "DECLINE"), ("response_code", "51"))): 1,
        ("payauth_replays_total", (("method", "Authorize"),)): 1,
        ("payauth_rpc_latency_seconds_count", (("method", "Authorize"),)): 4,
        ("payauth_redis_latency_seconds_count", (("operation", "authorize_commit"),)): 3,
    }

    def grown(after: dict) -> dict:
        return {key: after.get(key, 0) - before.get(key, 0) for key in expected}

    # Workers write their counts at most a flush interval (0.1 s) after the fact, and a
    # scrape can fall between the values one flush writes: look again until every figure
    # has arrived.
    deadline = time.monotonic() + 5
    figures = grown(_samples(payauth))
    while time.monotonic() < deadline and figures != expected:
        time.sleep(0.05)
        figures = grown(_samples(payauth))
    assert figures == expected


def test_dashboard_queries_name_real_metrics() -> None:
    import json
    import re
    from pathlib import Path

    from prometheus_client import Counter, Histogram

    from payauth.server import metrics

    exposed: set[str] = set()
    for value in vars(metrics).values():
        if isinstance(value, Counter):
            exposed.add(value._name + "_total")
        elif isinstance(value, Histogram):
            exposed.update(value._name + suffix for suffix in ("_bucket", "_count", "_sum"))
    from payauth.server.loyalty_figures import _families

    exposed.update(family.name for family in _families([]))  # read from Redis per scrape
    dashboard = json.loads((Path(__file__).parents[1] / "docs" / "grafana-dashboard.json")
                           .read_text())
    used = {name for panel in dashboard["panels"] for target in panel["targets"]
            for name in re.findall(r"payauth_\w+", target["expr"])}
    assert used and used <= exposed, used - exposed


def test_worker_metric_increments_reach_the_files_when_flushed(tmp_path: Path) -> None:
    """In a worker (PROMETHEUS_MULTIPROC_DIR set), increments wait in memory until
    flush_metrics writes them; a set replaces what was added before it."""
    import os
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        from prometheus_client import CollectorRegistry, Gauge, multiprocess
        from payauth.server import metrics

        def read():
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return {(s.name, tuple(sorted(s.labels.items()))): s.value
                    for f in registry.collect() for s in f.samples}

        ok = metrics.child(metrics.RPC_REQUESTS, "Authorize", "OK")
        ok.inc(); ok.inc()
        metrics.REDIS_LATENCY.labels("authorize_read").observe(0.0004)
        key = ("payauth_rpc_requests_total", (("code", "OK"), ("method", "Authorize")))
        assert read().get(key, 0) == 0, read().get(key)
        metrics.flush_metrics()
        got = read()
        assert got[key] == 2, got[key]
        count = ("payauth_redis_latency_seconds_count", (("operation", "authorize_read"),))
        assert got[count] == 1
        gauge = Gauge("test_level", "a level", multiprocess_mode="liveall")
        gauge.inc(5); gauge.set(1); gauge.inc(2)
        metrics.flush_metrics()
        assert [v for (name, _), v in read().items() if name == "test_level"] == [3]
        print("ok")
    """)
    folder = tmp_path / "prom"
    folder.mkdir()
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder)},
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_worker_stall_metrics_time_a_blocked_loop_and_each_collection() -> None:
    """The event-loop probe records how late its timer fired; GcPauses times every
    collection by generation."""
    import asyncio
    import gc

    from payauth.server.metrics import EVENT_LOOP_LAG, GC_PAUSE
    from payauth.server.worker_stalls import GcPauses, watch_event_loop

    def histogram(metric: object, **labels: str) -> dict[str, float]:
        return {s.name.rsplit("_", 1)[-1] + s.labels.get("le", ""): s.value
                for family in metric.collect() for s in family.samples
                if all(s.labels.get(k) == v for k, v in labels.items())}

    before = histogram(EVENT_LOOP_LAG)

    async def block_the_loop() -> None:
        stopping = asyncio.Event()
        probing = asyncio.create_task(watch_event_loop(stopping, interval_s=0.005))
        await asyncio.sleep(0.05)
        time.sleep(0.06)  # a callback that holds the loop for 60 ms
        await asyncio.sleep(0.02)
        stopping.set()
        await probing

    asyncio.run(block_the_loop())
    after = histogram(EVENT_LOOP_LAG)
    assert after["count"] - before["count"] >= 5
    # The probe that waited on the blocked loop was 50 ms late or more.
    late = (after["count"] - after["bucket0.05"]) - (before["count"] - before["bucket0.05"])
    assert late >= 1

    gen2_before = histogram(GC_PAUSE, generation="2")
    with GcPauses():
        gc.collect()
    gc.collect()  # after __exit__: not timed
    gen2_after = histogram(GC_PAUSE, generation="2")
    assert gen2_after["count"] - gen2_before.get("count", 0) == 1
    assert gen2_after["sum"] > gen2_before.get("sum", 0)


def test_workers_probe_their_event_loops(payauth: PayauthProcess) -> None:
    """A running server exposes its workers' event-loop probes (one every 20 ms each)."""
    def probes() -> float:
        return _samples(payauth).get(("payauth_event_loop_lag_seconds_count", ()), 0)

    first = probes()
    time.sleep(0.5)
    assert probes() - first >= 10
