"""Redis access for payauth: the reads and the atomic commits, nothing else.

The store speaks in records (accounts, cards, stored answers) and in proto enum
values; how they are laid out in Redis (`keys`) and which Function commits
them (`functions/payauth.lua`) stays here. Authorize costs two round trips in
the steady state: `read_authorization` (one pipeline) and `commit_authorization`
(one Function call on the account's partition).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from importlib.resources import files
from typing import Any, NamedTuple

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from payauth.server import keys
from payauth.server.batching import PipelineBatcher
from payauth.server.metrics import REDIS_LATENCY
from payauth.server.redis_pipe import CommandTemplate
from payauth.v1 import common_pb2

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 1024
READ_LATENCY = REDIS_LATENCY.labels("authorize_read")
COMMIT_LATENCY = REDIS_LATENCY.labels("authorize_commit")
# One library: the loyalty engine is appended, so that the authorization and lifecycle
# functions move points in the same atomic call as money.
LIBRARY_CODE = "\n".join((files("payauth.server.functions") / name).read_text()
                         for name in ("payauth.lua", "loyalty.lua"))

_ACCOUNT_KINDS = {
    common_pb2.ACCOUNT_KIND_DEBIT: "debit",
    common_pb2.ACCOUNT_KIND_CREDIT: "credit",
}
_ACCOUNT_STATUSES = {
    common_pb2.ACCOUNT_STATUS_ACTIVE: "active",
    common_pb2.ACCOUNT_STATUS_FROZEN: "frozen",
    common_pb2.ACCOUNT_STATUS_CLOSED: "closed",
}
_CARD_STATUSES = {
    common_pb2.CARD_STATUS_ACTIVE: "active",
    common_pb2.CARD_STATUS_BLOCKED: "blocked",
    common_pb2.CARD_STATUS_LOST: "lost",
    common_pb2.CARD_STATUS_STOLEN: "stolen",
    common_pb2.CARD_STATUS_EXPIRED: "expired",
}
_BY_NAME = {
    "kind": {v.encode(): k for k, v in _ACCOUNT_KINDS.items()},
    "account_status": {v.encode(): k for k, v in _ACCOUNT_STATUSES.items()},
    "card_status": {v.encode(): k for k, v in _CARD_STATUSES.items()},
}


class ImmutableFieldError(ValueError):
    """An upsert tried to change a field that is fixed once the record exists."""

    def __init__(self, field: str) -> None:
        super().__init__(f"{field} cannot change once the account exists")
        self.field = field


class AccountRecord(NamedTuple):
    """An account as stored, amounts in minor units of `currency`.

    The records an authorization reads and commits (this one, `CardRecord`,
    `AuthorizationSnapshot`, `StoredAnswer`, `CommitResult`) are named tuples: immutable like
    a frozen dataclass, which sets each field through `object.__setattr__` and costs about
    three times as much to build, several times per authorization."""

    account_id: str
    kind: int
    status: int
    currency: str
    balance: int
    limit: int
    held: int
    updated_ms: int

    @property
    def available(self) -> int:
        """What a purchase may still draw: the same formula as the commit Function."""
        if self.kind == common_pb2.ACCOUNT_KIND_CREDIT:
            return self.limit - self.balance - self.held
        return self.balance - self.held


class CardRecord(NamedTuple):
    """A card as stored: never its PAN, only the PAN's keyed hash."""

    card_token: str
    account_id: str
    status: int
    expiry_year: int
    expiry_month: int
    pan_hash: str


@dataclass(frozen=True, slots=True)
class HoldRecord:
    """An active authorization hold."""

    authorization_id: str
    request_id: str
    amount: int
    merchant_id: str
    created_ms: int
    expires_ms: int


class StoredAnswer(NamedTuple):
    """What a commit decided: enough to rebuild the response it sent."""

    outcome: str
    approved: int
    authorization_id: str
    decided_ms: int
    base: bytes
    points_earned: int = 0
    points_redeemed: int = 0
    redeemed_value: int = 0  # money value of the points redeemed, in the purchase's currency


class CommitResult(NamedTuple):
    """The result of an authorization commit: a new decision, a replay or a conflict."""

    status: str  # 'new', 'replay' or 'conflict'
    answer: StoredAnswer | None


class AuthorizationSnapshot(NamedTuple):
    """Everything the decision needs, read in one pipeline."""

    card: CardRecord | None
    account: AccountRecord | None
    stored: StoredAnswer | None  # the partition's idempotency record
    stored_fingerprint: str | None
    # The fingerprint the request_id is bound to: set by the read when new on a cluster, by
    # the commit on a single Redis (so None there until the first commit).
    claim_fingerprint: str | None
    claim_answer: StoredAnswer | None  # an unrouted answer stored on the claim
    reversed_early: bool  # a reversal for this request_id arrived before it
    pan_token: str | None  # what the PAN index points to now (PAN requests)
    loyalty_link: tuple[str, str] | None = None  # (program, member) of the account
    member: list | None = None  # the member's raw loyalty_read reply, when asked for


def _s(value: bytes | None) -> str:
    return value.decode() if value is not None else ""


def _pan_entry(value: bytes | None) -> tuple[str, str | None] | None:
    """A PAN index value as (card token, account id): "<token> <account_id>", or the token
    alone as entries written before the index carried the account (None then)."""
    if value is None:
        return None
    token, _, account_id = value.decode().partition(" ")
    return token, account_id or None


def _card(token: str, fields: list[bytes | None]) -> CardRecord | None:
    account_id, status, year, month, pan_hash = fields
    if account_id is None:
        return None
    return CardRecord(
        card_token=token,
        account_id=account_id.decode(),
        status=_BY_NAME["card_status"][status],
        expiry_year=int(year or 0),
        expiry_month=int(month or 0),
        pan_hash=_s(pan_hash),
    )


def _account(account_id: str, fields: list[bytes | None]) -> AccountRecord | None:
    kind, status, currency, balance, limit, held, updated_ms = fields
    if kind is None:
        return None
    return AccountRecord(
        account_id=account_id,
        kind=_BY_NAME["kind"][kind],
        status=_BY_NAME["account_status"][status],
        currency=currency.decode(),
        balance=int(balance),
        limit=int(limit),
        held=int(held),
        updated_ms=int(updated_ms),
    )


_ACCOUNT_FIELDS = ("kind", "status", "currency", "balance", "limit", "held", "updated_ms")
_CARD_FIELDS = ("account_id", "status", "exp_year", "exp_month", "pan_hash")
_LINK_FIELDS = ("loyalty_program", "loyalty_member")
_IDEM_FIELDS = ("fp", "outcome", "approved", "auth_id", "decided_ms", "base", "points")
# What payauth_claim_request returns, read as they are.
_CLAIM_FIELDS = ("fp", "base", "decided_ms", "rev")
# The HMGETs of an authorization's read, their fields encoded once.
_READ_CARD = CommandTemplate("HMGET", *_CARD_FIELDS)
_READ_ACCOUNT = CommandTemplate("HMGET", *_ACCOUNT_FIELDS, *_LINK_FIELDS)
_READ_ANSWER = CommandTemplate("HMGET", *_IDEM_FIELDS)
_READ_CLAIM = CommandTemplate("HMGET", *_CLAIM_FIELDS)


def _answer(outcome: bytes, approved: bytes, auth_id: bytes, decided_ms: bytes,
            base: bytes, points: bytes | None = None) -> StoredAnswer:
    earned, redeemed, value = (points or b"0|0|0").decode().split("|")
    return StoredAnswer(
        outcome=outcome.decode(),
        approved=int(approved),
        authorization_id=auth_id.decode(),
        decided_ms=int(decided_ms),
        base=base,
        points_earned=int(earned),
        points_redeemed=int(redeemed),
        redeemed_value=int(value),
    )


@dataclass(frozen=True, slots=True)
class LifecycleResult:
    """What a capture, reversal, refund or extension did, as stored for its replays."""

    status: str
    amount: int
    captured: int
    held: int
    released: int
    over: int
    refunded: int
    reversed: int
    operation_id: str
    at_ms: int
    authorization_id: str
    currency: str
    expires_ms: int
    found: bool
    points: int = 0  # loyalty points the operation posted, removed or took back


@dataclass(frozen=True, slots=True)
class LifecycleReply:
    """A lifecycle Function's answer: a result ('new' or 'replay'), a conflict, or a
    refusal with its reason and detail (nothing was changed)."""

    status: str  # 'new', 'replay', 'conflict' or 'error'
    result: LifecycleResult | None = None
    reason: str = ""
    detail: str = ""


def _lifecycle_reply(reply: list[bytes]) -> LifecycleReply:
    status = reply[0].decode()
    if status == "conflict":
        return LifecycleReply(status)
    if status == "error":
        return LifecycleReply(status, reason=reply[1].decode(), detail=reply[2].decode())
    f = [v.decode() for v in reply[1:]]
    return LifecycleReply(status, LifecycleResult(
        status=f[0], amount=int(f[1]), captured=int(f[2]), held=int(f[3]), released=int(f[4]),
        over=int(f[5]), refunded=int(f[6]), reversed=int(f[7]), operation_id=f[8],
        at_ms=int(f[9]), authorization_id=f[10], currency=f[11], expires_ms=int(f[12]),
        found=f[13] == "1", points=int(f[14]) if len(f) > 14 else 0))


@dataclass(frozen=True, slots=True)
class AccountBooks:
    """An account's stored balance and held amount beside what its ledger and its active
    holds add up to; reconciliation compares them."""

    account_id: str
    balance: int
    held: int
    ledger_balance: int
    ledger_held: int
    holds_held: int
    entries: int


def _commit_result(reply: list[bytes]) -> CommitResult:
    status = reply[0].decode()
    if status == "conflict":
        return CommitResult("conflict", None)
    outcome, approved, auth_id, decided_ms = reply[1:5]
    base = reply[5] if status == "replay" else b""
    return CommitResult(status, _answer(outcome, approved, auth_id, decided_ms, base, reply[6]))


def _raising_errors(replies: list[Any]) -> list[Any]:
    """`replies`, once none of them is an error reply (the first one is raised)."""
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


class Store:
    """payauth's state in Redis (a single server or a Redis Cluster)."""

    def __init__(self, client: aioredis.Redis | aioredis.RedisCluster, cluster: bool) -> None:
        self.client = client
        self.cluster = cluster
        # Where a new request_id is bound to its body. On a single Redis the commit binds it
        # (its Function can reach the claim's partition too), so the read writes nothing and a
        # new authorization waits for one fsync of the AOF instead of two; on a cluster the
        # claim's partition lives on another shard than the account's, and the read binds it.
        self.claim_in_commit = not cluster
        self.url = ""
        self._batcher = PipelineBatcher(client)
        # How the read's HMGETs are given to the batcher: packed where it writes RESP bytes.
        self._hmget = (CommandTemplate.packed if self._batcher.writes_resp
                       else CommandTemplate.command)

    @classmethod
    def connect(cls, url: str, cluster: bool, timeout_s: float) -> Store:
        """Open a connection pool to the Redis at `url` (redis://, rediss:// or unix://)."""
        # The pool serves what does not go through the shared pipeline (lifecycle and issuer
        # calls through redis-py, and every call on a Redis Cluster, whose pipeline takes a
        # connection per batch): it must hold AuthorizeStream's window and the unary calls
        # beside it.
        if cluster:
            client = aioredis.RedisCluster.from_url(
                url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                max_connections=MAX_CONNECTIONS,
            )
        else:
            client = aioredis.from_url(
                url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                max_connections=MAX_CONNECTIONS,
            )
        store = cls(client, cluster)
        store.url = url
        return store

    def notification_client(self) -> aioredis.Redis:
        """A client of its own for pub/sub (on a cluster, to the seed node: a PUBLISH
        reaches every node)."""
        return aioredis.from_url(self.url)

    async def close(self) -> None:
        """Close the connection pools."""
        await self._batcher.close()
        await self.client.aclose()

    # -- Function library -------------------------------------------------

    async def load_library(self) -> None:
        """Load (or replace) the Function library on every primary."""
        if self.cluster:
            await self.client.initialize()  # discovers the primaries
            primaries = self.client.get_primaries()
            if not primaries:
                raise RuntimeError("the Redis Cluster reports no primaries")
            for node in primaries:
                await self.client.execute_command(
                    "FUNCTION", "LOAD", "REPLACE", LIBRARY_CODE, target_nodes=node
                )
        else:
            await self.client.execute_command("FUNCTION", "LOAD", "REPLACE", LIBRARY_CODE)

    async def batch(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Send commands through the shared pipeline; their replies, the first error
        reply raised."""
        return _raising_errors(await self._batcher.run(commands))

    async def fcall(self, function: str, keys_: list[str], args: list[str | bytes | int]) -> Any:
        """Call one payauth Function through the shared pipeline (for the other state
        modules: the loyalty engine's)."""
        return await self._fcall(function, keys_, args)

    async def _fcall(self, function: str, keys_: list[str], args: list[str | bytes | int]) -> list:
        try:
            (reply,) = await self.batch([("FCALL", function, len(keys_), *keys_, *args)])
            return reply
        except ResponseError as exc:
            # A Redis restarted without its data, or a new node, lacks the library.
            if "Function not found" not in str(exc):
                raise
            log.warning("Redis lacked the payauth Function library; loading it again")
            await self.load_library()
            return await self.client.fcall(function, len(keys_), *keys_, *args)

    # -- Authorization ----------------------------------------------------

    async def card_account(self, card_token: str) -> str | None:
        """The account a card draws on, or None for an unknown card (through the shared
        pipeline: a worker asks once per card it has not seen yet)."""
        (value,) = await self.batch([("HGET", keys.card(card_token), "account_id")])
        return value.decode() if value is not None else None

    async def card_for_pan(self, pan_hash: str) -> tuple[str, str | None] | None:
        """The card registered for a PAN hash, as (card token, the account the index names,
        None in an entry older than the account in it), or None (through the shared
        pipeline: a worker asks once per PAN it has not seen yet)."""
        (value,) = await self.batch([("GET", keys.pan_index(pan_hash))])
        return _pan_entry(value)

    async def read_authorization(
        self,
        card_token: str,
        account_id: str,
        request_id: str,
        fingerprint: str,
        claim_ttl_ms: int,
        pan_hash: str | None,
        member: tuple[str, str] | None = None,
        member_window: tuple[int, int] | None = None,
    ) -> AuthorizationSnapshot:
        """One pipeline: card, account (with its loyalty link), stored answer, request_id
        claim (bound here when new on a cluster, only read on a single Redis: see
        `claim_in_commit`), and the account's loyalty member when `member` (program, member
        id) names it (its qualifying points summed over `member_window`, (day, days), when
        given)."""
        partition = keys.partition_of(account_id)
        claim = keys.request_claim(request_id)
        hmget = self._hmget
        commands: list[tuple | bytes] = [
            hmget(_READ_CARD, keys.card(card_token)),
            hmget(_READ_ACCOUNT, keys.account(partition, account_id)),
            hmget(_READ_ANSWER, keys.idempotency(partition, request_id)),
            hmget(_READ_CLAIM, claim) if self.claim_in_commit else
            ("FCALL", "payauth_claim_request", 1, claim, fingerprint, claim_ttl_ms, account_id),
        ]
        if pan_hash is not None:
            commands.append(("GET", keys.pan_index(pan_hash)))
        if member is not None:
            window = member_window if member_window is not None else ("", "")
            commands.append(("FCALL", "payauth_loyalty_read", 1,
                             keys.member(partition, *member), keys.tag(partition), *member,
                             "earning", *window))
        started = time.perf_counter()
        replies = await self._batcher.run(commands)
        READ_LATENCY.observe(time.perf_counter() - started)
        _raising_errors(replies)
        card_f, acct_f, idem_f, claim_f = replies[:4]
        stored = None
        if idem_f[1] is not None:  # an authorization's answer (a lifecycle record has none)
            stored = _answer(*idem_f[1:])
        claim_answer = None
        if claim_f[1] is not None:
            claim_answer = StoredAnswer("final", 0, "", int(claim_f[2]), claim_f[1])
        link = None
        if acct_f[len(_ACCOUNT_FIELDS)] is not None:
            link = (acct_f[-2].decode(), acct_f[-1].decode())
        pan_entry = _pan_entry(replies[4]) if pan_hash is not None else None
        return AuthorizationSnapshot(
            card=_card(card_token, card_f),
            account=_account(account_id, acct_f[:len(_ACCOUNT_FIELDS)]),
            stored=stored,
            stored_fingerprint=_s(idem_f[0]) or None,
            claim_fingerprint=_s(claim_f[0]) or None,
            claim_answer=claim_answer,
            reversed_early=claim_f[3] is not None,
            pan_token=pan_entry[0] if pan_entry else None,
            loyalty_link=link,
            member=replies[-1] if member is not None else None,
        )

    async def commit_authorization(
        self,
        *,
        mode: str,
        account_id: str,
        request_id: str,
        fingerprint: str,
        amount: int,
        partial_ok: bool,
        currency: str,
        merchant_id: str,
        card_token: str,
        mcc: str,
        now_ms: int,
        expires_ms: int,
        max_expires_ms: int,
        tolerance_bps: int,
        authorization_id: str,
        idempotency_ttl_ms: int,
        base: bytes,
        event: bytes,
        loyalty: str = "",
    ) -> CommitResult:
        """The atomic commit: bind the request_id (on a single Redis), re-check funds, hold
        (mode 'hold'), raise a hold (mode 'increment') or record a decision taken (mode
        'final'); store the answer; append the ledger entry and the event."""
        p = keys.partition_of(account_id)
        commit_keys = [keys.account(p, account_id), keys.idempotency(p, request_id)]
        if self.claim_in_commit:
            commit_keys.append(keys.request_claim(request_id))
        started = time.perf_counter()
        reply = await self._fcall(
            "payauth_authorize_commit",
            commit_keys,
            [
                keys.tag(p), request_id, fingerprint, mode, amount, "1" if partial_ok else "0",
                now_ms, expires_ms, authorization_id, idempotency_ttl_ms, base, event,
                account_id, merchant_id, currency, card_token, mcc, tolerance_bps,
                max_expires_ms, loyalty,
            ],
        )
        COMMIT_LATENCY.observe(time.perf_counter() - started)
        return _commit_result(reply)

    async def record_unrouted(
        self, *, request_id: str, fingerprint: str, now_ms: int, idempotency_ttl_ms: int,
        base: bytes, event: bytes,
    ) -> CommitResult:
        """Store the answer to a request that reached no account, with its event."""
        reply = await self._fcall(
            "payauth_record_unrouted",
            [keys.request_claim(request_id)],
            [keys.tag(keys.partition_of(request_id)), fingerprint, now_ms, idempotency_ttl_ms,
             base, event],
        )
        return _commit_result(reply)

    # -- Accounts and cards -----------------------------------------------

    async def upsert_account(
        self, *, account_id: str, kind: int, status: int, currency: str, balance: int,
        limit: int, now_ms: int,
    ) -> tuple[AccountRecord, bool]:
        """Create or update an account; return it and whether it was created."""
        p = keys.partition_of(account_id)
        try:
            reply = await self._fcall(
                "payauth_upsert_account",
                [keys.account(p, account_id)],
                [_ACCOUNT_KINDS[kind], _ACCOUNT_STATUSES[status], currency, balance, limit,
                 now_ms, keys.tag(p), account_id, ""],
            )
        except ResponseError as exc:
            if str(exc).startswith("IMMUTABLE "):
                raise ImmutableFieldError(str(exc).split()[1]) from exc
            raise
        record = _account(account_id, reply[1:])
        assert record is not None
        return record, reply[0] == b"created"

    async def get_account(self, account_id: str, max_holds: int
                          ) -> tuple[AccountRecord, list[HoldRecord], int] | None:
        """An account, its first `max_holds` active holds by expiry (returned oldest first)
        and its number of active holds; None when the account does not exist."""
        p = keys.partition_of(account_id)
        pipe = self.client.pipeline(transaction=False)
        pipe.hmget(keys.account(p, account_id), _ACCOUNT_FIELDS)
        pipe.zrange(keys.account_holds(p, account_id), 0, max_holds - 1)
        pipe.zcard(keys.account_holds(p, account_id))
        acct_f, hold_ids, hold_count = await pipe.execute()
        record = _account(account_id, acct_f)
        if record is None:
            return None
        pipe = self.client.pipeline(transaction=False)
        for auth_id in hold_ids:
            pipe.hmget(keys.hold(p, auth_id.decode()),
                       ("request_id", "held", "merchant_id", "created_ms", "expires_ms"))
        holds = [
            HoldRecord(auth_id.decode(), _s(f[0]), int(f[1]), _s(f[2]), int(f[3]), int(f[4]))
            for auth_id, f in zip(hold_ids, await pipe.execute() if hold_ids else [],
                                  strict=True)
            if f[1] is not None
        ]
        holds.sort(key=lambda h: h.created_ms)
        return record, holds, hold_count

    async def account_exists(self, account_id: str) -> bool:
        """True when the account exists."""
        return bool(await self.client.exists(keys.account(keys.partition_of(account_id),
                                                          account_id)))

    async def get_card(self, card_token: str) -> CardRecord | None:
        """A card by its token, or None."""
        return _card(card_token, await self.client.hmget(keys.card(card_token), _CARD_FIELDS))

    async def put_card(self, card: CardRecord) -> None:
        """Write a card and, when it has a PAN hash, point the PAN index at it and its
        account ("<token> <account_id>": an authorization by a PAN its worker has not seen
        learns where to go in one lookup instead of two).

        The card is written first: a crash between the two writes leaves a card
        nobody finds by PAN yet (or, for a card moved to another account, an index naming
        the old account, which the read pipeline sees as a stale route), which the
        issuer's retry of the upsert repairs.
        """
        await self.client.hset(keys.card(card.card_token), mapping={
            "account_id": card.account_id,
            "status": _CARD_STATUSES[card.status],
            "exp_year": card.expiry_year,
            "exp_month": card.expiry_month,
            "pan_hash": card.pan_hash,
        })
        if card.pan_hash:
            await self.client.set(keys.pan_index(card.pan_hash),
                                  f"{card.card_token} {card.account_id}")

    async def set_card_status(self, card_token: str, status: int, reason: str,
                              now_ms: int) -> None:
        """Change an existing card's status, keeping why and when for the audit trail."""
        await self.client.hset(keys.card(card_token), mapping={
            "status": _CARD_STATUSES[status], "status_reason": reason,
            "status_changed_ms": now_ms,
        })

    # -- Lifecycle ----------------------------------------------------------

    async def _on_hold(self, function: str, authorization_id: str, request_id: str,
                       fingerprint: str, *args: str | int) -> LifecycleReply:
        """Call a lifecycle Function on an authorization's hold: keys (hold, the operation's
        idempotency record) and arguments (tag, authorization, request, fingerprint, ...)
        as every one of them takes them."""
        p = keys.partition_from_authorization_id(authorization_id)
        return _lifecycle_reply(await self._fcall(
            function,
            [keys.hold(p, authorization_id), keys.idempotency(p, request_id)],
            [keys.tag(p), authorization_id, request_id, fingerprint, *args],
        ))

    async def capture(self, *, authorization_id: str, request_id: str, fingerprint: str,
                      amount: int, final: bool, now_ms: int, idempotency_ttl_ms: int,
                      capture_id: str, day: str, currency: str) -> LifecycleReply:
        """Capture part or all of a hold (functions/payauth.lua `capture`)."""
        return await self._on_hold("payauth_capture", authorization_id, request_id, fingerprint,
                                   amount, "1" if final else "0", now_ms, idempotency_ttl_ms,
                                   capture_id, day, currency)

    async def reverse(self, *, authorization_id: str, request_id: str, fingerprint: str,
                      amount: int, now_ms: int, idempotency_ttl_ms: int,
                      currency: str) -> LifecycleReply:
        """Reverse part or all of an authorization's hold."""
        return await self._on_hold("payauth_reverse", authorization_id, request_id, fingerprint,
                                   amount, now_ms, idempotency_ttl_ms, currency)

    async def reverse_by_request(self, *, original_request_id: str, request_id: str,
                                 fingerprint: str, amount: int, now_ms: int,
                                 idempotency_ttl_ms: int) -> LifecycleReply:
        """Reverse the authorization an original request_id received, whether it was
        decided already, is being decided, or has not arrived yet."""
        rp = keys.partition_of(original_request_id)
        reply = await self._fcall(
            "payauth_reverse_lookup",
            [keys.request_claim(original_request_id), keys.idempotency(rp, request_id)],
            [fingerprint, now_ms, idempotency_ttl_ms, request_id],
        )
        if reply[0] != b"route":
            return _lifecycle_reply(reply)
        p = keys.partition_of(reply[1].decode())
        return _lifecycle_reply(await self._fcall(
            "payauth_reverse_original",
            [keys.idempotency(p, original_request_id), keys.idempotency(p, request_id)],
            [keys.tag(p), original_request_id, request_id, fingerprint, amount, now_ms,
             idempotency_ttl_ms],
        ))

    async def refund(self, *, authorization_id: str, request_id: str, fingerprint: str,
                     amount: int, now_ms: int, idempotency_ttl_ms: int, refund_id: str,
                     day: str, currency: str) -> LifecycleReply:
        """Refund part or all of what an authorization captured."""
        return await self._on_hold("payauth_refund", authorization_id, request_id, fingerprint,
                                   amount, now_ms, idempotency_ttl_ms, refund_id, day, currency)

    async def extend(self, *, authorization_id: str, request_id: str, fingerprint: str,
                     expires_ms: int, now_ms: int, idempotency_ttl_ms: int) -> LifecycleReply:
        """Move a hold's expiry later, within the maximum fixed at its placement."""
        return await self._on_hold("payauth_extend", authorization_id, request_id, fingerprint,
                                   expires_ms, now_ms, idempotency_ttl_ms)

    async def due_holds(self, partitions: range | list[int], now_ms: int,
                        limit: int = 100) -> list[tuple[int, str]]:
        """Holds whose expiry has passed, as (partition, authorization id), in one pipeline
        (the shared one: a sweep asks each of a worker's partitions every second)."""
        replies = await self.batch([("ZRANGEBYSCORE", keys.expiries(p), "-inf", now_ms,
                                     "LIMIT", 0, limit) for p in partitions])
        due = []
        for p, ids in zip(partitions, replies, strict=True):
            due.extend((p, auth_id.decode()) for auth_id in ids)
        return due

    async def expire(self, partition: int, authorization_id: str, now_ms: int) -> str:
        """Release one expired hold; 'expired', 'gone' (someone else did) or 'not_due'."""
        reply = await self._fcall("payauth_expire", [keys.expiries(partition)],
                                  [keys.tag(partition), authorization_id, now_ms])
        return reply.decode()

    # -- Policies and models ------------------------------------------------

    async def put_config(self, key: str, what: str, version: int, content_hash: str,
                         payload: bytes, now_ms: int) -> tuple[str, int]:
        """Make a policy or model active if its version is newer; ('stored', previous),
        ('replayed', version) or ('stale', active version)."""
        reply = await self._fcall("payauth_config_put", [key],
                                  [version, content_hash, payload, now_ms,
                                   keys.CONFIG_CHANNEL, what])
        return reply[0].decode(), int(reply[1])

    async def active_config(self) -> tuple[bytes | None, bytes | None]:
        """The serialized active PolicyUpdate and LoadModelRequest (None where none)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hget(keys.ACTIVE_POLICY, "payload")
        pipe.hget(keys.ACTIVE_MODEL, "payload")
        policy, model = await pipe.execute()
        return policy, model

    async def active_policy_version(self) -> int:
        """The version of the active policy, 0 when none is."""
        return int(await self.client.hget(keys.ACTIVE_POLICY, "version") or 0)

    async def put_stored_model(self, model_id: str, version: int, payload: bytes) -> None:
        """Keep a model loaded without activating it."""
        await self.client.set(keys.stored_model(model_id, version), payload)

    # -- Reconciliation and settlement -------------------------------------

    async def account_ids(self) -> list[str]:
        """Every account id in the store (SCAN over every primary)."""
        ids = []
        async for key in self.client.scan_iter(match="acct:*", count=1000):
            ids.append(key.decode().split(":", 2)[2])
        return ids

    async def account_books(self, account_id: str) -> AccountBooks | None:
        """An account's stored amounts beside the sums of its ledger and of its holds.

        The account, its holds and its latest ledger id are read in one atomic Function
        call (reads in separate commands would race with the sweeper and with traffic, and
        report a difference that is not there); the append-only ledger is then summed up to
        that id in pages, so a long ledger never holds Redis."""
        p = keys.partition_of(account_id)
        reply = await self._fcall(
            "payauth_account_books",
            [keys.account(p, account_id), keys.ledger(p, account_id),
             keys.account_holds(p, account_id)],
            [keys.tag(p)])
        if not reply:
            return None
        balance, held, holds_held, last_id = reply
        sums, entries = await self.sum_stream(keys.ledger(p, account_id), last_id,
                                              (b"balance", b"held"))
        return AccountBooks(account_id=account_id, balance=int(balance), held=int(held),
                            ledger_balance=sums[b"balance"], ledger_held=sums[b"held"],
                            holds_held=int(holds_held), entries=entries)

    async def sum_stream(self, key: str, last_id: bytes, fields: tuple[bytes, ...],
                         page: int = 200) -> tuple[dict[bytes, int], int]:
        """The sums of integer `fields` over a stream's entries up to `last_id`, and their
        count, read in pages of `page` entries (a page of 200 ledger entries keeps Redis
        about 0.2 ms, what one authorization commit does)."""
        sums = dict.fromkeys(fields, 0)
        entries, start = 0, b"-"
        while True:
            rows = await self.client.xrange(key, start, last_id, count=page)
            for _, row in rows:
                for field in fields:
                    sums[field] += int(row[field])
            entries += len(rows)
            if len(rows) < page:
                return sums, entries
            start = b"(" + rows[-1][0]

    async def settlement_rows(self, day: str) -> list[dict[str, str]]:
        """The captures and refunds of one UTC day (YYYYMMDD), from every partition."""
        pipe = self.client.pipeline(transaction=False)
        for p in range(keys.PARTITIONS):
            pipe.lrange(keys.settlement(p, day), 0, -1)
        return [json.loads(row) for rows in await pipe.execute() for row in rows]

    # -- Start-up checks ----------------------------------------------------

    async def check_meta(self, pan_key_check: str) -> None:
        """Record the partition count and PAN key check on first start; refuse a mismatch."""
        await self.client.hsetnx(keys.META, "partitions", keys.PARTITIONS)
        await self.client.hsetnx(keys.META, "pan_key_check", pan_key_check)
        partitions, stored_check = await self.client.hmget(keys.META,
                                                           ("partitions", "pan_key_check"))
        if int(partitions) != keys.PARTITIONS:
            raise RuntimeError(
                f"this Redis holds data laid out in {int(partitions)} partitions; this server "
                f"uses {keys.PARTITIONS}"
            )
        if stored_check.decode() != pan_key_check:
            raise RuntimeError(
                "this Redis holds card data hashed with another PAN key: start the server "
                "with the key file it was created with (--pan-key-file)"
            )
