"""The demo data set `make run` loads: loadable twice, and each card behaves as listed."""

from __future__ import annotations

import pytest

from payauth.clients import AcquirerClient
from payauth.server.demo import CARDS, load_demo
from tests.conftest import authorize_request
from tests.servers import PayauthProcess

EXPECTED = {
    "demo-card-usd": "00", "demo-card-brl": "00", "demo-card-jpy": "00", "demo-card-bhd": "00",
    "demo-card-lost": "41", "demo-card-stolen": "43", "demo-card-blocked": "62",
    "demo-card-expired": "54", "demo-card-closed-account": "46",
}
CURRENCY = {"demo-card-brl": "BRL", "demo-card-jpy": "JPY", "demo-card-bhd": "BHD"}


def test_demo_loads_twice_and_says_how_to_call(payauth: PayauthProcess) -> None:
    first = load_demo(payauth.target)
    assert load_demo(payauth.target) == first
    assert "payauth.v1.Authorizer/Authorize" in first
    assert "4111111111111111" not in first


@pytest.mark.parametrize("token", [c[0] for c in CARDS])
def test_demo_cards(payauth: PayauthProcess, acquirer: AcquirerClient, token: str) -> None:
    load_demo(payauth.target)
    response = acquirer.authorize(authorize_request(
        card_token=token, amount_minor=100, currency=CURRENCY.get(token, "USD")))
    assert response.iso_response_code == EXPECTED[token]
