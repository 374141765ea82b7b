"""Authorize end to end through a real server on a real Redis: statuses, funds,
partial approvals, currencies of every exponent, idempotency."""

from __future__ import annotations

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from payauth.clients import AcquirerClient, AlreadyExistsError, IssuerClient
from payauth.server import keys
from payauth.server.authorize import decision_event_bytes
from payauth.server.card_routes import CardRoute
from payauth.server.pan import PanHasher, load_or_create_key
from payauth.v1 import authorizer_pb2, common_pb2, events_pb2, issuer_pb2
from tests.conftest import authorize_request, issue_card, open_account, random_pan, unique
from tests.servers import PayauthProcess

APPROVE, DECLINE = common_pb2.DECISION_APPROVE, common_pb2.DECISION_DECLINE


def available(issuer: IssuerClient, account_id: str) -> int:
    return issuer.get_account(account_id=account_id).account.available_minor


def test_approval_places_a_hold(issuer: IssuerClient, acquirer: AcquirerClient) -> None:
    account = open_account(issuer, 10_000)
    card = issue_card(issuer, account)
    response = acquirer.authorize(authorize_request(card_token=card, amount_minor=2_500))
    assert response.decision == APPROVE
    assert response.iso_response_code == "00"
    assert response.approved_amount_minor == 2_500
    assert response.authorization_id
    assert not response.replayed
    got = issuer.get_account(account_id=account)
    assert (got.account.balance_minor, got.account.held_minor,
            got.account.available_minor) == (10_000, 2_500, 7_500)
    assert [(h.authorization_id, h.amount_minor) for h in got.holds] == [
        (response.authorization_id, 2_500)]


def test_authorize_by_pan(issuer: IssuerClient, acquirer: AcquirerClient) -> None:
    account = open_account(issuer, 10_000)
    pan = random_pan()
    issue_card(issuer, account, pan=pan)
    response = acquirer.authorize(authorize_request(pan=pan, amount_minor=100))
    assert response.iso_response_code == "00"
    assert pan not in str(response)


def test_insufficient_funds_is_51(issuer: IssuerClient, acquirer: AcquirerClient) -> None:
    account = open_account(issuer, 999)
    card = issue_card(issuer, account)
    response = acquirer.authorize(authorize_request(card_token=card, amount_minor=1_000))
    assert (response.decision, response.iso_response_code) == (DECLINE, "51")
    assert response.approved_amount_minor == 0
    assert not response.authorization_id
    assert available(issuer, account) == 999


def test_partial_approval_is_10(issuer: IssuerClient, acquirer: AcquirerClient) -> None:
    account = open_account(issuer, 700)
    card = issue_card(issuer, account)
    response = acquirer.authorize(authorize_request(card_token=card, amount_minor=1_000,
                                                    partial_ok=True))
    assert (response.decision, response.iso_response_code) == (APPROVE, "10")
    assert response.approved_amount_minor == 700
    assert available(issuer, account) == 0
    # Nothing left: a further partial-ok request is declined, not approved for zero.
    again = acquirer.authorize(authorize_request(card_token=card, amount_minor=1,
                                                 partial_ok=True))
    assert again.iso_response_code == "51"


def test_credit_line_draws_on_limit(issuer: IssuerClient, acquirer: AcquirerClient) -> None:
    account = open_account(issuer, balance=40_000, kind=common_pb2.ACCOUNT_KIND_CREDIT,
                           limit=50_000)
    card = issue_card(issuer, account)
    assert acquirer.authorize(authorize_request(card_token=card, amount_minor=10_001)
                              ).iso_response_code == "51"
    assert acquirer.authorize(authorize_request(card_token=card, amount_minor=10_000)
                              ).iso_response_code == "00"
    assert available(issuer, account) == 0


@pytest.mark.parametrize(("currency", "balance", "amount"), [
    ("JPY", 12_345, 12_345),     # exponent 0: yen
    ("USD", 1_234_567, 1_234_567),  # exponent 2: cents
    ("BHD", 1_234_567, 1_234_567),  # exponent 3: fils
])
def test_currencies_of_every_exponent(issuer: IssuerClient, acquirer: AcquirerClient,
                                      currency: str, balance: int, amount: int) -> None:
    account = open_account(issuer, balance, currency=currency)
    card = issue_card(issuer, account)
    response = acquirer.authorize(authorize_request(card_token=card, amount_minor=amount,
                                                    currency=currency))
    assert response.iso_response_code == "00"
    assert (response.approved_amount_minor, response.currency) == (amount, currency)
    assert available(issuer, account) == 0
    over = acquirer.authorize(authorize_request(card_token=card, amount_minor=1,
                                                currency=currency))
    assert over.iso_response_code == "51"


def test_purchase_in_another_currency_is_declined(issuer: IssuerClient,
                                                  acquirer: AcquirerClient) -> None:
    account = open_account(issuer, 10_000, currency="EUR")
    card = issue_card(issuer, account)
    response = acquirer.authorize(authorize_request(card_token=card, currency="USD"))
    assert (response.decision, response.iso_response_code) == (DECLINE, "57")
    assert available(issuer, account) == 10_000


def test_unknown_card_is_14(acquirer: AcquirerClient) -> None:
    by_token = acquirer.authorize(authorize_request(card_token=unique("nocard")))
    by_pan = acquirer.authorize(authorize_request(pan=random_pan()))
    for response in (by_token, by_pan):
        assert (response.decision, response.iso_response_code) == (DECLINE, "14")


@pytest.mark.parametrize(("status", "code"), [
    (common_pb2.CARD_STATUS_LOST, "41"),
    (common_pb2.CARD_STATUS_STOLEN, "43"),
    (common_pb2.CARD_STATUS_EXPIRED, "54"),
    (common_pb2.CARD_STATUS_BLOCKED, "62"),
])
def test_card_status_declines(issuer: IssuerClient, acquirer: AcquirerClient, status: int,
                              code: str) -> None:
    account = open_account(issuer, 10_000)
    card = issue_card(issuer, account)
    assert acquirer.authorize(authorize_request(card_token=card)).iso_response_code == "00"
    issuer.set_card_status(card_token=card, status=status, reason="test")
    response = acquirer.authorize(authorize_request(card_token=card))
    assert (response.decision, response.iso_response_code) == (DECLINE, code)
    assert response.reasons[0].rule_id == "card.status"
    assert available(issuer, account) == 9_000


def test_card_past_its_printed_expiry_is_54(issuer: IssuerClient,
                                            acquirer: AcquirerClient) -> None:
    account = open_account(issuer, 10_000)
    card = issue_card(issuer, account, expiry=(2020, 1))
    assert acquirer.authorize(authorize_request(card_token=card)).iso_response_code == "54"


@pytest.mark.parametrize(("status", "code"), [
    (common_pb2.ACCOUNT_STATUS_CLOSED, "46"),
    (common_pb2.ACCOUNT_STATUS_FROZEN, "62"),
])
def test_account_status_declines(issuer: IssuerClient, acquirer: AcquirerClient, status: int,
                                 code: str) -> None:
    account = open_account(issuer, 10_000, status=status)
    card = issue_card(issuer, account)
    response = acquirer.authorize(authorize_request(card_token=card))
    assert (response.decision, response.iso_response_code) == (DECLINE, code)
    assert available(issuer, account) == 10_000


def test_replay_returns_the_first_answer(issuer: IssuerClient,
                                         acquirer: AcquirerClient) -> None:
    account = open_account(issuer, 1_500)
    card = issue_card(issuer, account)
    request = authorize_request(card_token=card, amount_minor=1_000)
    first = acquirer.authorize(request)
    second = acquirer.authorize(request)
    assert second.replayed and not first.replayed
    second.replayed = False
    assert second == first
    assert available(issuer, account) == 500
    # A decline replays as the same decline even after the funds arrive.
    declined = authorize_request(card_token=card, amount_minor=1_000)
    assert acquirer.authorize(declined).iso_response_code == "51"
    issuer.upsert_account(issuer_pb2.UpsertAccountRequest(
        account_id=account, kind=common_pb2.ACCOUNT_KIND_DEBIT,
        status=common_pb2.ACCOUNT_STATUS_ACTIVE, currency="USD", balance_minor=100_000))
    replay = acquirer.authorize(declined)
    assert (replay.replayed, replay.iso_response_code) == (True, "51")


def test_unknown_card_answer_replays_after_the_card_appears(issuer: IssuerClient,
                                                            acquirer: AcquirerClient) -> None:
    account = open_account(issuer, 10_000)
    pan = random_pan()
    request = authorize_request(pan=pan)
    assert acquirer.authorize(request).iso_response_code == "14"
    issue_card(issuer, account, pan=pan)
    replay = acquirer.authorize(request)
    assert (replay.replayed, replay.iso_response_code) == (True, "14")
    assert available(issuer, account) == 10_000


def test_same_request_id_with_another_body_is_refused(issuer: IssuerClient,
                                                      acquirer: AcquirerClient) -> None:
    account = open_account(issuer, 10_000)
    card = issue_card(issuer, account)
    request = authorize_request(card_token=card, amount_minor=1_000)
    acquirer.authorize(request)
    changed = authorize_request(card_token=card, amount_minor=2_000,
                                request_id=request.request_id, timestamp=request.timestamp)
    with pytest.raises(AlreadyExistsError) as caught:
        acquirer.authorize(changed)
    assert [v.field for v in caught.value.field_violations] == ["request_id"]
    other_card = issue_card(issuer, account)
    with pytest.raises(AlreadyExistsError):
        acquirer.authorize(authorize_request(card_token=other_card,
                                             request_id=request.request_id))
    assert available(issuer, account) == 9_000


@pytest.mark.parametrize("by_pan", [False, True], ids=["token", "pan"])
def test_card_moved_to_another_account_is_followed(issuer: IssuerClient,
                                                   acquirer: AcquirerClient,
                                                   by_pan: bool) -> None:
    """By token (the card names its account) and by PAN (so does the PAN index)."""
    first, second = open_account(issuer, 1_000), open_account(issuer, 5_000)
    pan = random_pan() if by_pan else ""
    card = issue_card(issuer, first, pan=pan)
    reference = {"pan": pan} if by_pan else {"card_token": card}
    assert acquirer.authorize(authorize_request(**reference, amount_minor=1_000)
                              ).iso_response_code == "00"
    issuer.upsert_card(issuer_pb2.UpsertCardRequest(
        card_token=card, account_id=second, status=common_pb2.CARD_STATUS_ACTIVE,
        expiry_year=2099, expiry_month=12))
    # Both workers may remember the old account; every request must reach the new one.
    for _ in range(4):
        assert acquirer.authorize(authorize_request(**reference, amount_minor=1_000)
                                  ).iso_response_code == "00"
    assert available(issuer, second) == 1_000


def test_pan_index_entries_naming_the_card_alone_still_route(
        payauth: PayauthProcess, redis_client: redis.Redis, issuer: IssuerClient,
        acquirer: AcquirerClient) -> None:
    """An index entry written before it carried the account ("<token>") is followed
    through the card; one naming the wrong account ("<token> <old account>", a card moved
    while its index was being rewritten) is corrected by the card."""
    hasher = PanHasher(load_or_create_key(payauth.data_dir / "pan.key", create=False))
    for entry in ("{token}", "{token} acct-that-is-not-this-cards"):
        account = open_account(issuer, 5_000)
        pan = random_pan()
        token = issue_card(issuer, account, pan=pan)
        index = keys.pan_index(hasher.hash(pan))
        assert redis_client.get(index) == f"{token} {account}".encode()
        redis_client.set(index, entry.format(token=token))
        for _ in range(3):  # a first sighting on either worker, then remembered routes
            assert acquirer.authorize(authorize_request(pan=pan, amount_minor=1_000)
                                      ).iso_response_code == "00"
        assert available(issuer, account) == 2_000


def test_points_payments_need_a_loyalty_member(issuer: IssuerClient,
                                               acquirer: AcquirerClient) -> None:
    account = open_account(issuer, 10_000)
    card = issue_card(issuer, account)
    got = acquirer.authorize(authorize_request(card_token=card,
                                               payment_method=common_pb2.PAYMENT_METHOD_POINTS))
    assert got.iso_response_code == "57" and got.reasons[0].rule_id == "loyalty.not_member"
    assert available(issuer, account) == 10_000


@settings(max_examples=200, deadline=None)
@given(request_id=st.text(max_size=64), merchant_id=st.text(max_size=64),
       amount=st.integers(0, 2**63 - 1), now_ms=st.integers(0, 253402300799999),
       reasons=st.lists(st.tuples(st.text(max_size=40), st.text(max_size=200)), max_size=8),
       risk_score=st.floats(0, 1), routed=st.booleans())
def test_decision_event_bytes_parse_as_the_event_holding_its_response(
        request_id: str, merchant_id: str, amount: int, now_ms: int,
        reasons: list[tuple[str, str]], risk_score: float, routed: bool) -> None:
    request = authorizer_pb2.AuthorizeRequest(
        request_id=request_id, merchant_id=merchant_id, mcc="5411", amount_minor=amount,
        currency="EUR", channel=common_pb2.CHANNEL_ECOM)
    response = authorizer_pb2.AuthorizeResponse(request_id=request_id, currency="EUR",
                                                risk_score=risk_score)
    for rule_id, text in reasons:
        response.reasons.add(rule_id=rule_id, text=text)
    route = CardRoute("tok-1", "acct-1") if routed else None
    expected = events_pb2.DecisionEvent(
        partition=17, kind=events_pb2.EVENT_KIND_AUTHORIZATION, request_id=request_id,
        account_id="acct-1" if routed else "", card_token="tok-1" if routed else "",
        merchant_id=merchant_id, mcc="5411", amount_minor=amount, currency="EUR",
        channel=common_pb2.CHANNEL_ECOM, response=response)
    expected.occurred_at.FromMilliseconds(now_ms)
    event = decision_event_bytes(request, response.SerializeToString(), route, 17, now_ms)
    assert events_pb2.DecisionEvent.FromString(event) == expected
