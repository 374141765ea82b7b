"""The e2e benchmark's statistics: the confidence interval of a median and the verdicts taken
on it, and the order of the modes in its rounds."""

from __future__ import annotations

import math

from benchmarks.e2e.targets import (
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
