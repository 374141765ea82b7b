"""The sweeper that releases expired holds and expires loyalty point lots, run in
every worker.

Each worker sweeps its share of the partitions (partition % workers == index)
every interval; servers on other nodes sweep the same partitions too. That
is safe by construction: releasing a hold is one Function call that re-reads
the hold, so of any number of sweepers racing a capture or a reversal on the
same hold exactly one changes it, and a sweeper that dies mid-sweep leaves
nothing half done — the next sweep picks up what is still due.
"""

from __future__ import annotations

import asyncio
import logging
import random

from redis.exceptions import RedisError

from payauth.server import keys
from payauth.server.clock import Clock
from payauth.server.loyalty_store import LoyaltyStore
from payauth.server.metrics import EXPIRED_HOLDS, LOYALTY_POINTS, child
from payauth.server.store import Store

log = logging.getLogger(__name__)


class ExpirySweeper:
    """Releases the expired holds of a set of partitions."""

    def __init__(self, store: Store, clock: Clock, interval_s: float, worker_index: int = 0,
                 worker_count: int = 1, loyalty: LoyaltyStore | None = None) -> None:
        self._store = store
        self._clock = clock
        self._interval_s = interval_s
        self._partitions = list(range(worker_index, keys.PARTITIONS, worker_count))
        self._loyalty = loyalty

    async def sweep_once(self) -> int:
        """Release every hold of this sweeper's partitions that is due, then expire the
        loyalty point lots that are due; return how many holds were released."""
        released = await self._release_holds(int(self._clock() * 1000))
        if self._loyalty is not None:
            await self.expire_points(int(self._clock() * 1000))
        return released

    async def expire_points(self, now_ms: int) -> int:
        """Expire the due point lots of this sweeper's partitions; the points expired.
        Each lot is removed by the Function call that expires it, so racing sweepers
        expire it once."""
        assert self._loyalty is not None
        total = 0
        while True:
            due = await self._loyalty.due_lots(self._partitions, now_ms)
            if not due:
                return total
            expired = [await self._loyalty.expire_lots(p, program_id, member_id, now_ms)
                       for p, program_id, member_id in due]
            for (_, program_id, _), points in zip(due, expired, strict=True):
                child(LOYALTY_POINTS, program_id, "-", "expired").inc(points)
            total += sum(expired)

    async def _release_holds(self, now_ms: int) -> int:
        released = 0
        while True:
            due = await self._store.due_holds(self._partitions, now_ms)
            if not due:
                return released
            outcomes = [await self._store.expire(p, auth_id, now_ms) for p, auth_id in due]
            released += outcomes.count("expired")
            EXPIRED_HOLDS.inc(outcomes.count("expired"))
            if "expired" not in outcomes and "gone" not in outcomes:
                return released  # all extended meanwhile; nothing left to release now

    async def run(self, stopping: asyncio.Event) -> None:
        """Sweep until `stopping` is set; any failure is logged and retried."""
        # Start at a random point of the interval, so workers do not sweep in step.
        await _sleep_or_stop(stopping, random.uniform(0, self._interval_s))
        while not stopping.is_set():
            try:
                count = await self.sweep_once()
                if count:
                    log.info("released %d expired hold(s)", count)
            except RedisError as exc:
                log.warning("expiry sweep failed, retrying next interval: %s", exc)
            except Exception:  # noqa: BLE001 - the sweeper must outlive any one failure
                log.exception("expiry sweep failed, retrying next interval")
            await _sleep_or_stop(stopping, self._interval_s)


async def _sleep_or_stop(stopping: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stopping.wait(), seconds)
    except TimeoutError:
        pass
