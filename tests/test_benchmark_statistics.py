"""The e2e benchmark's statistics: the confidence interval of a median and the verdicts taken
on it, the latency targets against the floors under them, and the order of the modes in its
rounds."""

from __future__ import annotations

import math

from benchmarks.e2e.targets import (
    latency_target_floor,
    median_interval,
    median_with_interval,
    round_order,
    target_verdicts,
)


def _binomial_coverage(n: int, k: int) -> float:
    """P(x_(k) <= median <= x_(n+1-k)) for n values of a continuous distribution."""
    return sum(math.comb(n, i) for i in range(k, n - k + 1)) / 2**n


def test_median_interval_is_the_narrowest_order_statistics_reaching_95_percent() -> None:
    for n in range(6, 40):
        values = [float(v) for v in range(n)]
        interval = median_interval(values)
        assert interval is not None
        k = int(interval["low"]) + 1  # the k-th smallest value is k - 1 here
        assert interval["high"] == n - k
        assert interval["confidence"] == round(_binomial_coverage(n, k), 3)
        assert _binomial_coverage(n, k) >= 0.95
        assert _binomial_coverage(n, k + 1) < 0.95 or k + 1 > (n + 1) // 2


def test_median_interval_below_six_values_is_their_range_with_its_confidence() -> None:
    assert median_interval([]) is None
    assert median_interval([1.4, 1.2, 1.6, 1.5, 1.3]) == {"low": 1.2, "high": 1.6,
                                                          "confidence": 0.938}
    assert median_interval([2.0]) == {"low": 2.0, "high": 2.0, "confidence": 0.0}


def test_verdicts_follow_where_the_target_falls_against_the_interval() -> None:
    verdicts = target_verdicts({
        "authorize_to_empty": [0.546, 0.558, 0.577, 0.613, 0.565],
        "stream_to_authorize": [1.249, 1.446, 1.410, 1.411, 1.617],
    })
    assert verdicts["authorize_to_empty_at_least_0.5"]["verdict"] == "met"
    assert verdicts["stream_to_authorize_at_least_1.5"]["verdict"] == "undecided"
    below = target_verdicts({"stream_to_authorize": [1.2, 1.3, 1.35, 1.4, 1.45, 1.3]})
    assert below["stream_to_authorize_at_least_1.5"]["verdict"] == "not met"
    few = target_verdicts({"authorize_to_empty": [0.7, 0.8]})
    assert few["authorize_to_empty_at_least_0.5"]["verdict"] == "too few rounds"


def test_rounds_run_neighbouring_modes_next_to_each_other_in_both_orders() -> None:
    modes = ["empty_redis", "empty", "authorize", "stream", "empty_stream"]
    orders = [round_order(modes, r) for r in range(4)]
    assert orders[0] == modes and orders[2] == modes
    assert orders[1] == list(reversed(modes)) and orders[3] == orders[1]
    for order in orders:
        for a, b in (("empty", "authorize"), ("authorize", "stream")):
            assert abs(order.index(a) - order.index(b)) == 1


def test_a_ratio_read_beside_the_targets_has_its_median_and_interval() -> None:
    rounds = [1.730, 1.617, 1.807, 1.919, 1.517, 1.500, 1.628, 1.762, 1.594, 1.822, 1.950]
    assert median_with_interval(rounds) == {"median": 1.73, "low": 1.517, "high": 1.919,
                                            "confidence": 0.988}
    assert median_with_interval([1.4, 1.6]) == {"median": 1.5, "low": 1.4, "high": 1.6,
                                                "confidence": 0.5}
    assert median_with_interval([]) is None


def _floor(authorize: tuple[float, float], empty: tuple[float, float],
           empty_redis: tuple[float, float] | None = None,
           alone: tuple[float, float] | None = None) -> dict:
    """A `latency_floor_ms` as the harness writes it, with (p99, p99.9) figures."""
    def figures(p99_p999: tuple[float, float]) -> dict:
        return {"p50": 0.5, "p99": p99_p999[0], "p999": p99_p999[1]}

    floor = {"offered_rps": 900.0, "authorize": figures(authorize), "empty": figures(empty)}
    if empty_redis:
        floor["empty_redis"] = figures(empty_redis)
    if alone:
        floor["low_rate"] = {"level": "50/s", "authorize": figures((3.0, 4.0)),
                             "empty": figures(alone)}
    return floor


def test_a_latency_target_the_empty_handler_misses_lies_below_the_stacks_floor() -> None:
    reach = latency_target_floor(_floor(authorize=(16.9, 22.9), empty=(7.1, 4.2),
                                        alone=(3.2, 6.7)))
    # The empty handler's p99 at the same load (7.1 ms) misses 2 ms: no handler reaches it.
    assert reach["authorize_p99_at_50pct_under_2ms"] == {
        "bound_ms": 2.0, "authorize_ms": 16.9, "floors_ms": {"empty": 7.1},
        "alone_ms": {"empty": 3.2}, "verdict": "below the stack's floor"}
    # Its p99.9 (4.2 ms) is under 5 ms and no design floor was measured: payauth's own miss.
    assert reach["authorize_p999_at_50pct_under_5ms"]["verdict"] == "missed"


def test_a_latency_target_only_the_design_floor_misses_lies_below_it() -> None:
    reach = latency_target_floor(_floor(authorize=(16.9, 22.9), empty=(1.5, 4.2),
                                        empty_redis=(2.4, 4.9)))
    assert [v["verdict"] for v in reach.values()] == ["below the design's floor", "missed"]
    assert reach["authorize_p999_at_50pct_under_5ms"]["floors_ms"] == {"empty": 4.2,
                                                                       "empty_redis": 4.9}
    assert reach["authorize_p999_at_50pct_under_5ms"]["alone_ms"] == {}
    # Both floors missing a bound: the lower one, the stack's, is named.
    both = latency_target_floor(_floor(authorize=(16.9, 22.9), empty=(2.5, 4.2),
                                       empty_redis=(3.0, 6.0)))
    assert [v["verdict"] for v in both.values()] == ["below the stack's floor",
                                                     "below the design's floor"]


def test_a_latency_target_authorize_reaches_is_met_whatever_the_floor() -> None:
    reach = latency_target_floor(_floor(authorize=(1.9, 4.9), empty=(2.5, 6.0)))
    assert [v["verdict"] for v in reach.values()] == ["met", "met"]
    # On the bound is not under it: the empty handler at exactly 2 ms misses it too.
    at_bound = latency_target_floor(_floor(authorize=(2.0, 9.0), empty=(2.0, 4.99)))
    assert [v["verdict"] for v in at_bound.values()] == ["below the stack's floor", "missed"]


def test_no_floor_gives_no_latency_verdicts() -> None:
    assert latency_target_floor(None) == {}
