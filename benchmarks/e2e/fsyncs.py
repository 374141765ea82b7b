"""How long the disk under Redis's append-only file takes to make an append durable: a floor
under every new authorization's latency.

With `appendfsync always` (the embedded Redis's setting, brief §5) Redis answers a write only
after the AOF holds it on disk: every commit of an authorization waits for one `fdatasync` of
the file (shared with the other writes of Redis's event-loop turn). This appends what an
authorization adds to the AOF (about 2 KB) to a file in the run's folder, on the same
filesystem as the embedded Redis's AOF, and times each `fdatasync` (Redis's call for it on
Linux), with nothing else driven: back to back (the disk's best), and with a pause between
them, as Redis syncs below saturation. On this VM the second is the slower one, two to four
times at the median (benchmarks/e2e/README.md, "The disk's fsync"), and it is the one Redis's
own syncs of the AOF matched while Authorize ran one request at a time.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from hdrh.histogram import HdrHistogram

LOWEST_US, HIGHEST_US, DIGITS = 1, 10_000_000, 3
# What one authorization appends to the AOF (`aof_bytes_per_authorization` in the Redis
# shard benchmark: 2,062 bytes).
APPEND_BYTES = 2048


def measure(folder: Path, count: int, pause_s: float = 0.0,
            append_bytes: int = APPEND_BYTES) -> dict[str, Any]:
    """Append `append_bytes` and fdatasync, `count` times, `pause_s` apart, to a new file in
    `folder` (removed afterwards); each sync's duration in µs at p50, p99, p99.9 and max."""
    histogram = HdrHistogram(LOWEST_US, HIGHEST_US, DIGITS)
    path = folder / "fsync-meter.bin"
    block = b"x" * append_bytes
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for _ in range(count):
            os.write(fd, block)
            started = time.perf_counter()
            os.fdatasync(fd)
            micros = int((time.perf_counter() - started) * 1e6)
            histogram.record_value(min(max(micros, LOWEST_US), HIGHEST_US))
            if pause_s:
                time.sleep(pause_s)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    return {"append_bytes": append_bytes, "pause_ms": pause_s * 1000,
            "samples": histogram.get_total_count(),
            **{name: histogram.get_value_at_percentile(q) for name, q in
               (("p50", 50.0), ("p99", 99.0), ("p999", 99.9))},
            "max": histogram.get_max_value()}


def measure_both(folder: Path, count: int, pause_s: float) -> dict[str, dict[str, Any]]:
    """`measure` back to back and `pause_s` apart, `count` syncs each."""
    return {"back_to_back": measure(folder, count),
            "paused": measure(folder, count, pause_s)}
