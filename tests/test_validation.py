"""Every malformed request is refused with INVALID_ARGUMENT naming its field in a
google.rpc.BadRequest, and leaves Redis exactly as it was (DEBUG DIGEST)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import redis
from google.protobuf.timestamp_pb2 import Timestamp

from payauth.clients import AcquirerClient, InvalidArgumentError, IssuerClient
from payauth.v1 import authorizer_pb2, common_pb2, issuer_pb2
from tests.conftest import authorize_request, issue_card, open_account, random_pan


def _timestamp(delta: timedelta) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(datetime.now(UTC) + delta)
    return ts


def _without(field: str) -> authorizer_pb2.AuthorizeRequest:
    request = authorize_request(card_token="card-x")
    request.ClearField(field)
    return request


INVALID_AUTHORIZATIONS = {
    "missing request_id": (authorize_request(card_token="c", request_id=""), ["request_id"]),
    "request_id with spaces": (authorize_request(card_token="c", request_id="a b"),
                               ["request_id"]),
    "request_id too long": (authorize_request(card_token="c", request_id="r" * 65),
                            ["request_id"]),
    "neither pan nor token": (authorize_request(), ["pan"]),
    "both pan and token": (authorize_request(pan="4111111111111111", card_token="c"),
                           ["pan", "card_token"]),
    "pan fails Luhn": (authorize_request(pan="4111111111111112"), ["pan"]),
    "pan too short": (authorize_request(pan="42"), ["pan"]),
    "pan with letters": (authorize_request(pan="4111a11111111111"), ["pan"]),
    "oversized card_token": (authorize_request(card_token="t" * 65), ["card_token"]),
    "missing merchant": (authorize_request(card_token="c", merchant_id=""), ["merchant_id"]),
    "oversized merchant": (authorize_request(card_token="c", merchant_id="m" * 65),
                           ["merchant_id"]),
    "mcc not four digits": (authorize_request(card_token="c", mcc="541"), ["mcc"]),
    "unknown country": (authorize_request(card_token="c", merchant_country="XX"),
                        ["merchant_country"]),
    "zero amount": (authorize_request(card_token="c", amount_minor=0), ["amount_minor"]),
    "negative amount": (authorize_request(card_token="c", amount_minor=-5), ["amount_minor"]),
    "amount over the cap": (authorize_request(card_token="c", amount_minor=10**15 + 1),
                            ["amount_minor"]),
    "unknown currency": (authorize_request(card_token="c", currency="ABC"), ["currency"]),
    "currency without minor unit": (authorize_request(card_token="c", currency="XAU"),
                                    ["currency"]),
    "missing currency": (authorize_request(card_token="c", currency=""), ["currency"]),
    "missing channel": (_without("channel"), ["channel"]),
    "unknown channel": (authorize_request(card_token="c", channel=99), ["channel"]),
    "missing payment method": (_without("payment_method"), ["payment_method"]),
    "unknown payment method": (authorize_request(card_token="c", payment_method=42),
                               ["payment_method"]),
    "missing three_ds": (_without("three_ds"), ["three_ds"]),
    "oversized device id": (authorize_request(card_token="c", device_id="d" * 129),
                            ["device_id"]),
    "bad ip": (authorize_request(card_token="c", ip="999.1.1.1"), ["ip"]),
    "negative points": (authorize_request(card_token="c", points_to_redeem=-1),
                        ["points_to_redeem"]),
    "oversized terminal": (authorize_request(card_token="c", terminal_id="t" * 65),
                           ["terminal_id"]),
    "missing timestamp": (_without("timestamp"), ["timestamp"]),
    "timestamp far in the future": (
        authorize_request(card_token="c", timestamp=_timestamp(timedelta(hours=1))),
        ["timestamp"]),
    "timestamp far in the past": (
        authorize_request(card_token="c", timestamp=_timestamp(timedelta(days=3))),
        ["timestamp"]),
    "several at once": (authorize_request(card_token="c", mcc="x", amount_minor=0,
                                          currency="usd"),
                        ["mcc", "amount_minor", "currency"]),
}


def _digest(client: redis.Redis) -> bytes:
    return client.execute_command("DEBUG", "DIGEST")


@pytest.mark.parametrize("case", INVALID_AUTHORIZATIONS)
def test_invalid_authorization_is_refused_untouched(case: str, acquirer: AcquirerClient,
                                                    redis_client: redis.Redis) -> None:
    request, fields = INVALID_AUTHORIZATIONS[case]
    before = _digest(redis_client)
    with pytest.raises(InvalidArgumentError) as caught:
        acquirer.authorize(request)
    assert [v.field for v in caught.value.field_violations] == fields
    assert _digest(redis_client) == before
    for pan in (request.pan,):
        if pan:
            assert pan not in str(caught.value)


def test_invalid_request_on_a_real_card_touches_nothing(issuer: IssuerClient,
                                                        acquirer: AcquirerClient,
                                                        redis_client: redis.Redis) -> None:
    account = open_account(issuer, 10_000)
    pan = random_pan()
    issue_card(issuer, account, pan=pan)
    before = _digest(redis_client)
    with pytest.raises(InvalidArgumentError):
        acquirer.authorize(authorize_request(pan=pan, amount_minor=-1))
    assert _digest(redis_client) == before


INVALID_ISSUER_CALLS = {
    "account without id": ("upsert_account", issuer_pb2.UpsertAccountRequest(
        kind=common_pb2.ACCOUNT_KIND_DEBIT, status=common_pb2.ACCOUNT_STATUS_ACTIVE,
        currency="USD"), ["account_id"]),
    "account with negative balance": ("upsert_account", issuer_pb2.UpsertAccountRequest(
        account_id="a", kind=common_pb2.ACCOUNT_KIND_DEBIT,
        status=common_pb2.ACCOUNT_STATUS_ACTIVE, currency="USD", balance_minor=-1),
        ["balance_minor"]),
    "debit account with a limit": ("upsert_account", issuer_pb2.UpsertAccountRequest(
        account_id="a", kind=common_pb2.ACCOUNT_KIND_DEBIT,
        status=common_pb2.ACCOUNT_STATUS_ACTIVE, currency="USD", credit_limit_minor=5),
        ["credit_limit_minor"]),
    "account without kind, status, currency": ("upsert_account",
                                               issuer_pb2.UpsertAccountRequest(account_id="a"),
                                               ["kind", "status", "currency"]),
    "card with bad pan": ("upsert_card", issuer_pb2.UpsertCardRequest(
        pan="1234567890123", account_id="a", status=common_pb2.CARD_STATUS_ACTIVE,
        expiry_year=2030, expiry_month=1), ["pan"]),
    "card with bad expiry": ("upsert_card", issuer_pb2.UpsertCardRequest(
        card_token="t", account_id="a", status=common_pb2.CARD_STATUS_ACTIVE,
        expiry_year=30, expiry_month=13), ["expiry_year", "expiry_month"]),
    "card status unspecified": ("set_card_status", issuer_pb2.SetCardStatusRequest(
        card_token="t"), ["status"]),
    "get account without id": ("get_account", issuer_pb2.GetAccountRequest(), ["account_id"]),
}


@pytest.mark.parametrize("case", INVALID_ISSUER_CALLS)
def test_invalid_issuer_call_is_refused_untouched(case: str, issuer: IssuerClient,
                                                  redis_client: redis.Redis) -> None:
    method, request, fields = INVALID_ISSUER_CALLS[case]
    before = _digest(redis_client)
    with pytest.raises(InvalidArgumentError) as caught:
        getattr(issuer, method)(request)
    assert [v.field for v in caught.value.field_violations] == fields
    assert _digest(redis_client) == before


def test_ip_addresses_are_read_as_ipaddress_reads_them() -> None:
    """The IPv4 fast path accepts exactly what ipaddress accepts (leading zeros, octets
    above 255, non-ASCII digits, stray spaces all refused), on edge cases and generated
    strings."""
    import ipaddress
    import random

    from payauth.server.validation import is_ip_address

    def reference(text: str) -> bool:
        try:
            ipaddress.ip_address(text)
        except ValueError:
            return False
        return True

    rng = random.Random(5)
    cases = ["1.2.3.4", "0.0.0.0", "255.255.255.255", "256.1.1.1", "01.2.3.4", "1.2.3",
             "1.2.3.4.5", "1.2.3.04", "1.2.3.4 ", " 1.2.3.4", "1.2.3.\u0663", "1.2.3.4\n",
             "", "1..2.3", "::1", "fe80::1%eth0", "::ffff:1.2.3.4", "2001:db8::", "1.2.3.-1"]
    cases += ["".join(rng.choice("0123456789.:af\u0663 ") for _ in range(rng.randrange(1, 16)))
              for _ in range(20_000)]
    cases += [".".join(str(rng.randrange(0, 300)).zfill(rng.choice((1, 1, 2, 3)))
                       for _ in range(rng.choice((3, 4, 4, 5)))) for _ in range(20_000)]
    assert [c for c in cases if is_ip_address(c) != reference(c)] == []
