"""Loyalty programs: checked and compiled once, then asked what a purchase earns.

A program's earning rules and challenges are CEL conditions over the loyalty
context (protos/payauth/v1/loyalty_context.proto: `txn`, `member`, `merchant`),
compiled by the decision core into one program per variant and evaluated
together (`ConditionSet`) in C. What a purchase earns is then plain integer
arithmetic here; what depends on the member's state at the instant of the
commit (per-day caps, challenge progress, abuse limits) is applied by the
commit Function (functions/loyalty.lua) from the `EarnPlan` this module builds.

Rounding (docs/loyalty.md): each part of an earn (the base, and each rule's
extra) is rounded down on its own, so every point in the ledger belongs to
one part; money to points rounds up, points to money rounds down.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from google.protobuf.timestamp_pb2 import Timestamp

from payauth.core import (
    CelCompileError,
    CelCompiler,
    ConditionSet,
    DecisionContextBuilder,
    ProgramBuilder,
    message_layout,
)
from payauth.server.validation import IDENTIFIER, Violations
from payauth.v1 import common_pb2, loyalty_context_pb2, loyalty_pb2

DAY_MS = 86_400_000
_EPOCH = date(1970, 1, 1)
BPS = 10_000
MAX_RULES = 500
MAX_CHALLENGES = 100
MAX_TIERS = 20
MAX_CONDITION = 4096
MAX_QUALIFICATION_DAYS = 730
MAX_EXPIRY_DAYS = 3650
MAX_SCALE = 18
SPEND = loyalty_pb2.CHALLENGE_GOAL_SPEND_AMOUNT
RULE_ID = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
POINTS_CURRENCY = re.compile(r"[A-Z0-9_]{1,16}")

_CHANNEL = {n: k.removeprefix("CHANNEL_") for k, n in common_pb2.Channel.items()}
_METHOD = {n: k.removeprefix("PAYMENT_METHOD_") for k, n in common_pb2.PaymentMethod.items()}


def _layout_and_compiler() -> tuple[Any, CelCompiler]:
    layout = message_layout(loyalty_context_pb2.LoyaltyContext.DESCRIPTOR)
    return layout, CelCompiler(layout)


_LAYOUT, _COMPILER = _layout_and_compiler()
_BUILDER = DecisionContextBuilder(loyalty_context_pb2.LoyaltyContext.DESCRIPTOR, _LAYOUT)
_SLOT = {slot.path: slot.index for slot in _LAYOUT.slots}


class ContextFiller:
    """Writes a purchase and its member straight into a reused loyalty context vector, slot
    by slot: the same values as `DecisionContextBuilder.from_message` of the equivalent
    LoyaltyContext message (a test holds them equal), without building the message."""

    def __init__(self) -> None:
        self.context = _BUILDER.new()
        self._s = _SLOT

    def fill(self, purchase: Purchase, member: MemberState, tier: TierSpec | None,
             variant: str, local: datetime) -> Any:
        """The context of one purchase, `local` its time in the program's time zone (valid
        until the next fill)."""
        c, s = self.context, self._s
        c.reset()
        c.set_bool(s["txn?"], True)
        c.set_int(s["txn.amount_minor"], purchase.amount_minor)
        c.set_string(s["txn.currency"], purchase.currency)
        c.set_string(s["txn.mcc"], purchase.mcc)
        c.set_string(s["txn.channel"], _CHANNEL.get(purchase.channel, ""))
        c.set_string(s["txn.payment_method"], _METHOD.get(purchase.payment_method, ""))
        c.set_string(s["txn.merchant_country"], purchase.merchant_country)
        seconds, millis = divmod(purchase.at_ms, 1000)
        c.set_timestamp(s["txn.timestamp"], seconds, millis * 1_000_000)
        c.set_bool(s["txn.timestamp?"], True)
        c.set_string(s["txn.merchant_id"], purchase.merchant_id)
        c.set_int(s["txn.local_hour"], local.hour)
        c.set_int(s["txn.local_day_of_week"], local.isoweekday() % 7)
        c.set_int(s["txn.local_month"], local.month)
        c.set_int(s["txn.local_day_of_month"], local.day)
        c.set_bool(s["member?"], True)
        c.set_string(s["member.id"], member.member_id)
        c.set_string(s["member.tier"], tier.id if tier else "")
        c.set_int(s["member.tier_rank"], tier.rank if tier else 0)
        c.set_int(s["member.birth_month"], member.birth_month)
        c.set_int(s["member.tenure_days"],
                  max(0, (purchase.at_ms - member.enrolled_ms) // DAY_MS))
        c.set_int(s["member.available_points"], member.available)
        c.set_string(s["member.variant"], variant)
        c.set_bool(s["merchant?"], True)
        c.set_string(s["merchant.id"], purchase.merchant_id)
        c.set_string(s["merchant.mcc"], purchase.mcc)
        c.set_string(s["merchant.country"], purchase.merchant_country)
        return c


_FILLER = ContextFiller()


@dataclass(frozen=True, slots=True)
class Purchase:
    """A purchase as loyalty sees it, from an authorization or a loyalty system's Earn."""

    amount_minor: int
    currency: str
    mcc: str
    merchant_id: str
    merchant_country: str
    channel: int
    payment_method: int
    at_ms: int


@dataclass(frozen=True, slots=True)
class MemberState:
    """What earning needs to know of a member, as read just before the commit."""

    member_id: str
    available: int
    birth_month: int
    enrolled_ms: int
    qualifying_by_day: dict[int, int]


@dataclass(frozen=True, slots=True)
class EarningRuleSpec:
    """One compiled earning rule: its condition is entry `entry` of its variant's set."""

    id: str
    entry: int
    multiplier_bps: int  # 0 for a bonus rule
    bonus_points: int
    valid_from_ms: int | None
    valid_until_ms: int | None
    max_per_transaction: int
    max_per_day: int
    reason: str

    def valid_at(self, at_ms: int) -> bool:
        """Whether the rule's validity window holds the purchase time."""
        return ((self.valid_from_ms is None or at_ms >= self.valid_from_ms)
                and (self.valid_until_ms is None or at_ms < self.valid_until_ms))


@dataclass(frozen=True, slots=True)
class ChallengeSpec:
    """One compiled challenge; its condition is entry `entry` of the challenge set."""

    id: str
    entry: int
    goal: int
    target: int
    currency: str
    bonus_points: int
    starts_ms: int
    ends_ms: int
    max_completions: int


@dataclass(frozen=True, slots=True)
class TierSpec:
    """A tier: reached at `qualifying_points`, earning `earn_multiplier_bps`."""

    id: str
    rank: int
    qualifying_points: int
    earn_multiplier_bps: int


@dataclass(slots=True)
class EarnPlan:
    """What a purchase earns before the commit applies the member's caps and progress.

    `rules` holds (rule id, points, per-day cap, points before the per-purchase cap, that
    cap) for every rule that adds points (the last two 0 for a fixed bonus, which a partial
    approval does not scale);
    `challenges` holds (progress key, challenge id, increment, target, bonus, most
    completions, 1 when the increment is an amount) for every challenge the purchase counts
    toward."""

    program: str
    version: int
    variant: str
    day: int
    base: int
    rules: list[tuple[str, int, int, int, int]] = field(default_factory=list)
    challenges: list[tuple[str, str, int, int, int, int, int]] = field(default_factory=list)
    tier_multiplier_bps: int = BPS
    qual_days: int = 365
    expiry_ms: int = 0
    earn_limit: int = 0

    def to_lua(self) -> dict[str, Any]:
        """The plan as the commit Function reads it (JSON)."""
        return {"program": self.program, "version": self.version, "variant": self.variant,
                "day": self.day, "base": self.base, "rules": [list(r) for r in self.rules],
                "challenges": [list(c) for c in self.challenges],
                "qual_days": self.qual_days, "expiry_ms": self.expiry_ms,
                "earn_limit": self.earn_limit}


class ProgramError(ValueError):
    """A program that cannot be stored: every problem, as (field path, description)."""

    def __init__(self, violations: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{f}: {d}" for f, d in violations))
        self.violations = violations


def _ms(ts: Timestamp) -> int | None:
    return ts.ToMilliseconds() if ts.seconds or ts.nanos else None


def content_hash(program: loyalty_pb2.LoyaltyProgram) -> str:
    """Digest of a program's content, to tell a replay from a conflicting upsert."""
    return hashlib.sha256(program.SerializeToString(deterministic=True)).hexdigest()


def variant_of(ab: loyalty_pb2.EarningRuleAbTest, member_id: str) -> str:
    """A member's A/B variant: B when SHA-256(salt:member) read as a big-endian integer
    from its first 8 bytes, modulo 10000, is below the B share (loyalty.proto)."""
    digest = hashlib.sha256(f"{ab.salt}:{member_id}".encode()).digest()
    return "B" if int.from_bytes(digest[:8], "big") % BPS < ab.variant_b_share_bps else "A"


def ceil_div(a: int, b: int) -> int:
    """a / b rounded up, for non-negative integers."""
    return -(-a // b)


class CompiledProgram:
    """One version of a loyalty program, compiled."""

    def __init__(self, program: loyalty_pb2.LoyaltyProgram, rules_a: list[EarningRuleSpec],
                 set_a: ConditionSet | None, rules_b: list[EarningRuleSpec],
                 set_b: ConditionSet | None, challenges: list[ChallengeSpec],
                 challenge_set: ConditionSet | None) -> None:
        self.message = program
        self.program_id = program.program_id
        self.version = program.version
        self.effective_from_ms = _ms(program.effective_from) or 0
        self.rules = {"A": (rules_a, set_a), "B": (rules_b, set_b)}
        self.challenges = challenges
        self.challenge_set = challenge_set
        self.tiers = sorted((TierSpec(t.id, t.rank, t.qualifying_points,
                                      t.earn_multiplier_bps or BPS) for t in program.tiers),
                            key=lambda t: t.rank)
        self.qualification_days = program.tier_qualification_days or 365
        self.expiry_ms = program.points_expiry_days * DAY_MS
        self.earn_rates = {r.currency: (r.points_mantissa, r.points_scale)
                           for r in program.earn_rates}
        self.point_values = {v.currency: (v.value_mantissa, v.value_scale)
                             for v in program.point_values}
        self.add_extras = (program.multiplier_combination
                           == loyalty_pb2.MULTIPLIER_COMBINATION_ADD_EXTRAS)
        self.has_ab = program.HasField("ab_test")
        self.limits = program.abuse_limits
        self.zone = ZoneInfo(program.time_zone or "UTC")

    def local_time(self, at_ms: int) -> datetime:
        """`at_ms` in the program's time zone."""
        return datetime.fromtimestamp(at_ms / 1000, UTC).astimezone(self.zone)

    def day_of(self, at_ms: int) -> int:
        """The program's calendar day of `at_ms`, as a day number (days since 1970-01-01 in
        the program's time zone): what per-day caps, limits and tiers count by."""
        return (self.local_time(at_ms).date() - _EPOCH).days

    # -- members -----------------------------------------------------------------------

    def variant(self, member_id: str) -> str:
        """"A", "B", or "" without an A/B test."""
        return variant_of(self.message.ab_test, member_id) if self.has_ab else ""

    def qualifying_points(self, by_day: dict[int, int], day: int) -> int:
        """Qualifying points over the rolling period that ends with `day` (UTC day number)."""
        first = day - self.qualification_days + 1
        return sum(points for d, points in by_day.items() if first <= d <= day)

    def tier_for(self, qualifying: int) -> TierSpec | None:
        """The best tier `qualifying` points reach; None without tiers."""
        best = None
        for tier in self.tiers:
            if qualifying >= tier.qualifying_points:
                best = tier
        return best

    def next_tier(self, tier: TierSpec | None) -> TierSpec | None:
        """The tier above `tier`, if any."""
        for candidate in self.tiers:
            if tier is not None and candidate.rank > tier.rank:
                return candidate
        return None

    # -- money and points ----------------------------------------------------------------

    def points_for_value(self, value_minor: int, currency: str) -> int | None:
        """Points needed to cover `value_minor` (rounded up); None without a point value."""
        if currency not in self.point_values:
            return None
        mantissa, scale = self.point_values[currency]
        return ceil_div(value_minor * 10**scale, mantissa)

    def value_of_points(self, points: int, currency: str) -> int | None:
        """Money value of `points` in minor units (rounded down); None without a value."""
        if currency not in self.point_values:
            return None
        mantissa, scale = self.point_values[currency]
        return points * mantissa // 10**scale

    # -- earning -----------------------------------------------------------------------------

    def plan(self, purchase: Purchase, member: MemberState) -> EarnPlan:
        """What `purchase` earns for `member` under this version, before caps per day."""
        local = self.local_time(purchase.at_ms)
        day = (local.date() - _EPOCH).days
        variant = self.variant(member.member_id)
        tier = self.tier_for(self.qualifying_points(member.qualifying_by_day, day))
        tier_bps = tier.earn_multiplier_bps if tier else BPS
        plan = EarnPlan(self.program_id, self.version, variant, day, 0,
                        tier_multiplier_bps=tier_bps, qual_days=self.qualification_days,
                        expiry_ms=self.expiry_ms,
                        earn_limit=self.limits.max_earn_points_per_day)
        context = _FILLER.fill(purchase, member, tier, variant, local)
        rate = self.earn_rates.get(purchase.currency)
        mantissa, scale = rate if rate else (0, 0)
        # points = amount × mantissa / 10^scale × multiplier / 10^4 × tier / 10^4
        numerator = purchase.amount_minor * mantissa * tier_bps
        denominator = 10**scale * BPS
        plan.base = numerator // denominator
        rules, conditions = self.rules["B" if variant == "B" else "A"]
        if conditions is not None and rules:
            status = conditions.match(context)
            multipliers: list[EarningRuleSpec] = []
            for rule in rules:
                if status[rule.entry] != 1 or not rule.valid_at(purchase.at_ms):
                    continue
                if rule.multiplier_bps:
                    multipliers.append(rule)
                else:
                    plan.rules.append((rule.id, _capped(rule.bonus_points,
                                                        rule.max_per_transaction),
                                       rule.max_per_day, 0, 0))
            if multipliers and not self.add_extras:
                multipliers = [max(multipliers, key=lambda r: r.multiplier_bps)]
            for rule in multipliers:
                extra = numerator * (rule.multiplier_bps - BPS) // (denominator * BPS)
                plan.rules.append((rule.id, _capped(extra, rule.max_per_transaction),
                                   rule.max_per_day, extra, rule.max_per_transaction))
        if self.challenge_set is not None:
            status = self.challenge_set.match(context)
            for challenge in self.challenges:
                if status[challenge.entry] != 1 or not (
                        challenge.starts_ms <= purchase.at_ms < challenge.ends_ms):
                    continue
                if challenge.goal == loyalty_pb2.CHALLENGE_GOAL_PURCHASE_COUNT:
                    increment = 1
                elif challenge.currency == purchase.currency:
                    increment = purchase.amount_minor
                else:
                    continue  # spend in another currency counts once FX rates are kept
                plan.challenges.append((f"{challenge.id}@{challenge.starts_ms}", challenge.id,
                                        increment, challenge.target, challenge.bonus_points,
                                        challenge.max_completions,
                                        int(challenge.goal == SPEND)))
        return plan

    @staticmethod
    def context_message(purchase: Purchase, member: MemberState, tier: TierSpec | None,
                        variant: str, local: datetime) -> loyalty_context_pb2.LoyaltyContext:
        """The loyalty context of a purchase as a message (what conditions read)."""
        txn = loyalty_context_pb2.LoyaltyPurchase(
            amount_minor=purchase.amount_minor, currency=purchase.currency, mcc=purchase.mcc,
            channel=_CHANNEL.get(purchase.channel, ""),
            payment_method=_METHOD.get(purchase.payment_method, ""),
            merchant_country=purchase.merchant_country, merchant_id=purchase.merchant_id,
            local_hour=local.hour, local_day_of_week=local.isoweekday() % 7,
            local_month=local.month, local_day_of_month=local.day)
        txn.timestamp.FromMilliseconds(purchase.at_ms)
        return loyalty_context_pb2.LoyaltyContext(
            txn=txn,
            member=loyalty_context_pb2.MemberContext(
                id=member.member_id, tier=tier.id if tier else "",
                tier_rank=tier.rank if tier else 0, birth_month=member.birth_month,
                tenure_days=max(0, (purchase.at_ms - member.enrolled_ms) // DAY_MS),
                available_points=member.available, variant=variant),
            merchant={"id": purchase.merchant_id, "mcc": purchase.mcc,
                      "country": purchase.merchant_country})


def _capped(points: int, cap: int) -> int:
    return min(points, cap) if cap > 0 else points


# -- checking and compiling -----------------------------------------------------------------


def _check_rate(v: Violations, path: str, currency: str, mantissa: int, scale: int,
                positive: bool) -> None:
    v.currency(f"{path}.currency", currency)
    if mantissa < 0 or (positive and mantissa == 0):
        v.add(f"{path}.{'value' if positive else 'points'}_mantissa",
              "must be greater than zero" if positive else "must not be negative")
    if not 0 <= scale <= MAX_SCALE:
        v.add(f"{path}.{'value' if positive else 'points'}_scale",
              f"must be between 0 and {MAX_SCALE}")


def _check_window(v: Violations, path: str, start: Timestamp, end: Timestamp,
                  start_name: str, end_name: str, required: bool) -> None:
    v.timestamp(f"{path}.{start_name}", start, required=required)
    v.timestamp(f"{path}.{end_name}", end, required=required)
    s, e = _ms(start), _ms(end)
    if s is not None and e is not None and e <= s:
        v.add(f"{path}.{end_name}", f"must be after {start_name}")


def _check_rules(v: Violations, path: str, rules: Any) -> None:
    if len(rules) > MAX_RULES:
        v.add(path, f"at most {MAX_RULES} rules")
    seen: set[str] = set()
    for i, rule in enumerate(rules):
        p = f"{path}[{i}]"
        if not RULE_ID.fullmatch(rule.id):
            v.add(f"{p}.id", "must be 1 to 64 characters of A-Z a-z 0-9 _ . -")
        elif rule.id in seen:
            v.add(f"{p}.id", f"{rule.id!r} is used by another rule")
        seen.add(rule.id)
        v.text(f"{p}.condition", rule.condition, MAX_CONDITION, required=True)
        kind = rule.WhichOneof("reward")
        if kind is None:
            v.add(f"{p}.reward", "one of multiplier_bps and bonus_points is required")
        elif kind == "multiplier_bps" and rule.multiplier_bps <= BPS:
            v.add(f"{p}.multiplier_bps", "must be above 10000 (1x)")
        elif kind == "bonus_points" and rule.bonus_points <= 0:
            v.add(f"{p}.bonus_points", "must be greater than zero")
        _check_window(v, p, rule.valid_from, rule.valid_until, "valid_from", "valid_until",
                      required=False)
        if rule.max_points_per_transaction < 0:
            v.add(f"{p}.max_points_per_transaction", "must not be negative")
        if rule.max_points_per_day < 0:
            v.add(f"{p}.max_points_per_day", "must not be negative")
        v.text(f"{p}.reason", rule.reason, 256)


def check_program(program: loyalty_pb2.LoyaltyProgram) -> None:
    """Raise ProgramError listing every field rule the program breaks (conditions are
    checked when compiled)."""
    v = Violations()
    p = "program"
    if not RULE_ID.fullmatch(program.program_id):
        v.add(f"{p}.program_id", "must be 1 to 64 characters of A-Z a-z 0-9 _ . -")
    if program.version < 1:
        v.add(f"{p}.version", "must be 1 or more")
    v.text(f"{p}.name", program.name, 128)
    if not POINTS_CURRENCY.fullmatch(program.points_currency):
        v.add(f"{p}.points_currency", "must be 1 to 16 characters of A-Z 0-9 _")
    v.currency(f"{p}.home_currency", program.home_currency)
    for name, items, positive in (("point_values", program.point_values, True),
                                  ("earn_rates", program.earn_rates, False)):
        currencies = set()
        for i, item in enumerate(items):
            mantissa = item.value_mantissa if positive else item.points_mantissa
            scale = item.value_scale if positive else item.points_scale
            _check_rate(v, f"{p}.{name}[{i}]", item.currency, mantissa, scale, positive)
            if item.currency in currencies:
                v.add(f"{p}.{name}[{i}].currency", "appears twice")
            currencies.add(item.currency)
        if program.home_currency not in currencies:
            v.add(f"{p}.{name}", "must include the home currency")
    _check_rules(v, f"{p}.earning_rules", program.earning_rules)
    if program.multiplier_combination not in loyalty_pb2.MultiplierCombination.values():
        v.add(f"{p}.multiplier_combination", "is not a known value")
    if program.tiers:
        if len(program.tiers) > MAX_TIERS:
            v.add(f"{p}.tiers", f"at most {MAX_TIERS} tiers")
        ids, ranks = set(), set()
        for i, tier in enumerate(program.tiers):
            t = f"{p}.tiers[{i}]"
            if not RULE_ID.fullmatch(tier.id) or tier.id in ids:
                v.add(f"{t}.id", "must be a unique id of 1 to 64 characters of A-Z a-z 0-9 _ . -")
            if tier.rank < 0 or tier.rank in ranks:
                v.add(f"{t}.rank", "must be a unique rank of 0 or more")
            ids.add(tier.id)
            ranks.add(tier.rank)
            v.text(f"{t}.name", tier.name, 64)
            if tier.qualifying_points < 0 or (tier.rank == 0) != (tier.qualifying_points == 0):
                v.add(f"{t}.qualifying_points", "must be 0 for rank 0 and above 0 otherwise")
            if tier.earn_multiplier_bps and tier.earn_multiplier_bps < BPS:
                v.add(f"{t}.earn_multiplier_bps", "must be 10000 (1x) or more")
        if 0 not in ranks:
            v.add(f"{p}.tiers", "must include the entry tier (rank 0)")
        by_rank = sorted(program.tiers, key=lambda t: t.rank)
        if any(a.qualifying_points >= b.qualifying_points
               for a, b in zip(by_rank, by_rank[1:], strict=False)):
            v.add(f"{p}.tiers", "a higher rank must need more qualifying points")
    if not 0 <= program.tier_qualification_days <= MAX_QUALIFICATION_DAYS:
        v.add(f"{p}.tier_qualification_days", f"must be 0 to {MAX_QUALIFICATION_DAYS}")
    if len(program.challenges) > MAX_CHALLENGES:
        v.add(f"{p}.challenges", f"at most {MAX_CHALLENGES} challenges")
    seen: set[str] = set()
    for i, ch in enumerate(program.challenges):
        c = f"{p}.challenges[{i}]"
        if not RULE_ID.fullmatch(ch.id) or ch.id in seen:
            v.add(f"{c}.id", "must be a unique id of 1 to 64 characters of A-Z a-z 0-9 _ . -")
        seen.add(ch.id)
        v.text(f"{c}.name", ch.name, 128)
        v.text(f"{c}.condition", ch.condition, MAX_CONDITION, required=True)
        if ch.goal == loyalty_pb2.CHALLENGE_GOAL_PURCHASE_COUNT:
            if ch.target_count <= 0:
                v.add(f"{c}.target_count", "must be greater than zero")
        elif ch.goal == loyalty_pb2.CHALLENGE_GOAL_SPEND_AMOUNT:
            if ch.target_amount_minor <= 0:
                v.add(f"{c}.target_amount_minor", "must be greater than zero")
            v.currency(f"{c}.currency", ch.currency)
        else:
            v.add(f"{c}.goal", "is required")
        if ch.bonus_points <= 0:
            v.add(f"{c}.bonus_points", "must be greater than zero")
        _check_window(v, c, ch.starts_at, ch.ends_at, "starts_at", "ends_at", required=True)
        if ch.max_completions < 0:
            v.add(f"{c}.max_completions", "must not be negative")
    if program.HasField("ab_test"):
        ab = program.ab_test
        if not IDENTIFIER.fullmatch(ab.experiment_id):
            v.add(f"{p}.ab_test.experiment_id", "must be 1 to 64 characters")
        if not 1 <= len(ab.salt) <= 64:
            v.add(f"{p}.ab_test.salt", "must be 1 to 64 characters")
        if not 0 <= ab.variant_b_share_bps <= BPS:
            v.add(f"{p}.ab_test.variant_b_share_bps", "must be 0 to 10000")
        _check_rules(v, f"{p}.ab_test.variant_b_earning_rules", ab.variant_b_earning_rules)
    if program.pending_days:
        v.add(f"{p}.pending_days", "must be 0: points post when the purchase is captured "
                                   "(a posting delay is not supported yet)")
    if not 0 <= program.points_expiry_days <= MAX_EXPIRY_DAYS:
        v.add(f"{p}.points_expiry_days", f"must be 0 to {MAX_EXPIRY_DAYS}")
    limits = program.abuse_limits
    for name in ("max_earn_points_per_day", "max_redeem_points_per_day",
                 "max_redemptions_per_hour", "max_adjust_points_per_day"):
        if getattr(limits, name) < 0:
            v.add(f"{p}.abuse_limits.{name}", "must not be negative")
    v.timestamp(f"{p}.effective_from", program.effective_from, required=False)
    if program.time_zone:
        try:
            ZoneInfo(program.time_zone)
        except (ZoneInfoNotFoundError, ValueError):
            v.add(f"{p}.time_zone", "must be an IANA time zone, e.g. America/Sao_Paulo")
    if v.items:
        raise ProgramError(v.items)


def _compile_conditions(path: str, items: Any, problems: list[tuple[str, str]]
                        ) -> tuple[list[int], ConditionSet | None]:
    """Compile each item's condition into one program; its entries in item order."""
    builder = ProgramBuilder(_LAYOUT)
    entries: list[int] = []
    for i, item in enumerate(items):
        try:
            entries.append(_COMPILER.lower_into(builder, item.condition, result_type="bool"))
        except CelCompileError as exc:
            where = f" (line {exc.line}, column {exc.column})" if exc.line else ""
            problems.append((f"{path}[{i}].condition", f"{exc.message}{where}"))
            entries.append(-1)
    if not items or any(e < 0 for e in entries):
        return entries, None
    return entries, ConditionSet(builder.build())


def _rule_specs(rules: Any, entries: list[int]) -> list[EarningRuleSpec]:
    order = sorted(range(len(rules)), key=lambda i: (rules[i].priority, i))
    return [EarningRuleSpec(
        id=rules[i].id, entry=entries[i],
        multiplier_bps=rules[i].multiplier_bps if rules[i].WhichOneof("reward")
        == "multiplier_bps" else 0,
        bonus_points=rules[i].bonus_points, valid_from_ms=_ms(rules[i].valid_from),
        valid_until_ms=_ms(rules[i].valid_until),
        max_per_transaction=rules[i].max_points_per_transaction,
        max_per_day=rules[i].max_points_per_day, reason=rules[i].reason) for i in order]


def compile_program(program: loyalty_pb2.LoyaltyProgram) -> CompiledProgram:
    """Check and compile a program; ProgramError lists every problem, conditions included."""
    check_program(program)
    problems: list[tuple[str, str]] = []
    entries_a, set_a = _compile_conditions("program.earning_rules", program.earning_rules,
                                           problems)
    rules_b = program.ab_test.variant_b_earning_rules
    entries_b, set_b = _compile_conditions("program.ab_test.variant_b_earning_rules", rules_b,
                                           problems)
    entries_c, set_c = _compile_conditions("program.challenges", program.challenges, problems)
    if problems:
        raise ProgramError(problems)
    challenges = [ChallengeSpec(
        id=ch.id, entry=entries_c[i], goal=ch.goal,
        target=ch.target_count if ch.goal == loyalty_pb2.CHALLENGE_GOAL_PURCHASE_COUNT
        else ch.target_amount_minor,
        currency=ch.currency, bonus_points=ch.bonus_points,
        starts_ms=ch.starts_at.ToMilliseconds(), ends_ms=ch.ends_at.ToMilliseconds(),
        max_completions=ch.max_completions or 1) for i, ch in enumerate(program.challenges)]
    return CompiledProgram(program, _rule_specs(program.earning_rules, entries_a), set_a,
                           _rule_specs(rules_b, entries_b), set_b, challenges, set_c)
