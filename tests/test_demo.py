"""The demo data set `make run` loads: loadable twice, and each card behaves as listed."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from payauth.clients import AcquirerClient
from payauth.server.demo import CARDS, load_demo
from payauth.v1 import common_pb2
from tests.conftest import authorize_request
from tests.servers import PayauthProcess


@pytest.fixture(scope="module")
def payauth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PayauthProcess]:
    """A server of its own (embedded Redis): the demo policy must not reach other tests."""
    server = PayauthProcess(tmp_path_factory.mktemp("demo"), workers=2).start()
    yield server
    assert server.stop() == 0


@pytest.fixture(scope="module")
def demo(payauth: PayauthProcess) -> str:
    """The demo loaded once; what load_demo printed."""
    return load_demo(payauth.target)


@pytest.fixture
def acquirer(payauth: PayauthProcess) -> Iterator[AcquirerClient]:
    with AcquirerClient(payauth.target, timeout=10) as client:
        yield client

EXPECTED = {
    "demo-card-usd": "00", "demo-card-brl": "00", "demo-card-jpy": "00", "demo-card-bhd": "00",
    "demo-card-lost": "41", "demo-card-stolen": "43", "demo-card-blocked": "62",
    "demo-card-expired": "54", "demo-card-closed-account": "46",
}
CURRENCY = {"demo-card-brl": "BRL", "demo-card-jpy": "JPY", "demo-card-bhd": "BHD"}


def test_demo_loads_twice_and_says_how_to_call(payauth: PayauthProcess, demo: str) -> None:
    assert load_demo(payauth.target) == demo
    assert "payauth.v1.Authorizer/Authorize" in demo
    assert "4111111111111111" not in demo


def test_demo_policy_and_model_decide(demo: str, acquirer: AcquirerClient) -> None:
    step_up = acquirer.authorize(authorize_request(card_token="demo-card-usd",
                                                   amount_minor=60_000))
    assert (step_up.iso_response_code, step_up.reasons[0].rule_id) == ("1A", "sca-above-500")
    atm = acquirer.authorize(authorize_request(card_token="demo-card-usd", amount_minor=150_000,
                                               channel=common_pb2.CHANNEL_ATM))
    assert atm.iso_response_code == "61"
    small = acquirer.authorize(authorize_request(card_token="demo-card-usd", amount_minor=100))
    assert small.iso_response_code == "00" and 0 < small.risk_score < 0.5


@pytest.mark.parametrize("token", [c[0] for c in CARDS])
def test_demo_cards(demo: str, acquirer: AcquirerClient, token: str) -> None:
    response = acquirer.authorize(authorize_request(
        card_token=token, amount_minor=100, currency=CURRENCY.get(token, "USD")))
    assert response.iso_response_code == EXPECTED[token]


def test_demo_member_earns_points(demo: str, payauth: PayauthProcess,
                                  acquirer: AcquirerClient) -> None:
    from payauth.clients import LoyaltyClient

    with LoyaltyClient(payauth.target, timeout=10) as loyalty:
        before = loyalty.get_balance(program_id="demo-rewards", member_id="demo-member").balance
        got = acquirer.authorize(authorize_request(card_token="demo-card-usd", amount_minor=2500,
                                                   mcc="5999"))
        assert got.iso_response_code == "00" and got.points_earned >= 25
        after = loyalty.get_balance(program_id="demo-rewards", member_id="demo-member").balance
        assert after.pending_points == before.pending_points + got.points_earned
