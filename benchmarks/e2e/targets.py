"""The targets the end-to-end benchmark checks, and the verdicts a run gives on them: the
throughput targets (authorize/empty, stream/authorize) on the confidence interval of their
rounds' median, the latency targets against the floors that the empty handler and empty_redis
set at the same load.

Apart from the harness and on the standard library alone, so that the test suite checks these
statistics without the benchmark's own dependencies.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

# The throughput targets: the ratio each names, and the least it must be.
RATIO_TARGETS = {"authorize_to_empty_at_least_0.5": ("authorize_to_empty", 0.5),
                 "stream_to_authorize_at_least_1.5": ("stream_to_authorize", 1.5)}

# The latency targets at Authorize's 50 % of its saturation: the percentile each names, and the
# bound in milliseconds it must stay under.
LATENCY_TARGETS = {"authorize_p99_at_50pct_under_2ms": ("p99", 2.0),
                   "authorize_p999_at_50pct_under_5ms": ("p999", 5.0)}


def round_order(modes: list[str], round_index: int) -> list[str]:
    """The order of the modes in saturation round `round_index`: as given in even rounds,
    reversed in odd ones. Neighbours in `modes` then always run one right after the other,
    each first in every other round, so a drift of the host's speed over the minutes of a run
    moves both sides of a ratio alike and favours neither (what a rotating order did not do:
    the pair it split ran up to a round's length apart)."""
    return list(modes) if round_index % 2 == 0 else list(reversed(modes))


def median_interval(values: list[float], confidence: float = 0.95) -> dict[str, float] | None:
    """A distribution-free confidence interval of the median of `values`: the k-th smallest
    and k-th largest value, for the largest k whose interval holds the true median with at
    least `confidence` (each value falls on either side of it with probability 1/2, so the
    count below it is binomial). Below six values no interval reaches 95 %: the widest one
    (the smallest and the largest value) is given with the confidence it does reach. None
    without values."""
    n = len(values)
    if n == 0:
        return None
    ordered = sorted(values)

    def coverage(k: int) -> float:  # P(x_(k) <= median <= x_(n+1-k))
        return 1.0 - 2.0 * sum(math.comb(n, i) for i in range(k)) / 2.0**n

    k = 1
    while k + 1 <= (n + 1) // 2 and coverage(k + 1) >= confidence:
        k += 1
    return {"low": ordered[k - 1], "high": ordered[n - k], "confidence": round(coverage(k), 3)}


def median_with_interval(values: list[float]) -> dict[str, float] | None:
    """The median of a ratio's rounds with its confidence interval (`median_interval`), for a
    ratio that is read beside the targets rather than judged against one; None without
    rounds."""
    interval = median_interval(values)
    if interval is None:
        return None
    return {"median": round(statistics.median(values), 3), **interval}


# Fewer rounds than this give no interval of the median worth a verdict (five: 94 %).
VERDICT_MIN_ROUNDS = 5


def target_verdicts(ratio_rounds: dict[str, list[float]]) -> dict[str, dict[str, Any]]:
    """Each throughput target against the confidence interval of its ratio's median: "met"
    when the whole interval lies at or above the target, "not met" when it lies below,
    "undecided" when the target falls inside (the host's noise in this run is larger than the
    distance between the ratio and its target), "too few rounds" below VERDICT_MIN_ROUNDS."""
    verdicts: dict[str, dict[str, Any]] = {}
    for target, (name, least) in RATIO_TARGETS.items():
        values = ratio_rounds.get(name, [])
        interval = median_interval(values)
        if interval is None:
            continue
        verdict = ("too few rounds" if len(values) < VERDICT_MIN_ROUNDS else
                   "met" if interval["low"] >= least else
                   "not met" if interval["high"] < least else "undecided")
        verdicts[target] = {**interval, "verdict": verdict}
    return verdicts


def target_rounds(ratio_rounds: dict[str, list[float]]) -> dict[str, list[int]]:
    """How many of the run's rounds meet each throughput target, as [rounds meeting it,
    rounds]: on a shared host one round's ratio moves by more than a target's margin, so the
    verdict on the median reads with how the rounds fell."""
    counts: dict[str, list[int]] = {}
    for target, (name, least) in RATIO_TARGETS.items():
        values = ratio_rounds.get(name)
        if values:
            counts[target] = [sum(v >= least for v in values), len(values)]
    return counts


# The floors under Authorize's latency, lowest first: the modes the harness measures at
# Authorize's target load, and what each one's miss of a bound says.
LATENCY_FLOORS = (("empty", "below the stack's floor"),
                  ("empty_redis", "below the design's floor"))


def latency_target_floor(floor: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Each latency target against the floors under it: Authorize's figure at its target load
    beside the empty handler's and, when it ran, empty_redis's at the same offered load
    (`floor`, as the harness's `latency_floor_ms` gives them). The empty handler answers a
    fixed response on the same stack, workers, clients and host; empty_redis first waits for
    Authorize's two round trips to Redis (the second a write the AOF syncs), as the design
    (brief §4) has every Authorize do. Both spend less CPU per call than any real handler.
    Verdicts: "met" (Authorize is under the bound); "below the stack's floor" (the empty
    handler misses the bound too: no handler on this stack reaches it on this host at that
    load); "below the design's floor" (the empty handler meets it, empty_redis does not: no
    handler that waits for Redis as the design does reaches it here); "missed" (the floors
    meet it and Authorize does not: the difference is payauth's own). With each, the floors'
    figures and, when the run measured them, their figures alone at the low rate. Empty
    without a floor."""
    if not floor:
        return {}
    low = floor.get("low_rate", {})
    verdicts: dict[str, dict[str, Any]] = {}
    for target, (percentile, bound) in LATENCY_TARGETS.items():
        authorize = floor["authorize"][percentile]
        floors = {mode: floor[mode][percentile] for mode, _ in LATENCY_FLOORS if mode in floor}
        verdict = "met" if authorize < bound else next(
            (below for mode, below in LATENCY_FLOORS
             if mode in floors and floors[mode] >= bound), "missed")
        verdicts[target] = {"bound_ms": bound, "authorize_ms": authorize, "floors_ms": floors,
                            "alone_ms": {mode: low[mode][percentile] for mode in floors
                                         if mode in low},
                            "verdict": verdict}
    return verdicts
