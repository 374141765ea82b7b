"""Redis access for the loyalty engine: programs, members, their ledgers.

Every change of a member is one call of a loyalty Function
(functions/loyalty.lua) on the member's partition; reads are plain commands.
A member's partition never changes once enrolled, so this worker remembers
where each member lives and finds it again without asking Redis.
"""

from __future__ import annotations

import dataclasses
import json
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from payauth.server import keys
from payauth.server.store import Store

MEMBER_CACHE = 100_000


@dataclass(frozen=True, slots=True)
class MemberRecord:
    """A member's stored balance and profile (`next_expiry_ms` 0 when nothing expires)."""

    partition: int
    program_id: str
    member_id: str
    available: int
    pending: int
    earned: int
    redeemed: int
    sequence: int
    state: str
    state_reason: str
    state_ms: int
    account_id: str
    birth_month: int
    enrolled_ms: int
    next_expiry_ms: int = 0
    expiring_points: int = 0
    last_record_id: str = "0-0"
    qualifying_by_day: dict[int, int] | None = None
    challenges: dict[str, int] | None = None  # "<challenge>@<start ms>[#done]" -> count


def _member(partition: int, program_id: str, member_id: str, f: list[Any],
            extra: list[Any] | None = None) -> MemberRecord:
    v = [x.decode() if isinstance(x, bytes) else str(x) for x in f]
    record = MemberRecord(partition, program_id, member_id, int(v[0]), int(v[1]), int(v[2]),
                          int(v[3]), int(v[4]), v[5], v[6], int(v[7] or 0), v[8],
                          int(v[9] or 0), int(v[10] or 0), int(v[11]), int(v[12]))
    if extra is None:
        return record
    flat = extra[0]
    challenges = {flat[i].decode(): int(flat[i + 1]) for i in range(0, len(flat), 2)}
    e = [x.decode() for x in extra[1:]]
    days = {int(e[i]): int(e[i + 1]) for i in range(1, len(e), 2)}
    return dataclasses.replace(record, last_record_id=e[0], qualifying_by_day=days,
                               challenges=challenges)


def member_from_reply(partition: int, program_id: str, member_id: str, raw: list[Any]
                      ) -> MemberRecord | None:
    """A member from a `payauth_loyalty_read` reply; None when it is not enrolled."""
    if raw[0] == b"missing":
        return None
    return _member(partition, program_id, member_id, raw[1:14], raw[14:])


@dataclass(frozen=True, slots=True)
class MemberBooks:
    """A member's stored points beside what its ledger adds up to."""

    available: int
    pending: int
    ledger_available: int
    ledger_pending: int


@dataclass(frozen=True, slots=True)
class LoyaltyReply:
    """A loyalty Function's answer: 'new' or 'replay' with its JSON, or 'conflict' /
    'missing' (no such member)."""

    status: str
    answer: dict[str, Any] | None = None

    def balance(self, partition: int, program_id: str, member_id: str) -> MemberRecord:
        """The member's balance after the call, from the answer."""
        assert self.answer is not None
        return _member(partition, program_id, member_id, self.answer["balance"])


def _reply(raw: list[bytes]) -> LoyaltyReply:
    status = raw[0].decode()
    if status in ("new", "replay"):
        return LoyaltyReply(status, json.loads(raw[1]))
    return LoyaltyReply(status)


class LoyaltyStore:
    """payauth's loyalty state in Redis, through the shared Store's connections."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._partitions: OrderedDict[tuple[str, str], int] = OrderedDict()

    @property
    def client(self) -> Any:
        """The Redis client (single server or cluster)."""
        return self._store.client

    # -- programs -------------------------------------------------------------------------

    async def put_program(self, program_id: str, version: int, content_hash: str,
                          payload: bytes, now_ms: int) -> tuple[str, int]:
        """('stored', previous), ('replayed', version) or ('stale', latest)."""
        reply = await self._store.fcall(
            "payauth_loyalty_program_put",
            [keys.loyalty_program(program_id), keys.LOYALTY_PROGRAMS],
            [version, content_hash, payload, now_ms, keys.CONFIG_CHANNEL,
             f"program:{program_id}"])
        return reply[0].decode(), int(reply[1])

    async def program_versions(self, program_id: str) -> dict[int, bytes]:
        """Every stored version of a program: {version: serialized LoyaltyProgram}."""
        fields = await self.client.hgetall(keys.loyalty_program(program_id))
        return {int(k[1:]): v for k, v in fields.items()
                if k.startswith(b"v") and k[1:].isdigit()}

    # -- where members live ------------------------------------------------------------------

    def _remember(self, program_id: str, member_id: str, partition: int) -> None:
        self._partitions[(program_id, member_id)] = partition
        self._partitions.move_to_end((program_id, member_id))
        if len(self._partitions) > MEMBER_CACHE:
            self._partitions.popitem(last=False)

    async def partition_of_member(self, program_id: str, member_id: str) -> int | None:
        """The partition of an enrolled member, or None when it is not enrolled."""
        known = self._partitions.get((program_id, member_id))
        if known is not None:
            return known
        raw = await self._store.fcall("payauth_loyalty_index",
                                       [keys.member_index(program_id, member_id)], [""])
        if raw is None:
            return None
        partition = int(raw)
        self._remember(program_id, member_id, partition)
        return partition

    async def member_of_account(self, account_id: str) -> tuple[str, str] | None:
        """(program, member) linked to an account, or None."""
        p = keys.partition_of(account_id)
        program, member = await self.client.hmget(keys.account(p, account_id),
                                                   "loyalty_program", "loyalty_member")
        if program is None:
            return None
        self._remember(program.decode(), member.decode(), p)
        return program.decode(), member.decode()

    # -- members ---------------------------------------------------------------------------

    async def enroll(self, program_id: str, member_id: str, account_id: str, birth_month: int,
                     variant: str, now_ms: int) -> tuple[str, MemberRecord | str]:
        """Enroll or update a member: ('created'|'updated', record) or ('error', reason)."""
        partition = await self.partition_of_member(program_id, member_id)
        if partition is None:
            wanted = keys.partition_of(account_id or member_id)
            # The partition is recorded for good: only for an account that exists.
            if account_id and not await self.client.exists(keys.account(wanted, account_id)):
                return "error", "account_missing"
            raw = await self._store.fcall("payauth_loyalty_index",
                                           [keys.member_index(program_id, member_id)],
                                           [str(wanted)])
            partition = int(raw)
            self._remember(program_id, member_id, partition)
        reply = await self._store.fcall(
            "payauth_loyalty_enroll", [keys.member(partition, program_id, member_id)],
            [keys.tag(partition), program_id, member_id, account_id, birth_month, now_ms,
             variant])
        status = reply[0].decode()
        if status == "error":
            return status, reply[1].decode()
        return status, _member(partition, program_id, member_id, reply[1:])

    async def read(self, partition: int, program_id: str, member_id: str,
                   window: tuple[int, int] | None = None) -> MemberRecord | None:
        """A member's balance, next expiry and qualifying points; None if absent. With
        `window` (day, days) the qualifying points come summed over the days that end with
        that day, as one {day: sum} entry; without it, by day."""
        args: list[str | bytes | int] = [keys.tag(partition), program_id, member_id]
        if window is not None:
            args += ["", window[0], window[1]]
        raw = await self._store.fcall(
            "payauth_loyalty_read", [keys.member(partition, program_id, member_id)], args)
        return member_from_reply(partition, program_id, member_id, raw)

    async def earn(self, m: MemberRecord, request_id: str, fingerprint: str,
                   plan: dict[str, Any], post: bool, authorization_id: str, now_ms: int,
                   ttl_ms: int) -> LoyaltyReply:
        """Earn under `plan` (Loyalty.Earn)."""
        return _reply(await self._store.fcall(
            "payauth_loyalty_earn", [keys.member(m.partition, m.program_id, m.member_id)],
            [keys.tag(m.partition), m.program_id, m.member_id, request_id, fingerprint,
             json.dumps(plan), "1" if post else "0", authorization_id, now_ms, ttl_ms]))

    async def redeem(self, m: MemberRecord, request_id: str, fingerprint: str, points: int,
                     allow_partial: bool, limits: dict[str, int], authorization_id: str,
                     description: str, version: int, variant: str, now_ms: int,
                     ttl_ms: int) -> LoyaltyReply:
        """Redeem points (Loyalty.Redeem)."""
        return _reply(await self._store.fcall(
            "payauth_loyalty_redeem", [keys.member(m.partition, m.program_id, m.member_id)],
            [keys.tag(m.partition), m.program_id, m.member_id, request_id, fingerprint, points,
             "1" if allow_partial else "0", json.dumps(limits), authorization_id, description,
             version, now_ms, ttl_ms, variant]))

    async def adjust(self, m: MemberRecord, request_id: str, fingerprint: str, delta: int,
                     reason: str, counts_toward_tier: bool, allow_negative: bool, state: str,
                     state_reason: str, day: int, qualification_days: int, expiry_ms: int,
                     version: int, now_ms: int, ttl_ms: int, adjust_limit: int = 0
                     ) -> LoyaltyReply:
        """Credit, debit or change the state of a member (Loyalty.Adjust)."""
        return _reply(await self._store.fcall(
            "payauth_loyalty_adjust", [keys.member(m.partition, m.program_id, m.member_id)],
            [keys.tag(m.partition), m.program_id, m.member_id, request_id, fingerprint, delta,
             reason, "1" if counts_toward_tier else "0", "1" if allow_negative else "0",
             state, state_reason, day, qualification_days, expiry_ms, version, now_ms,
             ttl_ms, adjust_limit]))

    async def ledger_page(self, m: MemberRecord, before: str, count: int
                          ) -> list[tuple[str, dict[str, str]]]:
        """Up to `count` ledger records older than `before` ('+' for the newest), newest
        first."""
        start = f"({before}" if before != "+" else "+"
        rows = await self.client.xrevrange(
            keys.member_ledger(m.partition, m.program_id, m.member_id), start, "-", count=count)
        return [(rid.decode(), {k.decode(): v.decode() for k, v in fields.items()})
                for rid, fields in rows]

    async def ledger_after(self, m: MemberRecord, after: str, block_ms: int, count: int = 100
                           ) -> list[tuple[str, dict[str, str]]]:
        """Ledger records after `after`, oldest first, waiting up to `block_ms` for one."""
        key = keys.member_ledger(m.partition, m.program_id, m.member_id)
        reply = await self.client.xread(
            {key: after}, count=count, block=block_ms)
        rows = reply[0][1] if reply else []
        return [(rid.decode(), {k.decode(): v.decode() for k, v in fields.items()})
                for rid, fields in rows]

    async def member_keys(self) -> AsyncIterator[tuple[int, str, str]]:
        """Every enrolled member as (partition, program, member): a scan of the member
        keys, for reconciliation."""
        async for key in self.client.scan_iter(match="lmem:*", count=1000):
            _, tag, program_id, member_id = key.decode().split(":", 3)
            yield int(tag[2:-1]), program_id, member_id

    async def member_books(self, partition: int, program_id: str, member_id: str
                           ) -> MemberBooks | None:
        """A member's stored points beside the sums of its ledger, as `Store.account_books`
        reads an account's; None when it is not enrolled."""
        ledger = keys.member_ledger(partition, program_id, member_id)
        reply = await self._store.fcall(
            "payauth_loyalty_books", [keys.member(partition, program_id, member_id), ledger], [])
        if not reply:
            return None
        available, pending, last_id = reply
        sums, _ = await self._store.sum_stream(ledger, last_id, (b"avail", b"pend"))
        return MemberBooks(int(available), int(pending), sums[b"avail"], sums[b"pend"])

    # -- expiry ------------------------------------------------------------------------------

    async def due_lots(self, partitions: list[int], now_ms: int, limit: int = 100
                       ) -> list[tuple[int, str, str]]:
        """Members with lots due to expire: (partition, program, member), one pipeline."""
        replies = await self._store.batch([
            ("ZRANGEBYSCORE", keys.point_lots_due(p), "-inf", now_ms, "LIMIT", 0, limit)
            for p in partitions])
        due = []
        for p, names in zip(partitions, replies, strict=True):
            for name in names:
                program_id, _, member_id = name.decode().partition("\t")
                due.append((p, program_id, member_id))
        return due

    async def expire_lots(self, partition: int, program_id: str, member_id: str,
                          now_ms: int) -> int:
        """Expire a member's due lots; the points expired."""
        return int(await self._store.fcall(
            "payauth_loyalty_expire", [keys.member(partition, program_id, member_id)],
            [keys.tag(partition), program_id, member_id, now_ms]))
