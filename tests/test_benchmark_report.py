"""The e2e benchmark's summary lines: what Redis's latency monitor saw over a run's phases, and
the latency targets against the floors under them."""

from __future__ import annotations

from benchmarks.e2e.report import latency_reach, redis_stalls
from benchmarks.e2e.targets import latency_target_floor


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


def test_latency_targets_are_read_against_the_floors_with_their_low_rate_figures() -> None:
    floor = {"offered_rps": 915.0,
             "authorize": {"p50": 3.6, "p99": 16.927, "p999": 22.863},
             "empty": {"p50": 1.5, "p99": 7.079, "p999": 4.5},
             "empty_redis": {"p50": 2.1, "p99": 8.2, "p999": 12.0},
             "low_rate": {"level": "50/s", "authorize": {"p50": 3.5, "p99": 6.0, "p999": 7.2},
                          "empty": {"p50": 1.6, "p99": 3.221, "p999": 6.655},
                          "empty_redis": {"p50": 1.8, "p99": 2.93, "p999": 5.23}}}
    doc = {"latency_floor_ms": floor, "latency_target_floor": latency_target_floor(floor)}
    assert latency_reach(doc) == (
        "latency targets against the floors under them: "
        "authorize_p99_at_50pct_under_2ms: authorize 16.93 ms; at the same load the empty "
        "handler 7.08 ms, empty_redis 8.20 ms (alone at 50/s: 3.22, 2.93 ms): below the "
        "stack's floor; "
        "authorize_p999_at_50pct_under_5ms: authorize 22.86 ms; at the same load the empty "
        "handler 4.50 ms, empty_redis 12.00 ms (alone at 50/s: 6.66, 5.23 ms): below the "
        "design's floor")
    del floor["low_rate"], floor["empty_redis"]
    doc["latency_target_floor"] = latency_target_floor(floor)
    assert latency_reach(doc).endswith("at the same load the empty handler 4.50 ms: missed")
    assert latency_reach({"latency_floor_ms": None, "latency_target_floor": {}}) == ""
