"""A hypothesis state machine drives random authorize / capture / reverse / refund /
expire / replay / restart sequences against a real server, and checks after every step
that the server agrees with a model of the books and that `reconcile` finds nothing."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    rule,
)

from payauth.clients import AcquirerClient, FailedPreconditionError, IssuerClient
from tests.conftest import (
    authorize_request,
    issue_card,
    open_account,
    reconcile_redis,
    unique,
)
from tests.servers import PayauthProcess, RedisProcess, ServerClock, wait_until
from tests.test_lifecycle import DAY

ACCOUNTS = 3
BALANCE = 50_000


@dataclass
class Hold:
    """The model of one approved authorization."""

    auth_id: str
    account: int
    approved: int
    held: int
    captured: int = 0
    refunded: int = 0
    reversed: int = 0


@pytest.fixture(scope="module")
def machine_env(tmp_path_factory: pytest.TempPathFactory):
    redis_server = RedisProcess(tmp_path_factory.mktemp("stateful-redis")).start()
    clock = ServerClock(tmp_path_factory.mktemp("stateful-clock") / "now")
    server = PayauthProcess(tmp_path_factory.mktemp("stateful"), redis_url=redis_server.url,
                            extra=("--clock-file", str(clock.path), "--sweep-interval", "0.05"))
    server.start()
    yield redis_server, clock, server
    server.stop()
    redis_server.stop()


class LifecycleMachine(RuleBasedStateMachine):
    """Random lifecycle traffic on a few accounts, checked against a model."""

    env: tuple[RedisProcess, ServerClock, PayauthProcess]
    holds = Bundle("holds")

    @initialize()
    def open_accounts(self) -> None:
        self.redis, self.clock, self.server = self.env
        self.issuer = IssuerClient(self.server.target, timeout=10, max_attempts=5)
        self.acquirer = AcquirerClient(self.server.target, timeout=10, max_attempts=5)
        self.accounts = [open_account(self.issuer, BALANCE) for _ in range(ACCOUNTS)]
        self.cards = [issue_card(self.issuer, a) for a in self.accounts]
        self.balance = [BALANCE] * ACCOUNTS
        self.model: dict[str, Hold] = {}
        self.answered: list[tuple[object, object]] = []

    def teardown(self) -> None:
        self.issuer.close()
        self.acquirer.close()

    def held(self, account: int) -> int:
        return sum(h.held for h in self.model.values() if h.account == account)

    @rule(target=holds, account=st.integers(0, ACCOUNTS - 1),
          amount=st.integers(1, 30_000), partial_ok=st.booleans())
    def authorize(self, account: int, amount: int, partial_ok: bool):  # noqa: ANN201
        available = self.balance[account] - self.held(account)
        request = authorize_request(card_token=self.cards[account], amount_minor=amount,
                                    partial_ok=partial_ok, timestamp=self.clock.timestamp())
        response = self.acquirer.authorize(request)
        self.answered.append((request, response))
        if amount <= available:
            assert (response.iso_response_code, response.approved_amount_minor) == ("00", amount)
        elif partial_ok and available > 0:
            assert (response.iso_response_code, response.approved_amount_minor) == (
                "10", available)
        else:
            assert response.iso_response_code == "51"
            return multiple()
        hold = Hold(response.authorization_id, account, response.approved_amount_minor,
                    response.approved_amount_minor)
        self.model[hold.auth_id] = hold
        return hold.auth_id

    @rule(auth_id=holds, amount=st.integers(1, 30_000), final=st.booleans())
    def capture(self, auth_id: str, amount: int, final: bool) -> None:
        h = self.model[auth_id]
        args = dict(request_id=unique("cap"), authorization_id=auth_id, amount_minor=amount,
                    currency="USD", final_capture=final)
        if h.held == 0 or h.captured + amount > h.approved - h.reversed:
            with pytest.raises(FailedPreconditionError):
                self.acquirer.capture(**args)
            return
        response = self.acquirer.capture(**args)
        h.held -= amount
        h.captured += amount
        self.balance[h.account] -= amount
        if final:
            h.held = 0
        assert (response.total_captured_minor, response.remaining_hold_minor) == (
            h.captured, h.held)

    @rule(auth_id=holds, amount=st.integers(0, 30_000))
    def reverse(self, auth_id: str, amount: int) -> None:
        h = self.model[auth_id]
        args = dict(request_id=unique("rev"), authorization_id=auth_id, amount_minor=amount,
                    currency="USD")
        if h.held == 0 or amount > h.held:
            with pytest.raises(FailedPreconditionError):
                self.acquirer.reverse(**args)
            return
        response = self.acquirer.reverse(**args)
        h.reversed += amount or h.held
        h.held -= amount or h.held
        assert response.remaining_hold_minor == h.held

    @rule(auth_id=holds, amount=st.integers(1, 30_000))
    def refund(self, auth_id: str, amount: int) -> None:
        h = self.model[auth_id]
        args = dict(request_id=unique("ref"), authorization_id=auth_id, amount_minor=amount,
                    currency="USD")
        if h.refunded + amount > h.captured:
            with pytest.raises(FailedPreconditionError):
                self.acquirer.refund(**args)
            return
        response = self.acquirer.refund(**args)
        h.refunded += amount
        self.balance[h.account] += amount
        assert response.total_refunded_minor == h.refunded

    @rule()
    def expire_everything(self) -> None:
        self.clock.advance(8 * DAY)
        for h in self.model.values():
            h.held = 0
        wait_until(lambda: all(self.issuer.get_account(account_id=a).account.held_minor == 0
                               for a in self.accounts), 20, "the sweeper")

    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        if not self.answered:
            return
        request, first = data.draw(st.sampled_from(self.answered))
        if request.timestamp.seconds < self.clock.now - 24 * 3600:
            return  # older than the accepted clock skew: refused as stale, not replayed
        again = self.acquirer.authorize(request)
        assert again.replayed
        again.replayed = False
        assert again == first

    @rule()
    def restart_server(self) -> None:
        assert self.server.stop() == 0
        self.server.start()

    @rule(auth_id=consumes(holds))
    def forget(self, auth_id: str) -> None:
        """Keep the bundle small, so operations hit the same holds often."""

    @invariant()
    def books_agree(self) -> None:
        if not hasattr(self, "accounts"):
            return
        for i, account in enumerate(self.accounts):
            got = self.issuer.get_account(account_id=account).account
            assert (got.balance_minor, got.held_minor) == (self.balance[i], self.held(i))
            assert got.available_minor == got.balance_minor - got.held_minor

    @invariant()
    def reconcile_finds_nothing(self) -> None:
        if not hasattr(self, "accounts"):
            return

        assert reconcile_redis(self.redis.url)[1] == []


def test_lifecycle_state_machine(machine_env) -> None:
    LifecycleMachine.env = machine_env
    run = LifecycleMachine.TestCase
    run.settings = settings(max_examples=10, stateful_step_count=20, deadline=None,
                            suppress_health_check=list(HealthCheck))
    run().runTest()
