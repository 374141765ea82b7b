"""The life of an authorization after its approval: Capture, Reverse (including
timeout reversals that arrive before their authorization), Refund and
ExtendHold. Each call is one Function call on the authorization's partition
(functions/payauth.lua), idempotent by its own request_id, and refuses
without changing anything when the hold does not allow it.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime

from google.protobuf.message import Message

from payauth.server.clock import Clock, system_clock
from payauth.server.config import Settings
from payauth.server.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    NotFoundError,
    PayauthError,
)
from payauth.server.money import format_minor
from payauth.server.store import LifecycleReply, LifecycleResult, Store
from payauth.server.validation import (
    check_capture,
    check_extend_hold,
    check_refund,
    check_reverse,
)
from payauth.v1 import lifecycle_pb2

STATUSES = {
    "held": lifecycle_pb2.AUTHORIZATION_STATUS_HELD,
    "partially_captured": lifecycle_pb2.AUTHORIZATION_STATUS_PARTIALLY_CAPTURED,
    "captured": lifecycle_pb2.AUTHORIZATION_STATUS_CAPTURED,
    "reversed": lifecycle_pb2.AUTHORIZATION_STATUS_REVERSED,
    "expired": lifecycle_pb2.AUTHORIZATION_STATUS_EXPIRED,
    "partially_refunded": lifecycle_pb2.AUTHORIZATION_STATUS_PARTIALLY_REFUNDED,
    "refunded": lifecycle_pb2.AUTHORIZATION_STATUS_REFUNDED,
    "declined": lifecycle_pb2.AUTHORIZATION_STATUS_DECLINED,
    "reversed_before_authorization":
        lifecycle_pb2.AUTHORIZATION_STATUS_REVERSED_BEFORE_AUTHORIZATION,
}


def operation_fingerprint(operation: str, request: Message) -> str:
    """A digest of the operation and everything in its request but the request_id."""
    body = type(request)()
    body.CopyFrom(request)
    body.request_id = ""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(operation.encode())
    digest.update(body.SerializeToString(deterministic=True))
    return digest.hexdigest()


def settlement_day(now_s: float) -> str:
    """The UTC day a movement settles on, as YYYYMMDD."""
    return datetime.fromtimestamp(now_s, UTC).strftime("%Y%m%d")


def _refusal(reply: LifecycleReply, authorization_id: str, currency: str) -> PayauthError:
    """The error for a Function's refusal; the detail is the limit that was crossed."""
    if reply.status == "conflict":
        return AlreadyExistsError(
            "request_id was already used for a different request; a retry must repeat the "
            "original request unchanged", [("request_id", "already used for a different request")])
    reason, detail = reply.reason, reply.detail
    if reason == "not_found":
        return NotFoundError(f"authorization {authorization_id} does not exist")
    if reason == "currency_mismatch":
        return FailedPreconditionError(f"the authorization is in {detail}",
                                       [("currency", f"must be {detail}, the authorization's")])
    if reason in ("not_capturable", "not_reversible", "not_extendable"):
        return FailedPreconditionError(
            f"authorization {authorization_id} is {detail.upper()}: nothing is held any more")
    limits = {
        "over_capture": ("amount_minor", "at most {} may still be captured"),
        "over_reversal": ("amount_minor", "at most {} is held"),
        "over_refund": ("amount_minor", "at most {} may still be refunded"),
    }
    if reason in limits:
        field, text = limits[reason]
        description = text.format(format_minor(int(detail), currency))
        return FailedPreconditionError(description, [(field, description)])
    if reason == "points_whole":
        return FailedPreconditionError(
            f"authorization {authorization_id} was paid with loyalty points: it is captured "
            f"(final) and reversed whole, {format_minor(int(detail), currency or 'XXX')}"
            if currency else f"authorization {authorization_id} was paid with loyalty points: "
            "it is captured (final) and reversed whole")
    if reason in ("beyond_maximum", "earlier"):
        when = datetime.fromtimestamp(int(detail) / 1000, UTC).isoformat()
        text = ("must be at most the hold's maximum lifetime, " if reason == "beyond_maximum"
                else "must not be earlier than the current expiry, ") + when
        return FailedPreconditionError(f"expires_at {text}", [("expires_at", text)])
    return FailedPreconditionError(f"refused: {reason}")


def _result(reply: LifecycleReply, authorization_id: str, currency: str) -> LifecycleResult:
    if reply.result is None:
        raise _refusal(reply, authorization_id, currency)
    return reply.result


class Lifecycle:
    """Capture, Reverse, Refund and ExtendHold against the holds in Redis."""

    def __init__(self, store: Store, settings: Settings, clock: Clock = system_clock) -> None:
        self._store = store
        self._clock = clock
        self._ttl_ms = settings.idempotency_ttl_s * 1000

    async def capture(self, request: lifecycle_pb2.CaptureRequest
                      ) -> lifecycle_pb2.CaptureResponse:
        """Post all or part of a hold; a final capture releases the rest."""
        check_capture(request)
        now = self._clock()
        final = request.final_capture or (
            request.capture_sequence_count > 0
            and request.capture_sequence_number == request.capture_sequence_count)
        reply = await self._store.capture(
            authorization_id=request.authorization_id, request_id=request.request_id,
            fingerprint=operation_fingerprint("capture", request), amount=request.amount_minor,
            final=final, now_ms=int(now * 1000), idempotency_ttl_ms=self._ttl_ms,
            capture_id=f"C{secrets.token_hex(8)}", day=settlement_day(now),
            currency=request.currency)
        r = _result(reply, request.authorization_id, request.currency)
        response = lifecycle_pb2.CaptureResponse(
            request_id=request.request_id, authorization_id=r.authorization_id,
            capture_id=r.operation_id, status=STATUSES[r.status], captured_amount_minor=r.amount,
            total_captured_minor=r.captured, remaining_hold_minor=r.held,
            released_amount_minor=r.released, over_captured_minor=r.over, currency=r.currency,
            replayed=reply.status == "replay")
        response.captured_at.FromMilliseconds(r.at_ms)
        response.hold_expires_at.FromMilliseconds(r.expires_ms)
        return response

    async def reverse(self, request: lifecycle_pb2.ReverseRequest
                      ) -> lifecycle_pb2.ReverseResponse:
        """Reverse an uncaptured hold, by authorization id or by the original request_id
        (a timeout reversal, which may arrive before its authorization)."""
        check_reverse(request)
        now_ms = int(self._clock() * 1000)
        fingerprint = operation_fingerprint("reverse", request)
        if request.authorization_id:
            reply = await self._store.reverse(
                authorization_id=request.authorization_id, request_id=request.request_id,
                fingerprint=fingerprint, amount=request.amount_minor, now_ms=now_ms,
                idempotency_ttl_ms=self._ttl_ms, currency=request.currency)
        else:
            reply = await self._store.reverse_by_request(
                original_request_id=request.original_request_id,
                request_id=request.request_id, fingerprint=fingerprint,
                amount=request.amount_minor, now_ms=now_ms, idempotency_ttl_ms=self._ttl_ms)
        r = _result(reply, request.authorization_id or request.original_request_id,
                    request.currency)
        response = lifecycle_pb2.ReverseResponse(
            request_id=request.request_id, authorization_id=r.authorization_id,
            original_request_id=request.original_request_id, status=STATUSES[r.status],
            authorization_found=r.found, reversed_amount_minor=r.amount,
            total_reversed_minor=r.reversed, remaining_hold_minor=r.held,
            total_captured_minor=r.captured, currency=r.currency or request.currency,
            replayed=reply.status == "replay")
        response.reversed_at.FromMilliseconds(r.at_ms)
        return response

    async def refund(self, request: lifecycle_pb2.RefundRequest) -> lifecycle_pb2.RefundResponse:
        """Credit back part or all of what was captured, never more in total."""
        check_refund(request)
        now = self._clock()
        reply = await self._store.refund(
            authorization_id=request.authorization_id, request_id=request.request_id,
            fingerprint=operation_fingerprint("refund", request), amount=request.amount_minor,
            now_ms=int(now * 1000), idempotency_ttl_ms=self._ttl_ms,
            refund_id=f"R{secrets.token_hex(8)}", day=settlement_day(now),
            currency=request.currency)
        r = _result(reply, request.authorization_id, request.currency)
        response = lifecycle_pb2.RefundResponse(
            request_id=request.request_id, authorization_id=r.authorization_id,
            refund_id=r.operation_id, status=STATUSES[r.status], refunded_amount_minor=r.amount,
            total_refunded_minor=r.refunded, total_captured_minor=r.captured,
            refundable_remaining_minor=r.captured - r.refunded, currency=r.currency,
            points_reversed=r.points, replayed=reply.status == "replay")
        response.refunded_at.FromMilliseconds(r.at_ms)
        return response

    async def extend_hold(self, request: lifecycle_pb2.ExtendHoldRequest
                          ) -> lifecycle_pb2.ExtendHoldResponse:
        """Move a hold's expiry later, within its maximum lifetime."""
        check_extend_hold(request)
        reply = await self._store.extend(
            authorization_id=request.authorization_id, request_id=request.request_id,
            fingerprint=operation_fingerprint("extend", request),
            expires_ms=request.expires_at.ToMilliseconds(), now_ms=int(self._clock() * 1000),
            idempotency_ttl_ms=self._ttl_ms)
        r = _result(reply, request.authorization_id, "")
        response = lifecycle_pb2.ExtendHoldResponse(
            request_id=request.request_id, authorization_id=r.authorization_id,
            status=STATUSES[r.status], remaining_hold_minor=r.held, currency=r.currency,
            replayed=reply.status == "replay")
        response.expires_at.FromMilliseconds(r.expires_ms)
        return response
