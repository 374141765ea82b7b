"""A hypothesis state machine drives random earn / redeem / adjust / purchase (authorize then
capture or reverse) / expire / replay sequences against a real server, and checks after
every step that each member's balance equals the sum of its ledger, matches a model
(including lots expiring oldest first, exactly once, and a challenge paid once by the
purchase that completes it, never by a reversed one), and never goes below zero."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from payauth.clients import AcquirerClient, FailedPreconditionError, IssuerClient, LoyaltyClient
from payauth.server import keys
from payauth.v1 import loyalty_pb2
from tests.conftest import authorize_request, issue_card, open_account, unique
from tests.servers import PayauthProcess, RedisProcess, ServerClock, wait_until

MEMBERS = 2
L = loyalty_pb2
DAY = 86400
EXPIRY_DAYS = 10
COFFEE, COFFEE_TARGET, COFFEE_BONUS = "5814", 3, 100


@dataclass
class MemberModel:
    """What a member should hold: available points and lots [expires_at_s, points left]."""

    available: int = 0
    pending: int = 0
    lots: list[list[float]] = field(default_factory=list)
    coffees: int = 0  # progress in the coffee challenge
    coffee_done: bool = False

    def count_purchase(self, mcc: str, now: float) -> None:
        """A purchase that stays (earned, or captured) counts toward the challenge."""
        if mcc != COFFEE or self.coffee_done:
            return
        self.coffees += 1
        if self.coffees >= COFFEE_TARGET:
            self.coffee_done, self.coffees = True, 0
            self.credit(COFFEE_BONUS, now)

    def credit(self, points: int, now: float) -> None:
        self.available += points
        if points > 0:
            self.lots.append([now + EXPIRY_DAYS * DAY, points])

    def debit(self, points: int) -> None:
        """Take points from the lots, oldest first (what no lot covers is unbacked)."""
        self.available -= points
        while points > 0 and self.lots:
            take = min(points, self.lots[0][1])
            self.lots[0][1] -= take
            points -= take
            if self.lots[0][1] == 0:
                self.lots.pop(0)

    def expire(self, now: float) -> None:
        while self.lots and self.lots[0][0] <= now:
            _, left = self.lots.pop(0)
            self.available -= min(left, max(self.available, 0))


def points_for(amount: int, mcc: str) -> int:
    """The test program: 1 point per USD 1.00, 2x at groceries."""
    return 2 * (amount // 100) if mcc == "5411" else amount // 100


@pytest.fixture(scope="module")
def loyalty_env(tmp_path_factory: pytest.TempPathFactory):
    redis_server = RedisProcess(tmp_path_factory.mktemp("loyalty-stateful-redis")).start()
    clock = ServerClock(tmp_path_factory.mktemp("loyalty-stateful-clock") / "now")
    server = PayauthProcess(tmp_path_factory.mktemp("loyalty-stateful"),
                            redis_url=redis_server.url,
                            extra=("--clock-file", str(clock.path), "--sweep-interval", "0.05"))
    server.start()
    yield redis_server, clock, server
    server.stop()
    redis_server.stop()


class LoyaltyMachine(RuleBasedStateMachine):
    """Random points traffic on a few members, checked against a model."""

    env: tuple[RedisProcess, ServerClock, PayauthProcess]

    @initialize()
    def enroll(self) -> None:
        self.redis, self.clock, self.server = self.env
        self.rclient = self.redis.client()
        self.loyalty = LoyaltyClient(self.server.target, timeout=10, max_attempts=5)
        self.issuer = IssuerClient(self.server.target, timeout=10, max_attempts=5)
        self.acquirer = AcquirerClient(self.server.target, timeout=10, max_attempts=5)
        self.program = unique("prog")
        self.loyalty.upsert_program(program=L.LoyaltyProgram(
            program_id=self.program, version=1, name="Stateful", points_currency="PTS",
            home_currency="USD",
            point_values=[L.PointValue(currency="USD", value_mantissa=1)],
            earn_rates=[L.EarnRate(currency="USD", points_mantissa=1, points_scale=2)],
            earning_rules=[L.EarningRule(id="grocery", multiplier_bps=20_000,
                                         condition='txn.mcc == "5411"')],
            challenges=[L.LoyaltyChallenge(
                id="coffee", condition=f'txn.mcc == "{COFFEE}"',
                goal=L.CHALLENGE_GOAL_PURCHASE_COUNT, target_count=COFFEE_TARGET,
                bonus_points=COFFEE_BONUS, starts_at={"seconds": 1},
                ends_at={"seconds": 4_000_000_000})],
            points_expiry_days=EXPIRY_DAYS))
        self.members, self.cards, self.model = [], [], []
        for _ in range(MEMBERS):
            account = open_account(self.issuer, 10**9)
            self.cards.append(issue_card(self.issuer, account))
            member_id = unique("m")
            self.loyalty.upsert_member(member=L.LoyaltyMember(
                program_id=self.program, member_id=member_id, account_id=account))
            self.members.append(member_id)
            self.model.append(MemberModel())
        self.earned: list[tuple[L.EarnRequest, L.EarnResponse]] = []

    def teardown(self) -> None:
        for client in (self.loyalty, self.issuer, self.acquirer):
            client.close()
        self.rclient.close()

    @rule(i=st.integers(0, MEMBERS - 1), amount=st.integers(1, 50_000),
          mcc=st.sampled_from(["5411", "5999", COFFEE]))
    def earn(self, i: int, amount: int, mcc: str) -> None:
        request = L.EarnRequest(
            request_id=unique("earn"), program_id=self.program, member_id=self.members[i],
            txn=L.LoyaltyTransaction(amount_minor=amount, currency="USD", mcc=mcc,
                                     timestamp=self.clock.timestamp()),
            post_immediately=True)
        response = self.loyalty.earn(request)
        assert response.points_earned == points_for(amount, mcc)
        self.model[i].credit(response.points_earned, self.clock.now)
        done_before = self.model[i].coffee_done
        self.model[i].count_purchase(mcc, self.clock.now)
        assert bool(response.completed_challenge_ids) == (
            self.model[i].coffee_done and not done_before)
        self.earned.append((request, response))

    @rule(i=st.integers(0, MEMBERS - 1), points=st.integers(1, 600), partial=st.booleans())
    def redeem(self, i: int, points: int, partial: bool) -> None:
        m = self.model[i]
        args = dict(request_id=unique("red"), program_id=self.program,
                    member_id=self.members[i], points=points, allow_partial=partial)
        if m.available < points and not (partial and m.available > 0):
            with pytest.raises(FailedPreconditionError):
                self.loyalty.redeem(**args)
            return
        response = self.loyalty.redeem(**args)
        expected = min(points, m.available)
        assert response.points_redeemed == expected
        m.debit(expected)

    @rule(i=st.integers(0, MEMBERS - 1), delta=st.integers(-500, 500).filter(bool))
    def adjust(self, i: int, delta: int) -> None:
        m = self.model[i]
        args = dict(request_id=unique("adj"), program_id=self.program,
                    member_id=self.members[i], points_delta=delta, reason="test")
        if m.available + delta < 0:
            with pytest.raises(FailedPreconditionError):
                self.loyalty.adjust(**args)
            return
        self.loyalty.adjust(**args)
        if delta > 0:
            m.credit(delta, self.clock.now)
        else:
            m.debit(-delta)

    @rule(i=st.integers(0, MEMBERS - 1), amount=st.integers(100, 50_000),
          mcc=st.sampled_from(["5411", "5999", COFFEE]), captured=st.booleans())
    def purchase(self, i: int, amount: int, mcc: str, captured: bool) -> None:
        """An authorization earns pending points; its capture posts them, its reversal
        removes them."""
        m = self.model[i]
        response = self.acquirer.authorize(authorize_request(
            card_token=self.cards[i], amount_minor=amount, mcc=mcc,
            timestamp=self.clock.timestamp()))
        assert response.points_earned == points_for(amount, mcc)
        if captured:
            self.acquirer.capture(request_id=unique("cap"),
                                  authorization_id=response.authorization_id,
                                  amount_minor=amount, currency="USD", final_capture=True)
            m.credit(response.points_earned, self.clock.now)
            m.count_purchase(mcc, self.clock.now)  # its bonus, if any, posts with it
        else:  # reversed at once: as if it never happened, challenge included
            self.acquirer.reverse(request_id=unique("rev"),
                                  authorization_id=response.authorization_id)

    @rule(days=st.integers(1, 12))
    def time_passes(self, days: int) -> None:
        self.clock.advance(days * DAY)
        for m in self.model:
            m.expire(self.clock.now)
        wait_until(lambda: all(
            self.loyalty.get_balance(program_id=self.program, member_id=member_id)
            .balance.available_points == m.available
            for member_id, m in zip(self.members, self.model, strict=True)), 20, "expiry")

    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        if not self.earned:
            return
        request, first = data.draw(st.sampled_from(self.earned))
        again = self.loyalty.earn(request)
        assert again.replayed
        assert (again.entry_id, again.points_earned) == (first.entry_id, first.points_earned)

    @invariant()
    def balances_are_their_ledgers(self) -> None:
        if not hasattr(self, "members"):
            return
        for member_id, m in zip(self.members, self.model, strict=True):
            got = self.loyalty.get_balance(program_id=self.program,
                                           member_id=member_id).balance
            assert (got.available_points, got.pending_points) == (m.available, m.pending)
            assert got.available_points >= 0
            partition = int(self.rclient.get(keys.member_index(self.program, member_id)))
            records = [f for _, f in self.rclient.xrange(
                keys.member_ledger(partition, self.program, member_id))]
            assert sum(int(r[b"avail"]) for r in records) == got.available_points
            assert sum(int(r[b"pend"]) for r in records) == got.pending_points
            assert [int(r[b"seq"]) for r in records] == list(range(1, len(records) + 1))


def test_loyalty_state_machine(loyalty_env) -> None:
    LoyaltyMachine.env = loyalty_env
    run = LoyaltyMachine.TestCase
    run.settings = settings(max_examples=15, stateful_step_count=25, deadline=None,
                            suppress_health_check=list(HealthCheck))
    run().runTest()
