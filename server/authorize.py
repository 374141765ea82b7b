"""The Authorize pipeline (brief §4), as far as this version reaches:

validate -> idempotency -> card and account status -> risk score (the issuer's
tree model) -> issuer policy (CEL rules) -> funds check and atomic hold (or, for
an incremental authorization, the raise of an existing hold) -> loyalty redeem
and earn (same commit) -> ledger entry and decision event.

Two Redis round trips in the steady state: one pipelined read of everything
the decision needs (card, account, stored answer, request_id claim), then one
atomic commit (a Redis Function on the account's partition) that re-checks the
account and funds, places the hold, stores the answer and appends the event.
An account linked to a loyalty member has the member read in the same
pipeline (this worker remembers the link once seen; links never change), and
the commit earns and redeems its points. Hot lists, features and merchant
collaboration slot in between the read and the commit too; the commit already
carries a pre-built response and event, so they add fields, not round trips.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime

from payauth.server import keys
from payauth.server.card_routes import CardRoute, CardRoutes
from payauth.server.clock import Clock, system_clock
from payauth.server.config import Settings
from payauth.server.decision_core import CoreRegistry
from payauth.server.errors import AbortedError, AlreadyExistsError, InvalidArgumentError
from payauth.server.loyalty import LoyaltyEngine, authorization_plan
from payauth.server.loyalty_programs import Purchase
from payauth.server.loyalty_store import member_from_reply
from payauth.server.pan import PanHasher
from payauth.server.responses import (
    CARD_STATUS_DECLINES,
    apply_outcome,
    decline,
    early_reversal_decline,
    set_code,
)
from payauth.server.store import AuthorizationSnapshot, CommitResult, Store, StoredAnswer
from payauth.server.validation import check_authorize
from payauth.v1 import authorizer_pb2, common_pb2, events_pb2

# Accounts whose loyalty link this worker remembers, at most.
MAX_LINKS = 1_000_000


def _conflict() -> AlreadyExistsError:
    return AlreadyExistsError(
        "request_id was already used for a different request; a retry must repeat the "
        "original request unchanged",
        [("request_id", "already used for a different request")],
    )


def request_fingerprint(request: authorizer_pb2.AuthorizeRequest, pan_hash: str | None) -> str:
    """A digest of everything in the request but its request_id (the PAN as its hash)."""
    body = authorizer_pb2.AuthorizeRequest()
    body.CopyFrom(request)
    body.request_id = ""
    if pan_hash is not None:
        body.pan = pan_hash
    return hashlib.blake2b(body.SerializeToString(deterministic=True), digest_size=16).hexdigest()


def card_expired(expiry_year: int, expiry_month: int, now_s: float) -> bool:
    """True when the card's printed expiry month is over (valid through its last day)."""
    if not expiry_year:
        return False
    return _utc_month(now_s) > (expiry_year, expiry_month)


# The UTC month of the last call and the seconds it spans: every authorization asks.
_month_span: tuple[float, float, tuple[int, int]] = (0.0, 0.0, (0, 0))


def _utc_month(now_s: float) -> tuple[int, int]:
    """(year, month) of `now_s` in UTC."""
    global _month_span
    start, end, month = _month_span
    if start <= now_s < end:
        return month
    today = datetime.fromtimestamp(now_s, UTC)
    first = datetime(today.year, today.month, 1, tzinfo=UTC)
    following = datetime(today.year + today.month // 12, today.month % 12 + 1, 1, tzinfo=UTC)
    _month_span = (first.timestamp(), following.timestamp(), (today.year, today.month))
    return today.year, today.month


def new_authorization_id(partition: int) -> str:
    """An authorization id that names its partition, so lifecycle calls find the hold."""
    return f"A{partition}-{secrets.token_hex(8)}"


class AuthorizePipeline:
    """Decides authorization requests against the state in Redis."""

    def __init__(self, store: Store, pans: PanHasher, settings: Settings,
                 registry: CoreRegistry, clock: Clock = system_clock,
                 routes: CardRoutes | None = None,
                 loyalty: LoyaltyEngine | None = None) -> None:
        self._store = store
        self._loyalty = loyalty
        self._links: dict[str, tuple[str, str]] = {}  # account -> (program, member), fixed
        self._registry = registry
        self._pans = pans
        self._settings = settings
        self._clock = clock
        self._routes = routes or CardRoutes()
        self._idem_ttl_ms = settings.idempotency_ttl_s * 1000
        self._hold_rules = settings.hold_rules

    async def authorize(
        self, request: authorizer_pb2.AuthorizeRequest
    ) -> authorizer_pb2.AuthorizeResponse:
        """Decide one request; raise PayauthError for refusals that are not decisions."""
        now = self._clock()
        check_authorize(request, now, self._settings.max_clock_skew_future_s,
                        self._settings.max_clock_skew_past_s)
        if request.payment_method == common_pb2.PAYMENT_METHOD_POINTS and request.points_to_redeem:
            raise InvalidArgumentError([("points_to_redeem", "must be 0 when payment_method is "
                                         "POINTS: the whole amount is paid in points")])
        pan_hash = self._pans.hash(request.pan) if request.pan else None
        reference = f"pan:{pan_hash}" if pan_hash else f"tok:{request.card_token}"
        fingerprint = request_fingerprint(request, pan_hash)

        for attempt in range(2):
            route = self._routes.get(reference)
            if route is None:
                route = await self._look_up(request.card_token, pan_hash,
                                            trust_index=attempt == 0)
                if route is None:
                    return await self._unknown_card(request, fingerprint, now)
            link = self._links.get(route.account_id)
            snapshot = await self._store.read_authorization(
                route.card_token, route.account_id, request.request_id, fingerprint,
                self._idem_ttl_ms, pan_hash, link, self._qualifying_window(link, request, now),
            )
            if _route_is_stale(route, snapshot, pan_hash):
                self._routes.forget(reference)
                continue
            self._routes.remember(reference, route)
            return await self._decide(request, route, snapshot, fingerprint, now)
        raise AbortedError("the card was changed while it was being authorized; retry the request")

    def _qualifying_window(self, link: tuple[str, str] | None,
                           request: authorizer_pb2.AuthorizeRequest,
                           now: float) -> tuple[int, int] | None:
        """(day, days) over which the member's qualifying points are summed in the read,
        when this worker knows the member's program; None reads them by day."""
        if link is None or self._loyalty is None:
            return None
        versions = self._loyalty.programs.cached(link[0])
        if versions is None:
            return None
        at_ms = (request.timestamp.ToMilliseconds() if request.HasField("timestamp")
                 else int(now * 1000))
        program = versions.at(at_ms)
        return program.day_of(at_ms), program.qualification_days

    async def _look_up(self, card_token: str, pan_hash: str | None,
                       trust_index: bool = True) -> CardRoute | None:
        """Where a card's authorizations go, from Redis: one round trip (the card, or the
        PAN index, which names the account too), two for a PAN whose index entry predates
        the account in it, or when `trust_index` is off (the retry after a stale route: the
        card itself is the authority on its account)."""
        if pan_hash is not None:
            entry = await self._store.card_for_pan(pan_hash)
            if entry is None:
                return None
            card_token, account_id = entry
            if account_id is not None and trust_index:
                return CardRoute(card_token, account_id)
        account_id = await self._store.card_account(card_token)
        return CardRoute(card_token, account_id) if account_id else None

    async def _decide(self, request: authorizer_pb2.AuthorizeRequest, route: CardRoute,
                      snapshot: AuthorizationSnapshot, fingerprint: str,
                      now: float) -> authorizer_pb2.AuthorizeResponse:
        # The claim is unbound (None) until the commit binds it on a single Redis.
        if snapshot.claim_fingerprint not in (None, fingerprint) or (
                snapshot.stored_fingerprint is not None
                and snapshot.stored_fingerprint != fingerprint):
            raise _conflict()  # another body, or a capture/reversal/refund's request_id
        stored = snapshot.stored or snapshot.claim_answer
        if stored is not None:
            response = authorizer_pb2.AuthorizeResponse.FromString(stored.base)
            response.replayed = True
            return _with_points(apply_outcome(response, stored.outcome, stored.approved,
                                              stored.authorization_id, stored.decided_ms),
                                stored)

        response = authorizer_pb2.AuthorizeResponse(request_id=request.request_id,
                                                    currency=request.currency)
        card, account = snapshot.card, snapshot.account
        assert card is not None  # a stale route was retried above
        hold = False
        if snapshot.reversed_early:
            early_reversal_decline(response)
        elif card.status in CARD_STATUS_DECLINES:
            code, text = CARD_STATUS_DECLINES[card.status]
            decline(response, code, "card.status", text)
        elif card_expired(card.expiry_year, card.expiry_month, now):
            decline(response, common_pb2.RESPONSE_CODE_54_EXPIRED_CARD, "card.expiry",
                    "card is past its expiry date")
        elif account is None:
            decline(response, common_pb2.RESPONSE_CODE_14_INVALID_CARD_NUMBER,
                    "account.unknown", "card's account does not exist")
        else:
            # Risk: the model's score and the issuer's policy, in the core. Account status,
            # currency and funds are then decided by the commit, atomically.
            risk = self._registry.current.assess(request, card, account)
            response.risk_score = risk.score
            response.reasons.extend(risk.reasons)
            if risk.decision in (common_pb2.DECISION_DECLINE, common_pb2.DECISION_STEP_UP):
                set_code(response, risk.decision, risk.response_code)  # nothing is held
            else:
                hold = True  # approved by the policy, or not decided: funds decide

        partition = keys.partition_of(route.account_id)
        mode = "final"
        authorization_id = ""
        if hold and request.original_authorization_id:
            mode, authorization_id = "increment", request.original_authorization_id
        elif hold:
            mode = "points" if request.payment_method == common_pb2.PAYMENT_METHOD_POINTS \
                else "hold"
            authorization_id = new_authorization_id(partition)
        now_ms = int(now * 1000)
        amount, loyalty = request.amount_minor, ""
        if mode == "points" or (mode == "hold" and (snapshot.loyalty_link
                                                     or request.points_to_redeem)):
            amount, loyalty = await self._loyalty_part(request, route, snapshot, now_ms,
                                                       response)
            if not loyalty and (request.points_to_redeem or mode == "points"):
                mode, authorization_id = "final", ""  # declined by _loyalty_part
        elif request.points_to_redeem and hold:
            decline(response, common_pb2.RESPONSE_CODE_12_INVALID_TRANSACTION,
                    "loyalty.increment", "an incremental authorization cannot redeem points")
            mode, authorization_id = "final", ""
        base = response.SerializeToString()
        rules = self._hold_rules
        result = await self._store.commit_authorization(
            mode=mode,
            account_id=route.account_id,
            request_id=request.request_id,
            fingerprint=fingerprint,
            amount=amount,
            partial_ok=request.partial_ok,
            currency=request.currency,
            merchant_id=request.merchant_id,
            card_token=route.card_token,
            mcc=request.mcc,
            now_ms=now_ms,
            expires_ms=now_ms + rules.ttl_s(request.mcc) * 1000,
            max_expires_ms=now_ms + rules.max_lifetime_s(request.mcc) * 1000,
            tolerance_bps=rules.tolerance_bps(request.mcc),
            authorization_id=authorization_id,
            idempotency_ttl_ms=self._idem_ttl_ms,
            base=base,
            event=decision_event_bytes(request, base, route, partition, now_ms),
            loyalty=loyalty,
        )
        return _answer(response, result)

    async def _loyalty_part(self, request: authorizer_pb2.AuthorizeRequest, route: CardRoute,
                            snapshot: AuthorizationSnapshot, now_ms: int,
                            response: authorizer_pb2.AuthorizeResponse) -> tuple[int, str]:
        """(card amount to hold, loyalty JSON for the commit). Without a member, or
        when the points cannot pay, '' (and a points request declined in `response`).
        A purchase paid in points (payment_method POINTS) redeems the points its whole
        amount is worth, rounded up, and earns nothing."""
        paid_in_points = request.payment_method == common_pb2.PAYMENT_METHOD_POINTS
        link = snapshot.loyalty_link
        refusal = None
        if link is None or self._loyalty is None:
            refusal = ("loyalty.not_member", "the account is not a loyalty member")
        else:
            if len(self._links) >= MAX_LINKS:
                self._links.clear()  # links never change: forgetting them only costs a read
            self._links[route.account_id] = link
            if snapshot.member is not None:
                member = member_from_reply(keys.partition_of(route.account_id), *link,
                                           snapshot.member)
            else:
                member = await self._loyalty.store.read(keys.partition_of(route.account_id),
                                                        *link)
            if member is None:
                refusal = ("loyalty.not_member", "the account's member is not enrolled")
        if refusal is None:
            at_ms = (request.timestamp.ToMilliseconds() if request.HasField("timestamp")
                     else now_ms)
            versions = await self._loyalty.programs.get(link[0])
            if versions is None:
                refusal = ("loyalty.no_program", "the member's program does not exist")
        if refusal is not None:
            if request.points_to_redeem or paid_in_points:
                decline(response, common_pb2.RESPONSE_CODE_57_NOT_PERMITTED_TO_CARDHOLDER,
                        *refusal)
            return request.amount_minor, ""
        program = versions.at(at_ms)
        if paid_in_points:
            points = program.points_for_value(request.amount_minor, request.currency)
            if points is None:
                decline(response, common_pb2.RESPONSE_CODE_12_INVALID_TRANSACTION,
                        "loyalty.points_value",
                        "the program gives points no value in this currency")
                return request.amount_minor, ""
            return request.amount_minor, authorization_plan(program, member, at_ms, None,
                                                            points, 0)
        value = 0
        if request.points_to_redeem:
            value = program.value_of_points(request.points_to_redeem, request.currency)
            if value is None or value >= request.amount_minor:
                text = ("the program gives points no value in this currency" if value is None
                        else "the points cover the whole amount: pay with payment_method "
                             "POINTS")
                decline(response, common_pb2.RESPONSE_CODE_12_INVALID_TRANSACTION,
                        "loyalty.points_value", text)
                return request.amount_minor, ""
        card_amount = request.amount_minor - value
        purchase = Purchase(card_amount, request.currency, request.mcc, request.merchant_id,
                            request.merchant_country, request.channel, request.payment_method,
                            at_ms)
        return card_amount, authorization_plan(program, member, at_ms, purchase,
                                               request.points_to_redeem, value)

    async def _unknown_card(self, request: authorizer_pb2.AuthorizeRequest, fingerprint: str,
                            now: float) -> authorizer_pb2.AuthorizeResponse:
        response = decline(
            authorizer_pb2.AuthorizeResponse(request_id=request.request_id,
                                             currency=request.currency),
            common_pb2.RESPONSE_CODE_14_INVALID_CARD_NUMBER, "card.unknown",
            "card is not known to the issuer",
        )
        now_ms = int(now * 1000)
        base = response.SerializeToString()
        result = await self._store.record_unrouted(
            request_id=request.request_id, fingerprint=fingerprint, now_ms=now_ms,
            idempotency_ttl_ms=self._idem_ttl_ms, base=base,
            event=decision_event_bytes(request, base, None,
                                       keys.partition_of(request.request_id), now_ms),
        )
        return _answer(response, result)


def _route_is_stale(route: CardRoute, snapshot: AuthorizationSnapshot,
                    pan_hash: str | None) -> bool:
    card = snapshot.card
    if card is None or card.account_id != route.account_id:
        return True
    return pan_hash is not None and (snapshot.pan_token != route.card_token
                                     or card.pan_hash != pan_hash)


def _answer(response: authorizer_pb2.AuthorizeResponse,
            result: CommitResult) -> authorizer_pb2.AuthorizeResponse:
    """The response a commit result stands for: ours, or the stored first answer."""
    if result.status == "conflict":
        raise _conflict()
    answer = result.answer
    assert answer is not None
    if result.status == "replay":
        response = authorizer_pb2.AuthorizeResponse.FromString(answer.base)
        response.replayed = True
    return _with_points(apply_outcome(response, answer.outcome, answer.approved,
                                      answer.authorization_id, answer.decided_ms), answer)


def _with_points(response: authorizer_pb2.AuthorizeResponse,
                 answer: StoredAnswer) -> authorizer_pb2.AuthorizeResponse:
    """Add the loyalty points the commit moved; the points' value is part of the
    approved amount (the card pays the rest)."""
    response.points_earned = answer.points_earned
    response.points_redeemed = answer.points_redeemed
    if answer.approved and answer.redeemed_value:
        response.approved_amount_minor = answer.approved + answer.redeemed_value
    return response


# The DecisionEvent's `response` field as it starts on the wire (field 12, length-delimited).
_RESPONSE_FIELD_TAG = bytes([events_pb2.DecisionEvent.RESPONSE_FIELD_NUMBER << 3 | 2])


def _varint(value: int) -> bytes:
    """`value` (>= 0) as a protobuf base-128 varint."""
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decision_event_bytes(request: authorizer_pb2.AuthorizeRequest, base: bytes,
                         route: CardRoute | None, partition: int, now_ms: int) -> bytes:
    """The serialized decision event as far as known before the commit (which adds the
    funds outcome), `base` being the serialized response in it.

    The response is appended to the event's other fields as its encoded field (protobuf
    parses fields in any order): setting it on a DecisionEvent copied the message and
    serialized it a second time, for every authorization."""
    event = events_pb2.DecisionEvent(
        partition=partition,
        kind=events_pb2.EVENT_KIND_AUTHORIZATION,
        request_id=request.request_id,
        account_id=route.account_id if route else "",
        card_token=route.card_token if route else "",
        merchant_id=request.merchant_id,
        mcc=request.mcc,
        amount_minor=request.amount_minor,
        currency=request.currency,
        channel=request.channel,
    )
    occurred_at = event.occurred_at
    occurred_at.seconds, millis = divmod(now_ms, 1000)
    occurred_at.nanos = millis * 1_000_000
    return event.SerializeToString() + _RESPONSE_FIELD_TAG + _varint(len(base)) + base
