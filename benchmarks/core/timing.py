"""A careful timer for calls of a few hundred nanoseconds to a few milliseconds.

Each case is a function and a list of distinct prepared inputs (the calls cycle through
them, so branch predictors and caches see varied inputs as in real traffic). The timer

1. warms every case up (one pass over its inputs, at least a few calls);
2. calibrates how many calls make one repeat last about `repeat_s` seconds;
3. runs `repeats` rounds; in each round every case runs one repeat, in a shuffled order, so
   the machine's slow drift and the other work on it hit all cases alike;
4. reports per case the median over repeats (the figure used), the minimum, the maximum and
   the interquartile range, in ns per decision (a batch call counts its rows).

The garbage collector is disabled while a repeat runs. The loop `for x in xs: f(x)` costs
about 15-30 ns per call on this machine; it is included, as a caller pays it too.
"""

from __future__ import annotations

import gc
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Case:
    """One timed contender: `func(x)` for x in `inputs`, `rows` decisions per call."""

    name: str
    func: Callable[[Any], Any]
    inputs: Sequence[Any]
    rows: int = 1
    calls: int = 0  # calls per repeat (calibrated)
    samples: list[float] = field(default_factory=list)  # ns per decision, one per repeat

    def run(self) -> float:
        xs = self.inputs
        n = self.calls
        batch = [xs[i % len(xs)] for i in range(n)]
        f = self.func
        enabled = gc.isenabled()
        gc.disable()
        try:
            start = time.perf_counter_ns()
            for x in batch:
                f(x)
            elapsed = time.perf_counter_ns() - start
        finally:
            if enabled:
                gc.enable()
        return elapsed / (n * self.rows)

    def summary(self) -> dict[str, Any]:
        s = sorted(self.samples)
        q = statistics.quantiles(s, n=4) if len(s) >= 2 else [s[0], s[0], s[0]]
        median = statistics.median(s)
        return {"median_ns": median, "min_ns": s[0], "max_ns": s[-1], "p25_ns": q[0],
                "p75_ns": q[2], "spread": (q[2] - q[0]) / median if median else 0.0,
                "repeats": len(s), "calls_per_repeat": self.calls,
                "rows_per_call": self.rows, "samples_ns": [round(v, 1) for v in self.samples]}


def calibrate(case: Case, repeat_s: float, max_calls: int = 200_000) -> None:
    """Warm the case up and choose its calls per repeat."""
    warm = max(3, min(len(case.inputs), 2000))
    f = case.func
    start = time.perf_counter()
    done = 0
    for x in case.inputs[:warm]:
        f(x)
        done += 1
        if time.perf_counter() - start > repeat_s:
            break
    per_call = (time.perf_counter() - start) / done
    case.calls = max(1, min(max_calls, int(repeat_s / max(per_call, 1e-9))))


def measure(cases: Sequence[Case], repeats: int, repeat_s: float, *, seed: int = 1,
            progress: Callable[[str], None] | None = None) -> None:
    """Time every case, `repeats` rounds, cases interleaved in a shuffled order per round."""
    for case in cases:
        calibrate(case, repeat_s)
    order = list(cases)
    rng = random.Random(seed)
    for r in range(repeats):
        rng.shuffle(order)
        for case in order:
            case.samples.append(case.run())
        if progress:
            progress(f"round {r + 1}/{repeats}")
