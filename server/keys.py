"""The Redis key layout: every key payauth writes, and the hash tag it lives under.

All keys of one account share the hash tag of its partition, `{pN}`, so the
authorization commit and every lifecycle operation (account, hold, ledger,
idempotency record, event stream) is one atomic Function call on a single
Redis and on Redis Cluster alike. The Functions (functions/payauth.lua) name
the keys of a partition exactly as this module does. Keys found
by something other than the account (a card by its token, a PAN index by its
hash, a request_id claim) live in the partition of that identifier.

The number of partitions is fixed for the life of the data: it is recorded in
`META` on first start, and a server configured otherwise refuses to start.
"""

from __future__ import annotations

import zlib

PARTITIONS = 1024
META = "payauth:meta"


def partition_of(identifier: str) -> int:
    """The partition an identifier belongs to: CRC-32 of its UTF-8 bytes, modulo PARTITIONS."""
    return zlib.crc32(identifier.encode()) % PARTITIONS


def tag(partition: int) -> str:
    """The Redis Cluster hash tag of a partition."""
    return f"{{p{partition}}}"


def account(partition: int, account_id: str) -> str:
    """HASH: kind, status, currency, balance, limit, held, created_ms, updated_ms."""
    return f"acct:{{p{partition}}}:{account_id}"


def account_holds(partition: int, account_id: str) -> str:
    """ZSET: the account's active authorization ids, scored by expiry (ms)."""
    return f"holds:{{p{partition}}}:{account_id}"


def hold(partition: int, authorization_id: str) -> str:
    """HASH: one authorization hold (account, amount, request, merchant, times, status)."""
    return f"hold:{{p{partition}}}:{authorization_id}"


def expiries(partition: int) -> str:
    """ZSET: every active hold of the partition, scored by expiry (ms), for the sweeper."""
    return f"expiries:{{p{partition}}}"


def idempotency(partition: int, request_id: str) -> str:
    """HASH: the stored answer to an authorization, written by its commit."""
    return f"idem:{{p{partition}}}:{request_id}"


def events(partition: int) -> str:
    """STREAM: the partition's decision and lifecycle events."""
    return f"events:{{p{partition}}}"


def ledger(partition: int, account_id: str) -> str:
    """STREAM: every movement of the account's money (kind, amount, balance and held
    deltas, authorization, request, time), appended by the Function that moved it."""
    return f"ledger:{{p{partition}}}:{account_id}"


def early_reversal(partition: int, request_id: str) -> str:
    """STRING: a reversal arrived for this authorization request_id before its answer
    was committed; the commit declines it."""
    return f"revearly:{{p{partition}}}:{request_id}"


def settlement(partition: int, day: str) -> str:
    """LIST: the partition's captures and refunds of one UTC day (YYYYMMDD), as JSON rows."""
    return f"settle:{{p{partition}}}:{day}"


def card(card_token: str) -> str:
    """HASH: a card (account, status with its reason and time, expiry, PAN hash) in its
    token's partition."""
    return f"card:{{p{partition_of(card_token)}}}:{card_token}"


def pan_index(pan_hash: str) -> str:
    """STRING: the token of the card a PAN hash belongs to."""
    return f"pan:{{p{partition_of(pan_hash)}}}:{pan_hash}"


def request_claim(request_id: str) -> str:
    """HASH: binds a request_id to one request body (fingerprint); holds the answer when
    no account partition took it (unknown card)."""
    return f"req:{{p{partition_of(request_id)}}}:{request_id}"


ACTIVE_POLICY = "{config}:policy"
"""HASH: the active issuer policy (version, content hash, serialized PolicyUpdate, time)."""

ACTIVE_MODEL = "{config}:model"
"""HASH: the active scoring model (version, sha256, serialized LoadModelRequest, time)."""

CONFIG_CHANNEL = "payauth:config"
"""Pub/sub channel on which a new active policy or model is announced to every worker."""


def stored_model(model_id: str, version: int) -> str:
    """STRING: a scoring model loaded without being made active (serialized LoadModelRequest)."""
    return f"{{config}}:model:{model_id}:{version}"


def partition_from_authorization_id(authorization_id: str) -> int:
    """The partition encoded in an authorization id (`A<partition>-<random>`)."""
    head, _, _ = authorization_id.partition("-")
    if not head.startswith("A") or not head[1:].isdigit():
        raise ValueError("not a payauth authorization id")
    return int(head[1:])


# Loyalty (functions/loyalty.lua names the rest of a member's keys the same way). A member
# lives in one partition: its linked account's, or its member id's when it has no account.

def loyalty_program(program_id: str) -> str:
    """HASH: a loyalty program's versions (field "v<N>": serialized LoyaltyProgram), the
    latest version and its content hash."""
    return f"{{config}}:lprog:{program_id}"


LOYALTY_PROGRAMS = "{config}:lprograms"
"""SET: the id of every loyalty program ever stored."""


def program_figures(partition: int, program_id: str) -> str:
    """HASH: the partition's share of a program's figures, "<variant>:<figure>" -> count
    (variant "A", "B", or "-" without an A/B test)."""
    return f"lfig:{{p{partition}}}:{program_id}"


def active_members(partition: int, program_id: str, variant: str) -> str:
    """ZSET: the partition's members of a program variant, by their latest entry (ms)."""
    return f"lact:{{p{partition}}}:{program_id}:{variant}"


def member(partition: int, program_id: str, member_id: str) -> str:
    """HASH: a member's balance, lifetime totals, ledger sequence, state and profile."""
    return f"lmem:{{p{partition}}}:{program_id}:{member_id}"


def member_ledger(partition: int, program_id: str, member_id: str) -> str:
    """STREAM: the member's points ledger, append-only."""
    return f"lled:{{p{partition}}}:{program_id}:{member_id}"


def member_index(program_id: str, member_id: str) -> str:
    """STRING: the partition a member lives in, in the partition of its member id."""
    return f"lidx:{{p{partition_of(member_id)}}}:{program_id}:{member_id}"


def point_lots_due(partition: int) -> str:
    """ZSET: the partition's members that hold expiring lots ("program\\tmember"), scored by
    their earliest expiry (ms), for the sweeper."""
    return f"lexp:{{p{partition}}}"
