"""Program figures: how a loyalty program (and each of its A/B variants) is doing.

Every ledger entry moves its program's figures in the same Function call
(functions/loyalty.lua `count_figures`), kept per partition so that the
entry, the balance and the figures change atomically on Redis Cluster too.
Reading them sums the partitions in one pipeline; the Loyalty API serves them
(`GetProgramFigures`) and the metrics endpoint exports them at each scrape.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from payauth.server import keys
from payauth.v1 import loyalty_pb2

log = logging.getLogger(__name__)

DAY_MS = 86_400_000
VARIANTS = ("-", "A", "B")
COUNTS = ("members", "issued", "redeemed", "expired", "adjusted_in", "adjusted_out",
          "reversed", "available", "pending")


@dataclass
class Figures:
    """One variant's figures (or a program's, summed)."""

    variant: str
    counts: dict[str, int]
    active: int = 0

    def add(self, other: Figures) -> None:
        for name in COUNTS:
            self.counts[name] += other.counts[name]
        self.active += other.active

    def redemption_rate_bps(self) -> int:
        """Points redeemed per point credited, in basis points."""
        credited = self.counts["issued"] + self.counts["adjusted_in"]
        return self.counts["redeemed"] * 10_000 // credited if credited else 0


async def read_figures(client: Any, program_id: str, now_ms: int,
                       active_window_days: int = 30) -> dict[str, Figures]:
    """Every variant's figures, summed over the partitions (one pipeline)."""
    pipe = client.pipeline(transaction=False)
    for p in range(keys.PARTITIONS):
        pipe.hgetall(keys.program_figures(p, program_id))
        for variant in VARIANTS:
            pipe.zcount(keys.active_members(p, program_id, variant),
                        now_ms - active_window_days * DAY_MS, "+inf")
    replies = await pipe.execute()
    figures = {v: Figures(v, dict.fromkeys(COUNTS, 0)) for v in VARIANTS}
    step = 1 + len(VARIANTS)
    for p in range(keys.PARTITIONS):
        fields = replies[p * step]
        for name, value in fields.items():
            variant, _, count = name.decode().partition(":")
            if variant in figures and count in figures[variant].counts:
                figures[variant].counts[count] += int(value)
        for i, variant in enumerate(VARIANTS):
            figures[variant].active += int(replies[p * step + 1 + i])
    return figures


def figures_proto(f: Figures, variant: int, point_value: tuple[int, int] | None,
                  currency: str) -> loyalty_pb2.ProgramFigures:
    """ProgramFigures from summed counts; the liability at the home currency's point value."""
    mantissa, scale = point_value or (0, 0)
    return loyalty_pb2.ProgramFigures(
        variant=variant, members_enrolled=f.counts["members"], members_active=f.active,
        points_issued=f.counts["issued"], points_redeemed=f.counts["redeemed"],
        points_expired=f.counts["expired"], points_adjusted_in=f.counts["adjusted_in"],
        points_adjusted_out=f.counts["adjusted_out"], points_reversed=f.counts["reversed"],
        points_outstanding=f.counts["available"], points_pending=f.counts["pending"],
        liability_minor=max(f.counts["available"], 0) * mantissa // 10**scale,
        liability_currency=currency, redemption_rate_bps=f.redemption_rate_bps())


class ProgramFiguresCollector(Collector):
    """Exports every program's figures at each scrape of the metrics endpoint, read from
    Redis then (a scrape costs one pipeline per program)."""

    def __init__(self, redis_url: str, cluster: bool, timeout_s: float = 5.0) -> None:
        self._url = redis_url
        self._cluster = cluster
        self._timeout_s = timeout_s

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            rows = asyncio.run(self._read())
        except Exception as exc:  # noqa: BLE001 - a scrape must not fail the endpoint
            log.warning("loyalty figures not exported this scrape: %s", exc)
            rows = []
        yield from _families(rows)

    async def _read(self) -> list[tuple[str, str, Figures, ProgramFigures]]:
        from payauth.server.store import Store

        store = Store.connect(self._url, self._cluster, self._timeout_s)
        try:
            client = store.client
            programs = sorted(p.decode() for p in await client.smembers(keys.LOYALTY_PROGRAMS))
            now_ms = int(time.time() * 1000)
            rows = []
            for program_id in programs:
                currency, value = await _home_point_value(client, program_id)
                for variant, f in (await read_figures(client, program_id, now_ms)).items():
                    if any(f.counts.values()) or f.active:
                        rows.append((program_id, variant, f,
                                     figures_proto(f, 0, value, currency)))
            return rows
        finally:
            await store.close()


async def _home_point_value(client: Any, program_id: str) -> tuple[str, tuple[int, int] | None]:
    """The home currency of a program's latest version and the value of a point in it."""
    key = keys.loyalty_program(program_id)
    version = await client.hget(key, "version")
    payload = await client.hget(key, f"v{int(version)}") if version is not None else None
    if payload is None:
        return "", None
    program = loyalty_pb2.LoyaltyProgram.FromString(payload)
    for value in program.point_values:
        if value.currency == program.home_currency:
            return program.home_currency, (value.value_mantissa, value.value_scale)
    return program.home_currency, None


ProgramFigures = loyalty_pb2.ProgramFigures


def _families(rows: Iterable[tuple[str, str, Figures, ProgramFigures]]
              ) -> Iterator[GaugeMetricFamily]:
    specs = [
        ("payauth_loyalty_members", "Members enrolled", lambda f: f.counts["members"]),
        ("payauth_loyalty_members_active", "Members with a ledger entry in the last 30 days",
         lambda f: f.active),
        ("payauth_loyalty_points_issued", "Points posted by purchases and bonuses",
         lambda f: f.counts["issued"]),
        ("payauth_loyalty_points_redeemed", "Points redeemed (net of restored redemptions)",
         lambda f: f.counts["redeemed"]),
        ("payauth_loyalty_points_expired", "Points expired", lambda f: f.counts["expired"]),
        ("payauth_loyalty_points_outstanding", "Points available to members (liability)",
         lambda f: f.counts["available"]),
        ("payauth_loyalty_points_pending", "Points earned by purchases not captured yet",
         lambda f: f.counts["pending"]),
        ("payauth_loyalty_redemption_rate", "Points redeemed per point credited",
         lambda f: f.redemption_rate_bps() / 10_000),
    ]
    rows = list(rows)
    for name, text, value in specs:
        family = GaugeMetricFamily(name, text, labels=["program", "variant"])
        for program_id, variant, f, _ in rows:
            family.add_metric([program_id, variant], value(f))
        yield family
    liability = GaugeMetricFamily(
        "payauth_loyalty_liability_minor", "Outstanding points valued in the program's home "
        "currency, in its minor units (rounded down)", labels=["program", "variant", "currency"])
    for program_id, variant, _, proto in rows:
        liability.add_metric([program_id, variant, proto.liability_currency],
                             proto.liability_minor)
    yield liability
