"""The loyalty points engine as loyalty systems and authorizations use it.

Programs are compiled once per worker (`ProgramRegistry`) and dropped when an
upsert is announced; members, balances and ledgers live in Redis and change
only through the loyalty Functions (functions/loyalty.lua), each one atomic on
the member's partition. An authorization of a linked account earns and spends
points inside its own commit (`authorization_plan` builds what
that commit needs), so a hold never exists without its points movement.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any

from payauth.server.clock import Clock, system_clock
from payauth.server.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PayauthError,
)
from payauth.server.lifecycle import operation_fingerprint
from payauth.server.loyalty_figures import Figures, figures_proto, read_figures
from payauth.server.loyalty_programs import (
    CompiledProgram,
    MemberState,
    ProgramError,
    Purchase,
    compile_program,
    content_hash,
)
from payauth.server.loyalty_store import LoyaltyReply, LoyaltyStore, MemberRecord
from payauth.server.metrics import LOYALTY_POINTS, child
from payauth.server.validation import Violations
from payauth.v1 import loyalty_pb2

MAX_PROGRAM_BYTES = 1 << 20
MAX_PURCHASE_TIME_S = 4_102_444_800  # 2100-01-01
DEFAULT_PAGE = 50
MAX_PAGE = 500

STATES = {
    "active": loyalty_pb2.SUSPENSION_STATE_NOT_SUSPENDED,
    "fraud_hold": loyalty_pb2.SUSPENSION_STATE_FRAUD_HOLD,
    "suspended": loyalty_pb2.SUSPENSION_STATE_SUSPENDED,
    "closed": loyalty_pb2.SUSPENSION_STATE_CLOSED,
}
STATE_NAMES = {v: k for k, v in STATES.items()}
KINDS = {name.removeprefix("LOYALTY_LEDGER_ENTRY_KIND_"): number
         for name, number in loyalty_pb2.LoyaltyLedgerEntryKind.items() if number}
VARIANTS = {"A": loyalty_pb2.AB_VARIANT_A, "B": loyalty_pb2.AB_VARIANT_B}


class ProgramVersions:
    """Every stored version of one program, compiled; which one applies at a time."""

    def __init__(self, versions: list[CompiledProgram]) -> None:
        self.versions = sorted(versions, key=lambda p: p.version)

    @property
    def latest(self) -> CompiledProgram:
        """The newest version."""
        return self.versions[-1]

    def at(self, at_ms: int) -> CompiledProgram:
        """The newest version in effect at `at_ms` (the oldest one before any is)."""
        chosen = self.versions[0]
        for program in self.versions:
            if program.effective_from_ms <= at_ms:
                chosen = program
        return chosen


class ProgramRegistry:
    """This worker's compiled programs, loaded on first use and dropped on announcement."""

    def __init__(self, store: LoyaltyStore) -> None:
        self._store = store
        self._programs: dict[str, ProgramVersions] = {}

    def forget(self, program_id: str | None) -> None:
        """Drop one program (an announcement named it) or all of them (None)."""
        if program_id is None:
            self._programs.clear()
        else:
            self._programs.pop(program_id, None)

    def cached(self, program_id: str) -> ProgramVersions | None:
        """The program if this worker has it compiled already (no Redis read)."""
        return self._programs.get(program_id)

    async def get(self, program_id: str) -> ProgramVersions | None:
        """The program's versions, None when it was never stored."""
        known = self._programs.get(program_id)
        if known is not None:
            return known
        stored = await self._store.program_versions(program_id)
        if not stored:
            return None
        compiled = await asyncio.to_thread(
            lambda: [compile_program(loyalty_pb2.LoyaltyProgram.FromString(payload))
                     for payload in stored.values()])
        versions = ProgramVersions(compiled)
        self._programs[program_id] = versions
        return versions


def _member_violations(v: Violations, program_id: str, which: str | None, member_id: str,
                       account_id: str) -> None:
    v.identifier("program_id", program_id)
    if which is None:
        v.add("member", "one of member_id and account_id is required")
    elif which == "member_id":
        v.identifier("member_id", member_id)
    else:
        v.identifier("account_id", account_id)


def balance_proto(m: MemberRecord, program: CompiledProgram, now_ms: int,
                  qualifying_by_day: dict[int, int]) -> loyalty_pb2.LoyaltyBalance:
    """A member's LoyaltyBalance as of `now_ms`."""
    balance = loyalty_pb2.LoyaltyBalance(
        program_id=m.program_id, member_id=m.member_id, account_id=m.account_id,
        available_points=m.available, pending_points=m.pending,
        lifetime_earned_points=m.earned, lifetime_redeemed_points=m.redeemed,
        suspension_state=STATES.get(m.state, loyalty_pb2.SUSPENSION_STATE_NOT_SUSPENDED),
        suspension_reason=m.state_reason if m.state != "active" else "",
        expiring_points=m.expiring_points, program_version=program.version,
        sequence=m.sequence, variant=VARIANTS.get(program.variant(m.member_id), 0))
    qualifying = program.qualifying_points(qualifying_by_day, program.day_of(now_ms))
    balance.qualifying_points = qualifying
    tier = program.tier_for(qualifying)
    if tier is not None:
        balance.tier_id = tier.id
        above = program.next_tier(tier)
        if above is not None:
            balance.next_tier_id = above.id
            balance.points_to_next_tier = above.qualifying_points - qualifying
    if m.state != "active" and m.state_ms:
        balance.suspended_at.FromMilliseconds(m.state_ms)
    if m.next_expiry_ms:
        balance.next_expiry_at.FromMilliseconds(m.next_expiry_ms)
    balance.as_of.FromMilliseconds(now_ms)
    return balance


def entry_proto(record_id: str, f: dict[str, str]) -> loyalty_pb2.LoyaltyLedgerEntry:
    """A ledger record as a LoyaltyLedgerEntry."""
    entry = loyalty_pb2.LoyaltyLedgerEntry(
        entry_id=record_id, kind=KINDS.get(f["kind"], 0), points=int(f["points"]),
        available_after=int(f["avail_after"]), reason=f.get("reason", ""),
        request_id=f.get("req", ""), program_version=int(f.get("ver") or 0),
        rule_ids=[r for r in f.get("rules", "").split(",") if r],
        challenge_id=f.get("ch", ""), authorization_id=f.get("auth", ""),
        related_entry_id=f.get("rel", ""), variant=VARIANTS.get(f.get("var", ""), 0),
        sequence=int(f["seq"]))
    entry.created_at.FromMilliseconds(int(f["at"]))
    if f.get("exp"):
        entry.expires_at.FromMilliseconds(int(f["exp"]))
    return entry


class LoyaltyEngine:
    """The Loyalty service's calls, and the loyalty part of an authorization."""

    def __init__(self, store: LoyaltyStore, clock: Clock = system_clock,
                 idempotency_ttl_s: int = 7 * 86400, watch_block_ms: int = 250) -> None:
        self.store = store
        self.programs = ProgramRegistry(store)
        self._clock = clock
        self._ttl_ms = idempotency_ttl_s * 1000
        # A watcher's blocking read must end before the Redis client's socket timeout.
        self._watch_block_ms = watch_block_ms

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    # -- programs ------------------------------------------------------------------------

    async def upsert_program(self, request: loyalty_pb2.UpsertProgramRequest
                             ) -> loyalty_pb2.UpsertProgramResponse:
        """Compile and store a program version; announce it to every worker."""
        program = request.program
        if len(program.SerializeToString()) > MAX_PROGRAM_BYTES:
            raise InvalidArgumentError([("program", f"at most {MAX_PROGRAM_BYTES} bytes")])
        try:
            await asyncio.to_thread(compile_program, program)
        except ProgramError as exc:
            raise InvalidArgumentError(exc.violations) from None
        response = loyalty_pb2.UpsertProgramResponse(program_id=program.program_id,
                                                     version=program.version)
        if request.validate_only:
            response.validated_only = True
            return response
        now_ms = self._now_ms()
        outcome, other = await self.store.put_program(
            program.program_id, program.version, content_hash(program),
            program.SerializeToString(deterministic=True), now_ms)
        if outcome == "stale":
            raise FailedPreconditionError(
                f"program {program.program_id} is at version {other}; a new version must be "
                "higher, and a stored version cannot change",
                [("program.version", f"must be above {other}")])
        self.programs.forget(program.program_id)
        response.replayed = outcome == "replayed"
        response.previous_version = other if outcome == "stored" else 0
        response.updated_at.FromMilliseconds(now_ms)
        return response

    async def _program(self, program_id: str) -> ProgramVersions:
        versions = await self.programs.get(program_id)
        if versions is None:
            raise NotFoundError(f"loyalty program {program_id} does not exist")
        return versions

    # -- members ---------------------------------------------------------------------------

    async def upsert_member(self, request: loyalty_pb2.UpsertMemberRequest
                            ) -> loyalty_pb2.UpsertMemberResponse:
        """Enroll a member (linked to an account or not), or update its profile."""
        m = request.member
        v = Violations()
        v.identifier("member.program_id", m.program_id)
        v.identifier("member.member_id", m.member_id)
        v.identifier("member.account_id", m.account_id, required=False)
        if not 0 <= m.birth_month <= 12:
            v.add("member.birth_month", "must be 1 to 12, or 0 when unknown")
        v.raise_if_any()
        versions = await self._program(m.program_id)
        now_ms = self._now_ms()
        status, result = await self.store.enroll(m.program_id, m.member_id, m.account_id,
                                                 m.birth_month,
                                                 versions.latest.variant(m.member_id), now_ms)
        if status == "error":
            raise {
                "account_missing": NotFoundError(f"account {m.account_id} does not exist"),
                "account_taken": AlreadyExistsError(
                    f"account {m.account_id} is linked to another member",
                    [("member.account_id", "is linked to another member")]),
                "account_fixed": FailedPreconditionError(
                    "a member's account cannot change once enrolled",
                    [("member.account_id", "must stay the member's enrolled account")]),
            }[str(result)]
        assert isinstance(result, MemberRecord)
        program = versions.at(now_ms)
        record = await self.store.read(result.partition, m.program_id, m.member_id,
                                       (program.day_of(now_ms), program.qualification_days))
        assert record is not None
        return loyalty_pb2.UpsertMemberResponse(
            created=status == "created",
            balance=balance_proto(record, versions.at(now_ms), now_ms,
                                  record.qualifying_by_day or {}))

    async def _member(self, program_id: str, which: str | None, member_id: str,
                      account_id: str, program: CompiledProgram | None = None,
                      at_ms: int = 0) -> MemberRecord:
        """The member a request names (by member id or account), read now; its qualifying
        points summed over `program`'s qualification window that ends on `at_ms`'s day
        (none without a program)."""
        if which == "account_id":
            link = await self.store.member_of_account(account_id)
            if link is None or link[0] != program_id:
                raise NotFoundError(f"account {account_id} has no member in program "
                                    f"{program_id}")
            member_id = link[1]
        partition = await self.store.partition_of_member(program_id, member_id)
        record = None
        if partition is not None:
            window = ((program.day_of(at_ms), program.qualification_days) if program
                      else (0, 0))
            record = await self.store.read(partition, program_id, member_id, window)
        if record is None:
            raise NotFoundError(f"member {member_id} is not enrolled in program {program_id}")
        return record

    async def get_balance(self, request: loyalty_pb2.GetBalanceRequest
                          ) -> loyalty_pb2.GetBalanceResponse:
        """A member's balance, tier and state."""
        which = request.WhichOneof("member")
        v = Violations()
        _member_violations(v, request.program_id, which, request.member_id, request.account_id)
        v.raise_if_any()
        versions = await self._program(request.program_id)
        now_ms = self._now_ms()
        program = versions.at(now_ms)
        m = await self._member(request.program_id, which, request.member_id,
                               request.account_id, program, now_ms)
        response = loyalty_pb2.GetBalanceResponse(balance=balance_proto(
            m, program, now_ms, m.qualifying_by_day or {}))
        counts = m.challenges or {}
        for spec, ch in zip(program.challenges, program.message.challenges, strict=True):
            if not spec.starts_ms <= now_ms < spec.ends_ms:
                continue
            key = f"{spec.id}@{spec.starts_ms}"
            progress = response.challenges.add(
                challenge_id=spec.id, name=ch.name, goal=spec.goal,
                progress=counts.get(key, 0), target=spec.target,
                completions=counts.get(key + "#done", 0),
                max_completions=spec.max_completions)
            progress.ends_at.FromMilliseconds(spec.ends_ms)
        return response

    # -- earn, redeem, adjust -----------------------------------------------------------------

    async def earn(self, request: loyalty_pb2.EarnRequest) -> loyalty_pb2.EarnResponse:
        """Credit a purchase reported by the loyalty system, under the program's rules."""
        which = request.WhichOneof("member")
        v = Violations()
        v.identifier("request_id", request.request_id)
        _member_violations(v, request.program_id, which, request.member_id, request.account_id)
        txn = request.txn
        v.amount("txn.amount_minor", txn.amount_minor, positive=True)
        v.currency("txn.currency", txn.currency)
        if txn.mcc and (len(txn.mcc) != 4 or not txn.mcc.isdigit()):
            v.add("txn.mcc", "must be 4 digits")
        v.text("txn.merchant_id", txn.merchant_id, 64)
        v.identifier("txn.authorization_id", txn.authorization_id, required=False)
        v.timestamp("txn.timestamp", txn.timestamp, required=False)
        if not 0 <= txn.timestamp.seconds < MAX_PURCHASE_TIME_S:
            v.add("txn.timestamp", "must be between 1970 and 2100")
        if len(txn.attributes) > 32 or any(len(k) > 64 or len(x) > 64
                                           for k, x in txn.attributes.items()):
            v.add("txn.attributes", "at most 32 entries, keys and values at most 64 characters")
        v.raise_if_any()
        versions = await self._program(request.program_id)
        now_ms = self._now_ms()
        at_ms = txn.timestamp.ToMilliseconds() if txn.HasField("timestamp") else now_ms
        program = versions.at(at_ms)
        m = await self._member(request.program_id, which, request.member_id,
                               request.account_id, program, at_ms)
        purchase = Purchase(txn.amount_minor, txn.currency, txn.mcc, txn.merchant_id,
                            txn.merchant_country, txn.channel, txn.payment_method, at_ms)
        plan = program.plan(purchase, _state(m))
        # Points post at once unless a posting delay applies; with pending_days 0 (the only
        # delay this version keeps) a reported purchase has nothing left to wait for.
        post = request.post_immediately or program.message.pending_days == 0
        reply = await self.store.earn(
            m, request.request_id, operation_fingerprint("earn", request), plan.to_lua(),
            post, txn.authorization_id, now_ms, self._ttl_ms)
        answer = _answer(reply, request.request_id)
        if answer.get("refused"):
            raise FailedPreconditionError(f"the member is {answer['refused']}: it earns nothing")
        after = reply.balance(m.partition, m.program_id, m.member_id)
        if reply.status == "new":
            child(LOYALTY_POINTS, m.program_id, plan.variant or "-", "issued").inc(
                int(answer["points"]) + int(answer["bonus"]))
        by_day = dict(m.qualifying_by_day or {})
        if reply.status == "new":
            by_day[plan.day] = by_day.get(plan.day, 0) + int(answer["points"]) + int(
                answer["bonus"])
        return loyalty_pb2.EarnResponse(
            request_id=request.request_id, entry_id=answer["entry"],
            points_earned=int(answer["points"]), posted=post,
            rule_ids=_list(answer["rules"]), completed_challenge_ids=_list(answer["completed"]),
            challenge_bonus_points=int(answer["bonus"]),
            tier_multiplier_bps=plan.tier_multiplier_bps,
            variant=VARIANTS.get(plan.variant, 0), program_version=program.version,
            balance=balance_proto(after, program, now_ms, by_day),
            replayed=reply.status == "replay")

    async def redeem(self, request: loyalty_pb2.RedeemRequest) -> loyalty_pb2.RedeemResponse:
        """Spend points: a number of them, or enough to cover a money value."""
        which = request.WhichOneof("member")
        v = Violations()
        v.identifier("request_id", request.request_id)
        _member_violations(v, request.program_id, which, request.member_id, request.account_id)
        amount = request.WhichOneof("amount")
        if amount is None:
            v.add("amount", "one of points and value_minor is required")
        elif amount == "points" and request.points <= 0:
            v.add("points", "must be greater than zero")
        elif amount == "value_minor":
            v.amount("value_minor", request.value_minor, positive=True)
        if request.currency:
            v.currency("currency", request.currency)
        v.identifier("authorization_id", request.authorization_id, required=False)
        v.text("description", request.description, 256)
        v.raise_if_any()
        versions = await self._program(request.program_id)
        now_ms = self._now_ms()
        program = versions.at(now_ms)
        currency = request.currency or program.message.home_currency
        if currency not in program.point_values:
            raise InvalidArgumentError([("currency", f"the program has no point value in "
                                                     f"{currency}")])
        if amount == "points":
            points = request.points
        else:
            points = program.points_for_value(request.value_minor, currency) or 0
        m = await self._member(request.program_id, which, request.member_id,
                               request.account_id, program, now_ms)
        limits = limits_of(program, now_ms)
        reply = await self.store.redeem(
            m, request.request_id, operation_fingerprint("redeem", request), points,
            request.allow_partial, limits, request.authorization_id, request.description,
            program.version, program.variant(m.member_id), now_ms, self._ttl_ms)
        answer = _answer(reply, request.request_id)
        refused = answer.get("refused")
        if refused:
            raise _redeem_refusal(refused, points, m)
        if reply.status == "new":
            child(LOYALTY_POINTS, m.program_id, program.variant(m.member_id) or "-",
                  "redeemed").inc(int(answer["points"]))
        after = reply.balance(m.partition, m.program_id, m.member_id)
        redeemed = int(answer["points"])
        return loyalty_pb2.RedeemResponse(
            request_id=request.request_id, entry_id=answer["entry"], points_redeemed=redeemed,
            value_minor=program.value_of_points(redeemed, currency) or 0, currency=currency,
            balance=balance_proto(after, program, now_ms, m.qualifying_by_day or {}),
            replayed=reply.status == "replay")

    async def adjust(self, request: loyalty_pb2.AdjustRequest) -> loyalty_pb2.AdjustResponse:
        """Credit or debit points by hand, and set or lift a suspension."""
        which = request.WhichOneof("member")
        v = Violations()
        v.identifier("request_id", request.request_id)
        _member_violations(v, request.program_id, which, request.member_id, request.account_id)
        v.text("reason", request.reason, 256, required=True)
        if abs(request.points_delta) > 10**15:
            v.add("points_delta", "must be at most 10^15 points either way")
        state = request.set_suspension_state
        if state and state not in STATE_NAMES:
            v.add("set_suspension_state", "is not a known SuspensionState")
        if state:
            v.text("suspension_reason", request.suspension_reason, 256, required=True)
        if not state and not request.points_delta:
            v.add("points_delta", "must not be 0 unless set_suspension_state is set")
        v.text("operator_id", request.operator_id, 64)
        v.raise_if_any()
        versions = await self._program(request.program_id)
        now_ms = self._now_ms()
        program = versions.at(now_ms)
        m = await self._member(request.program_id, which, request.member_id,
                               request.account_id, program, now_ms)
        reason = request.reason if not request.operator_id else (
            f"{request.reason} (by {request.operator_id})")
        day = program.day_of(now_ms)
        reply = await self.store.adjust(
            m, request.request_id, operation_fingerprint("adjust", request),
            request.points_delta, reason, request.counts_toward_tier,
            request.allow_negative_balance, STATE_NAMES.get(state, ""),
            request.suspension_reason, day, program.qualification_days, program.expiry_ms,
            program.version, now_ms, self._ttl_ms, program.limits.max_adjust_points_per_day)
        answer = _answer(reply, request.request_id)
        if answer.get("refused") == "limit":
            raise FailedPreconditionError(
                "the adjustment exceeds the program's daily adjustment limit; the member is "
                "on fraud hold")
        if answer.get("refused"):
            raise FailedPreconditionError(
                f"the debit of {-request.points_delta} points exceeds the {m.available} "
                "available; set allow_negative_balance to allow it",
                [("points_delta", f"must be at least {-m.available}")])
        by_day = dict(m.qualifying_by_day or {})
        if reply.status == "new" and request.counts_toward_tier and request.points_delta > 0:
            by_day[day] = by_day.get(day, 0) + request.points_delta
        if reply.status == "new" and request.points_delta:
            kind = "adjusted_in" if request.points_delta > 0 else "adjusted_out"
            child(LOYALTY_POINTS, m.program_id, program.variant(m.member_id) or "-",
                  kind).inc(abs(request.points_delta))
        return loyalty_pb2.AdjustResponse(
            request_id=request.request_id, entry_id=answer["entry"],
            points_adjusted=int(answer["points"]),
            balance=balance_proto(reply.balance(m.partition, m.program_id, m.member_id),
                                  program, now_ms, by_day),
            replayed=reply.status == "replay")

    # -- activity -------------------------------------------------------------------------------

    async def list_activity(self, request: loyalty_pb2.ListActivityRequest
                            ) -> loyalty_pb2.ListActivityResponse:
        """A page of a member's ledger, newest first."""
        which = request.WhichOneof("member")
        v = Violations()
        _member_violations(v, request.program_id, which, request.member_id, request.account_id)
        if not 0 <= request.page_size <= MAX_PAGE:
            v.add("page_size", f"must be 0 to {MAX_PAGE}")
        if request.cursor and not _is_record_id(request.cursor):
            v.add("cursor", "is not a cursor returned by ListActivity")
        v.timestamp("start_time", request.start_time, required=False)
        v.timestamp("end_time", request.end_time, required=False)
        v.raise_if_any()
        await self._program(request.program_id)
        m = await self._member(request.program_id, which, request.member_id,
                               request.account_id)
        size = request.page_size or DEFAULT_PAGE
        kinds = set(request.kinds)
        start = request.start_time.ToMilliseconds() if request.HasField("start_time") else None
        end = request.end_time.ToMilliseconds() if request.HasField("end_time") else None
        response = loyalty_pb2.ListActivityResponse()
        cursor = request.cursor or "+"
        while len(response.entries) < size:
            rows = await self.store.ledger_page(m, cursor, size)
            for record_id, fields in rows:
                cursor = record_id
                if fields["kind"] == "STATE":
                    continue
                entry = entry_proto(record_id, fields)
                at = int(fields["at"])
                if (kinds and entry.kind not in kinds) or (start is not None and at < start) \
                        or (end is not None and at >= end):
                    continue
                response.entries.append(entry)
                if len(response.entries) == size:
                    break
            if len(rows) < size:
                cursor = ""
                break
        if cursor and len(response.entries) == size:
            older = await self.store.ledger_page(m, response.entries[-1].entry_id, 1)
            response.next_cursor = response.entries[-1].entry_id if older else ""
        return response

    async def watch_balance(self, request: loyalty_pb2.WatchBalanceRequest
                            ) -> AsyncIterator[loyalty_pb2.BalanceUpdate]:
        """The member's balance now (without a cursor), then one update per ledger record
        after the cursor, as they are appended."""
        which = request.WhichOneof("member")
        v = Violations()
        _member_violations(v, request.program_id, which, request.member_id, request.account_id)
        if request.cursor and not _is_record_id(request.cursor):
            v.add("cursor", "is not a cursor returned by WatchBalance")
        v.raise_if_any()
        versions = await self._program(request.program_id)
        started_ms = self._now_ms()
        m = await self._member(request.program_id, which, request.member_id,
                               request.account_id, versions.at(started_ms), started_ms)
        cursor = request.cursor
        if not cursor:
            now_ms = self._now_ms()
            cursor = m.last_record_id
            yield loyalty_pb2.BalanceUpdate(
                balance=balance_proto(m, versions.at(now_ms), now_ms,
                                      m.qualifying_by_day or {}), cursor=cursor)
        by_day = dict(m.qualifying_by_day or {})
        while True:
            rows = await self.store.ledger_after(m, cursor, self._watch_block_ms)
            if not rows:
                continue
            versions = await self._program(request.program_id)
            now_ms = self._now_ms()
            program = versions.at(now_ms)
            fresh = await self.store.read(m.partition, m.program_id, m.member_id,
                                          (program.day_of(now_ms), program.qualification_days))
            if fresh is not None:
                by_day = fresh.qualifying_by_day or by_day
            for record_id, fields in rows:
                cursor = record_id
                record = _record_after(m, fields)
                update = loyalty_pb2.BalanceUpdate(
                    balance=balance_proto(record, versions.at(now_ms), now_ms, by_day),
                    cursor=record_id)
                if fields["kind"] != "STATE":
                    update.entry.CopyFrom(entry_proto(record_id, fields))
                yield update

    # -- figures ------------------------------------------------------------------------------

    async def program_figures(self, request: loyalty_pb2.GetProgramFiguresRequest
                              ) -> loyalty_pb2.GetProgramFiguresResponse:
        """The program's figures, in total and per A/B variant."""
        v = Violations()
        v.identifier("program_id", request.program_id)
        if not 0 <= request.active_window_days <= 3650:
            v.add("active_window_days", "must be 0 to 3650")
        v.raise_if_any()
        program = (await self._program(request.program_id)).latest
        now_ms = self._now_ms()
        figures = await read_figures(self.store.client, request.program_id, now_ms,
                                     request.active_window_days or 30)
        home = program.message.home_currency
        value = program.point_values.get(home)
        total = Figures("", dict.fromkeys(figures["-"].counts, 0))
        response = loyalty_pb2.GetProgramFiguresResponse()
        for name, f in figures.items():
            total.add(f)
            if name in VARIANTS and (any(f.counts.values()) or f.active):
                response.variants.append(figures_proto(f, VARIANTS[name], value, home))
        response.total.CopyFrom(figures_proto(total, 0, value, home))
        response.as_of.FromMilliseconds(now_ms)
        return response


def authorization_plan(program: CompiledProgram, member: MemberRecord, at_ms: int,
                       purchase: Purchase | None, redeem_points: int, redeem_value: int) -> str:
    """The loyalty JSON an authorization's commit reads: the points it spends (worth
    `redeem_value` of the purchase's money) and, for a purchase that earns, its earn plan
    (`purchase` None: it earns nothing)."""
    plan = program.plan(purchase, _state(member)).to_lua() if purchase is not None else False
    return json.dumps({"program": program.program_id, "member": member.member_id,
                       "version": program.version, "variant": program.variant(member.member_id),
                       "redeem": redeem_points, "redeem_value": redeem_value,
                       "limits": limits_of(program, at_ms), "expiry_ms": program.expiry_ms,
                       "plan": plan})


def _state(m: MemberRecord) -> MemberState:
    return MemberState(m.member_id, m.available, m.birth_month, m.enrolled_ms,
                       m.qualifying_by_day or {})


def limits_of(program: CompiledProgram, now_ms: int) -> dict[str, int]:
    """The redemption abuse limits as the commit Functions read them."""
    limits = program.limits
    return {"day": program.day_of(now_ms), "day_limit": limits.max_redeem_points_per_day,
            "hour_limit": limits.max_redemptions_per_hour}


def _answer(reply: LoyaltyReply, request_id: str) -> dict[str, Any]:
    if reply.status == "conflict":
        raise AlreadyExistsError(
            "request_id was already used for a different request; a retry must repeat the "
            "original request unchanged", [("request_id", "already used for a different request")])
    if reply.status == "missing" or reply.answer is None:
        raise NotFoundError("the member is not enrolled")
    return reply.answer


def _list(value: Any) -> list[str]:
    """A JSON array from Lua (an empty one arrives as an object)."""
    return list(value) if isinstance(value, list) else []


def _redeem_refusal(reason: str, points: int, m: MemberRecord) -> PayauthError:
    if reason == "insufficient":
        return FailedPreconditionError(
            f"{points} points asked, {max(m.available, 0)} available",
            [("points", f"must be at most {max(m.available, 0)} (or set allow_partial)")])
    if reason == "limit":
        return FailedPreconditionError("the redemption exceeds the program's abuse limits; "
                                       "the member is on fraud hold")
    return FailedPreconditionError("the member may not redeem: it is suspended, closed or on "
                                   "fraud hold")


def _is_record_id(text: str) -> bool:
    ms, dash, seq = text.partition("-")
    return bool(dash) and ms.isdigit() and seq.isdigit()


def _record_after(m: MemberRecord, f: dict[str, str]) -> MemberRecord:
    """The member's balance as a ledger record left it."""
    return dataclasses.replace(
        m, available=int(f["avail_after"]), pending=int(f["pend_after"]),
        earned=int(f.get("earned_after", m.earned)),
        redeemed=int(f.get("redeemed_after", m.redeemed)), sequence=int(f["seq"]),
        state=f.get("state", m.state),
        state_reason=f.get("reason", "") if f["kind"] == "STATE" else m.state_reason)
