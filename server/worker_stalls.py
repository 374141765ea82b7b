"""How long a worker's event loop was held up, and by what: the figures behind a long tail.

Every call a worker serves waits while its event loop runs something else. A wait that
does not show in the Redis round trips or the decision, but does in the callers' p99, is
the loop being late: too much work queued on it, a callback that ran long, or Python's
cyclic garbage collector stopping the world. Two histograms tell them apart at 3 a.m.:

- `payauth_event_loop_lag_seconds`: how late a timer set every `LAG_PROBE_S` fired. It
  measures what any callback ready at that moment waited. uvloop's clock and timers count
  whole milliseconds, so a lag under a millisecond is below what the probe resolves.
- `payauth_gc_pause_seconds{generation}`: each collection's duration, from `gc.callbacks`.
"""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

from payauth.server.metrics import EVENT_LOOP_LAG, GC_PAUSE, child

# One probe every 20 ms: any stall of 20 ms or more is caught, shorter ones as often as
# they overlap a probe. 50 timer wake-ups a second cost an idle worker about half a percent
# of a core (payauth serve at rest, 2 workers: 1.25 -> 2.35 % of a core); a busy one is awake
# anyway.
LAG_PROBE_S = 0.02


async def watch_event_loop(stopping: asyncio.Event, interval_s: float = LAG_PROBE_S) -> None:
    """Observe, until `stopping` is set, how late each `interval_s` timer fires."""
    loop = asyncio.get_running_loop()
    observe = EVENT_LOOP_LAG.observe
    while not stopping.is_set():
        due = loop.time() + interval_s
        await asyncio.sleep(interval_s)
        observe(max(0.0, loop.time() - due))


class GcPauses:
    """Times each garbage collection through `gc.callbacks`, while installed."""

    def __init__(self) -> None:
        self._started = 0.0
        self._observe = [child(GC_PAUSE, str(generation)).observe for generation in range(3)]

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self._observe[info["generation"]](time.perf_counter() - self._started)
