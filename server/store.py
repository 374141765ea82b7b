"""Redis access for payauth: the reads and the atomic commits, nothing else.

The store speaks in records (accounts, cards, stored answers) and in proto enum
values; how they are laid out in Redis (`keys`) and which Function commits
them (`functions/payauth.lua`) stays here. Authorize costs two round trips in
the steady state: `read_authorization` (one pipeline) and `commit_authorization`
(one Function call on the account's partition).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib.resources import files

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from payauth.server import keys
from payauth.v1 import common_pb2

log = logging.getLogger(__name__)

LIBRARY_NAME = "payauth"
LIBRARY_CODE = (files("payauth.server.functions") / "payauth.lua").read_text()

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


@dataclass(frozen=True, slots=True)
class AccountRecord:
    """An account as stored, amounts in minor units of `currency`."""

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


@dataclass(frozen=True, slots=True)
class CardRecord:
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


@dataclass(frozen=True, slots=True)
class StoredAnswer:
    """What a commit decided: enough to rebuild the response it sent."""

    outcome: str
    approved: int
    authorization_id: str
    decided_ms: int
    base: bytes


@dataclass(frozen=True, slots=True)
class CommitResult:
    """The result of an authorization commit: a new decision, a replay or a conflict."""

    status: str  # 'new', 'replay' or 'conflict'
    answer: StoredAnswer | None


@dataclass(frozen=True, slots=True)
class AuthorizationSnapshot:
    """Everything the decision needs, read in one pipeline."""

    card: CardRecord | None
    account: AccountRecord | None
    stored: StoredAnswer | None  # the partition's idempotency record
    stored_fingerprint: str | None
    claim_fingerprint: str | None  # the request_id claim (set by this read when new)
    claim_answer: StoredAnswer | None  # an unrouted answer stored on the claim
    pan_token: str | None  # what the PAN index points to now (PAN requests)


def _s(value: bytes | None) -> str:
    return value.decode() if value is not None else ""


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
_IDEM_FIELDS = ("fp", "outcome", "approved", "auth_id", "decided_ms", "base")


def _answer(outcome: bytes, approved: bytes, auth_id: bytes, decided_ms: bytes,
            base: bytes) -> StoredAnswer:
    return StoredAnswer(
        outcome=outcome.decode(),
        approved=int(approved),
        authorization_id=auth_id.decode(),
        decided_ms=int(decided_ms),
        base=base,
    )


def _commit_result(reply: list[bytes]) -> CommitResult:
    status = reply[0].decode()
    if status == "conflict":
        return CommitResult("conflict", None)
    outcome, approved, auth_id, decided_ms = reply[1:5]
    base = reply[5] if status == "replay" else b""
    return CommitResult(status, _answer(outcome, approved, auth_id, decided_ms, base))


class Store:
    """payauth's state in Redis (a single server or a Redis Cluster)."""

    def __init__(self, client: aioredis.Redis | aioredis.RedisCluster, cluster: bool) -> None:
        self.client = client
        self.cluster = cluster

    @classmethod
    def connect(cls, url: str, cluster: bool, timeout_s: float) -> Store:
        """Open a connection pool to the Redis at `url` (redis://, rediss:// or unix://)."""
        if cluster:
            client = aioredis.RedisCluster.from_url(
                url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
            )
        else:
            client = aioredis.from_url(
                url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
            )
        return cls(client, cluster)

    async def close(self) -> None:
        """Close the connection pool."""
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

    async def _fcall(self, function: str, keys_: list[str], args: list[str | bytes | int]) -> list:
        try:
            return await self.client.fcall(function, len(keys_), *keys_, *args)
        except ResponseError as exc:
            # A Redis restarted without its data, or a new node, lacks the library.
            if "Function not found" not in str(exc):
                raise
            log.warning("Redis lacked the payauth Function library; loading it again")
            await self.load_library()
            return await self.client.fcall(function, len(keys_), *keys_, *args)

    # -- Authorization ----------------------------------------------------

    async def card_account(self, card_token: str) -> str | None:
        """The account a card draws on, or None for an unknown card."""
        value = await self.client.hget(keys.card(card_token), "account_id")
        return value.decode() if value is not None else None

    async def card_token_for_pan(self, pan_hash: str) -> str | None:
        """The token of the card registered for a PAN hash, or None."""
        value = await self.client.get(keys.pan_index(pan_hash))
        return value.decode() if value is not None else None

    async def read_authorization(
        self,
        card_token: str,
        account_id: str,
        request_id: str,
        fingerprint: str,
        claim_ttl_ms: int,
        pan_hash: str | None,
    ) -> AuthorizationSnapshot:
        """One pipeline: card, account, stored answer, request_id claim (set when new)."""
        partition = keys.partition_of(account_id)
        claim = keys.request_claim(request_id)
        pipe = self.client.pipeline(transaction=False)
        pipe.hmget(keys.card(card_token), _CARD_FIELDS)
        pipe.hmget(keys.account(partition, account_id), _ACCOUNT_FIELDS)
        pipe.hmget(keys.idempotency(partition, request_id), _IDEM_FIELDS)
        pipe.hsetnx(claim, "fp", fingerprint)
        pipe.pexpire(claim, claim_ttl_ms, nx=True)
        pipe.hmget(claim, ("fp", "base", "decided_ms"))
        if pan_hash is not None:
            pipe.get(keys.pan_index(pan_hash))
        replies = await pipe.execute()
        card_f, acct_f, idem_f, _, _, claim_f = replies[:6]
        stored = None
        if idem_f[0] is not None:
            stored = _answer(*idem_f[1:])
        claim_answer = None
        if claim_f[1] is not None:
            claim_answer = StoredAnswer("final", 0, "", int(claim_f[2]), claim_f[1])
        return AuthorizationSnapshot(
            card=_card(card_token, card_f),
            account=_account(account_id, acct_f),
            stored=stored,
            stored_fingerprint=_s(idem_f[0]) or None,
            claim_fingerprint=_s(claim_f[0]) or None,
            claim_answer=claim_answer,
            pan_token=_s(replies[6]) or None if pan_hash is not None else None,
        )

    async def commit_authorization(
        self,
        *,
        account_id: str,
        request_id: str,
        fingerprint: str,
        hold: bool,
        amount: int,
        partial_ok: bool,
        currency: str,
        merchant_id: str,
        now_ms: int,
        expires_ms: int,
        authorization_id: str,
        idempotency_ttl_ms: int,
        base: bytes,
        event: bytes,
    ) -> CommitResult:
        """The atomic commit: re-check funds, hold, store the answer, append the event."""
        p = keys.partition_of(account_id)
        reply = await self._fcall(
            "payauth_authorize_commit",
            [
                keys.account(p, account_id),
                keys.idempotency(p, request_id),
                keys.events(p),
                keys.account_holds(p, account_id),
                keys.hold(p, authorization_id),
                keys.expiries(p),
            ],
            [
                request_id, fingerprint, "hold" if hold else "final", amount,
                "1" if partial_ok else "0", now_ms, expires_ms, authorization_id,
                idempotency_ttl_ms, base, event, account_id, merchant_id, currency,
            ],
        )
        return _commit_result(reply)

    async def record_unrouted(
        self, *, request_id: str, fingerprint: str, now_ms: int, idempotency_ttl_ms: int,
        base: bytes, event: bytes,
    ) -> CommitResult:
        """Store the answer to a request that reached no account, with its event."""
        claim = keys.request_claim(request_id)
        reply = await self._fcall(
            "payauth_record_unrouted",
            [claim, keys.events(keys.partition_of(request_id))],
            [fingerprint, now_ms, idempotency_ttl_ms, base, event],
        )
        return _commit_result(reply)

    # -- Accounts and cards -----------------------------------------------

    async def upsert_account(
        self, *, account_id: str, kind: int, status: int, currency: str, balance: int,
        limit: int, now_ms: int,
    ) -> tuple[AccountRecord, bool]:
        """Create or update an account; return it and whether it was created."""
        key = keys.account(keys.partition_of(account_id), account_id)
        try:
            reply = await self._fcall(
                "payauth_upsert_account",
                [key],
                [_ACCOUNT_KINDS[kind], _ACCOUNT_STATUSES[status], currency, balance, limit,
                 now_ms],
            )
        except ResponseError as exc:
            if str(exc).startswith("IMMUTABLE "):
                raise ImmutableFieldError(str(exc).split()[1]) from exc
            raise
        record = _account(account_id, reply[1:])
        assert record is not None
        return record, reply[0] == b"created"

    async def get_account(self, account_id: str) -> tuple[AccountRecord, list[HoldRecord]] | None:
        """An account and its active holds (oldest first), or None."""
        p = keys.partition_of(account_id)
        pipe = self.client.pipeline(transaction=False)
        pipe.hmget(keys.account(p, account_id), _ACCOUNT_FIELDS)
        pipe.zrange(keys.account_holds(p, account_id), 0, -1)
        acct_f, hold_ids = await pipe.execute()
        record = _account(account_id, acct_f)
        if record is None:
            return None
        pipe = self.client.pipeline(transaction=False)
        for auth_id in hold_ids:
            pipe.hmget(keys.hold(p, auth_id.decode()),
                       ("request_id", "amount", "merchant_id", "created_ms", "expires_ms"))
        holds = [
            HoldRecord(auth_id.decode(), _s(f[0]), int(f[1]), _s(f[2]), int(f[3]), int(f[4]))
            for auth_id, f in zip(hold_ids, await pipe.execute() if hold_ids else [],
                                  strict=True)
            if f[1] is not None
        ]
        holds.sort(key=lambda h: h.created_ms)
        return record, holds

    async def account_exists(self, account_id: str) -> bool:
        """True when the account exists."""
        return bool(await self.client.exists(keys.account(keys.partition_of(account_id),
                                                          account_id)))

    async def get_card(self, card_token: str) -> CardRecord | None:
        """A card by its token, or None."""
        return _card(card_token, await self.client.hmget(keys.card(card_token), _CARD_FIELDS))

    async def put_card(self, card: CardRecord) -> None:
        """Write a card and, when it has a PAN hash, point the PAN index at it.

        The card is written first: a crash between the two writes leaves a card
        nobody finds by PAN yet, which the issuer's retry of the upsert repairs.
        """
        await self.client.hset(keys.card(card.card_token), mapping={
            "account_id": card.account_id,
            "status": _CARD_STATUSES[card.status],
            "exp_year": card.expiry_year,
            "exp_month": card.expiry_month,
            "pan_hash": card.pan_hash,
        })
        if card.pan_hash:
            await self.client.set(keys.pan_index(card.pan_hash), card.card_token)

    async def set_card_status(self, card_token: str, status: int, reason: str,
                              now_ms: int) -> None:
        """Change an existing card's status, keeping why and when for the audit trail."""
        await self.client.hset(keys.card(card_token), mapping={
            "status": _CARD_STATUSES[status], "status_reason": reason,
            "status_changed_ms": now_ms,
        })

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
