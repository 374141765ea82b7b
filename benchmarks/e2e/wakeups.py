"""How late a sleeping process wakes up on this machine: a floor under every latency the
end-to-end benchmark measures.

A request crosses processes several times (client, worker, Redis, worker, Redis, worker,
client), and each crossing wakes a process that was asleep: the answer can be no faster
than the scheduler's wake-ups. One process per CPU, pinned to it, sleeps a fixed interval
over and over and records how much later than asked it ran again (as `cyclictest` does,
but through Python's `time.sleep`, as the server's and clients' event loops wait). Idle,
that is the machine's own wake-up latency; beside a phase's load, it is about what a process
of that phase waits for a CPU once it is due to run.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from hdrh.histogram import HdrHistogram

LOWEST_US, HIGHEST_US, DIGITS = 1, 10_000_000, 3


def _sleep_and_record(conn: Connection, cpu: int, interval_s: float, seconds: float) -> None:
    """Process body: sleep `interval_s` again and again for `seconds` on `cpu`; send back
    the encoded histogram of how late each wake-up came, in µs."""
    os.sched_setaffinity(0, {cpu})
    histogram = HdrHistogram(LOWEST_US, HIGHEST_US, DIGITS)
    conn.send("ready")
    conn.recv()  # start
    end = time.perf_counter() + seconds
    while (asked := time.perf_counter()) < end:
        time.sleep(interval_s)
        late_us = int((time.perf_counter() - asked - interval_s) * 1e6)
        histogram.record_value(min(max(late_us, LOWEST_US), HIGHEST_US))
    conn.send(histogram.encode())
    conn.close()


@dataclass
class WakeupMeter:
    """One sleeping process per CPU for `seconds`; `start()` then `result()`."""

    seconds: float
    interval_s: float = 0.002
    _processes: list[tuple[multiprocessing.process.BaseProcess, Connection]] | None = field(
        default=None, init=False, repr=False)

    def start(self) -> None:
        """Spawn the processes, wait until each is ready, then let them all start."""
        ctx = multiprocessing.get_context("spawn")
        self._processes = []
        for cpu in sorted(os.sched_getaffinity(0)):
            parent, child = ctx.Pipe()
            process = ctx.Process(target=_sleep_and_record,
                                  args=(child, cpu, self.interval_s, self.seconds),
                                  name=f"e2e-wakeups-{cpu}", daemon=True)
            process.start()
            self._processes.append((process, parent))
        for _, conn in self._processes:
            if not conn.poll(60) or conn.recv() != "ready":
                raise RuntimeError("a wake-up meter process did not start")
        for _, conn in self._processes:
            conn.send("start")

    def result(self) -> dict[str, Any]:
        """Wait for the processes; the merged lateness (µs) at p50, p99, p99.9 and max."""
        assert self._processes is not None, "start() first"
        merged = HdrHistogram(LOWEST_US, HIGHEST_US, DIGITS)
        for process, conn in self._processes:
            if not conn.poll(self.seconds + 60):
                raise RuntimeError("a wake-up meter process did not report")
            merged.decode_and_add(conn.recv())
            process.join(10)
        self._processes = None
        return {"interval_ms": self.interval_s * 1000, "samples": merged.get_total_count(),
                **{name: merged.get_value_at_percentile(q) for name, q in
                   (("p50", 50.0), ("p99", 99.0), ("p999", 99.9))},
                "max": merged.get_max_value()}


def measure(seconds: float, interval_s: float = 0.002) -> dict[str, Any]:
    """The wake-up lateness over `seconds` on every CPU, with nothing else started."""
    meter = WakeupMeter(seconds, interval_s)
    meter.start()
    return meter.result()
