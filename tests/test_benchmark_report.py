"""The e2e benchmark's summary of what Redis's latency monitor saw over a run's phases."""

from __future__ import annotations

from benchmarks.e2e.report import redis_stalls


def test_redis_stalls_are_counted_by_kind_with_the_longest() -> None:
    phases = [
        {"redis_stalls_ms": {"aof-fsync-always": 168}},
        {"redis_stalls_ms": {}},
        {"redis_stalls_ms": {"aof-fsync-always": 699, "command": 55}},
        {},
    ]
    assert redis_stalls(phases) == ("aof-fsync-always in 2 of 4 phases, the longest 699 ms, "
                                    "command in 1 of 4 phases, the longest 55 ms")
    assert redis_stalls([{}, {"redis_stalls_ms": {}}]) == "none"
