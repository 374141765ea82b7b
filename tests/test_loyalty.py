"""The loyalty points engine end to end: programs, members, earning rules and caps, tiers,
challenges, earn and redeem inside Authorize, the lifecycle's effect on points, expiry,
abuse limits, A/B variants, the ledger and WatchBalance; through the gRPC API, on real
server processes whose clock the tests control (--clock-file)."""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import redis
from google.protobuf.timestamp_pb2 import Timestamp

from payauth.clients import (
    AcquirerClient,
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    LoyaltyClient,
    NotFoundError,
)
from payauth.server import keys
from payauth.v1 import common_pb2, lifecycle_pb2, loyalty_pb2
from tests.conftest import (
    authorize_request,
    issue_card,
    open_account,
    reconcile_redis,
    unique,
)
from tests.servers import PayauthProcess, RedisProcess, ServerClock

L = loyalty_pb2
DAY = 86400
# A Saturday, 12:00 UTC: weekend rules hold, weekday rules do not.
SATURDAY = datetime(2026, 11, 28, 12, tzinfo=UTC).timestamp()


def ts(seconds: float) -> Timestamp:
    t = Timestamp()
    t.FromMilliseconds(int(seconds * 1000))
    return t


def program(program_id: str, version: int = 1, start: float = SATURDAY, **fields: object
            ) -> L.LoyaltyProgram:
    """A program: 1 point per USD 1.00, 1 point = USD 0.01; 2x at grocery on weekends
    (at most 500 extra a day), 3x in the birthday month, 50 bonus online (at most 100 a
    day), 5x on airlines (at most 1,000 extra a purchase); Silver at 1,000 and Gold at
    5,000 qualifying points over 30 days; two challenges in the week from `start`."""
    values: dict[str, object] = dict(
        program_id=program_id, version=version, name="Test rewards", points_currency="PTS",
        home_currency="USD",
        point_values=[L.PointValue(currency="USD", value_mantissa=1, value_scale=0)],
        earn_rates=[L.EarnRate(currency="USD", points_mantissa=1, points_scale=2)],
        earning_rules=[
            L.EarningRule(id="weekend-grocery", multiplier_bps=20_000, max_points_per_day=500,
                          condition='txn.mcc == "5411" && '
                                    'txn.timestamp.getDayOfWeek("UTC") in [0, 6]',
                          reason="2x groceries on weekends"),
            L.EarningRule(id="birthday", multiplier_bps=30_000,
                          condition='member.birth_month == '
                                    'txn.timestamp.getMonth("UTC") + 1',
                          reason="3x in your birthday month"),
            L.EarningRule(id="online-bonus", bonus_points=50, max_points_per_day=100,
                          condition='txn.channel == "ECOM"', reason="50 points online"),
            L.EarningRule(id="airline", multiplier_bps=50_000, max_points_per_transaction=1000,
                          condition='txn.mcc == "4511"', reason="5x on flights"),
        ],
        multiplier_combination=L.MULTIPLIER_COMBINATION_HIGHEST,
        tiers=[L.LoyaltyTier(id="base", name="Base", rank=0, qualifying_points=0,
                             earn_multiplier_bps=10_000),
               L.LoyaltyTier(id="silver", name="Silver", rank=1, qualifying_points=1000,
                             earn_multiplier_bps=12_500),
               L.LoyaltyTier(id="gold", name="Gold", rank=2, qualifying_points=5000,
                             earn_multiplier_bps=15_000)],
        tier_qualification_days=30,
        challenges=[
            L.LoyaltyChallenge(id="coffee-week", name="3 coffees this week",
                               condition='txn.mcc == "5814"',
                               goal=L.CHALLENGE_GOAL_PURCHASE_COUNT, target_count=3,
                               bonus_points=300, starts_at=ts(start - DAY),
                               ends_at=ts(start + 6 * DAY)),
            L.LoyaltyChallenge(id="travel-500", name="Spend 500.00 on travel",
                               condition='txn.mcc == "4511"',
                               goal=L.CHALLENGE_GOAL_SPEND_AMOUNT, target_amount_minor=50_000,
                               currency="USD", bonus_points=1000, starts_at=ts(start - DAY),
                               ends_at=ts(start + 30 * DAY)),
        ],
    )
    values.update(fields)
    return L.LoyaltyProgram(**values)


@pytest.fixture(scope="module")
def loyalty_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path_factory.mktemp("loyalty-redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def clock(tmp_path_factory: pytest.TempPathFactory) -> ServerClock:
    c = ServerClock(tmp_path_factory.mktemp("loyalty-clock") / "now")
    c.advance(SATURDAY - c.now)
    return c


@pytest.fixture(autouse=True)
def saturday(clock: ServerClock) -> None:
    """Every test starts on the same Saturday noon."""
    clock.advance(SATURDAY - clock.now)


@pytest.fixture(scope="module")
def payauth(loyalty_redis: RedisProcess, clock: ServerClock,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[PayauthProcess]:
    process = PayauthProcess(
        tmp_path_factory.mktemp("loyalty"), redis_url=loyalty_redis.url, workers=2,
        extra=("--clock-file", str(clock.path), "--sweep-interval", "0.1")).start()
    yield process
    assert process.stop() == 0, process.output()


@pytest.fixture
def loyalty(payauth: PayauthProcess) -> Iterator[LoyaltyClient]:
    with LoyaltyClient(payauth.target, timeout=5) as client:
        yield client


@pytest.fixture
def rclient(loyalty_redis: RedisProcess) -> Iterator[redis.Redis]:
    client = loyalty_redis.client()
    yield client
    client.close()


@pytest.fixture
def prog(loyalty: LoyaltyClient) -> str:
    """A fresh program of the standard shape."""
    program_id = unique("prog")
    loyalty.upsert_program(program=program(program_id))
    return program_id


def member(loyalty: LoyaltyClient, program_id: str, account_id: str = "",
           birth_month: int = 0) -> str:
    member_id = unique("m")
    loyalty.upsert_member(member=L.LoyaltyMember(program_id=program_id, member_id=member_id,
                                                 account_id=account_id,
                                                 birth_month=birth_month))
    return member_id


def txn(amount: int, mcc: str = "5999", at: float = SATURDAY, **fields: object
        ) -> L.LoyaltyTransaction:
    return L.LoyaltyTransaction(amount_minor=amount, currency="USD", mcc=mcc,
                                merchant_id="shop-1", merchant_country="US",
                                channel=fields.pop("channel", common_pb2.CHANNEL_POS),
                                timestamp=ts(at), **fields)


def earn(loyalty: LoyaltyClient, program_id: str, member_id: str, amount: int,
         mcc: str = "5999", at: float = SATURDAY, post: bool = True, **fields: object
         ) -> L.EarnResponse:
    return loyalty.earn(request_id=unique("earn"), program_id=program_id, member_id=member_id,
                        txn=txn(amount, mcc, at, **fields), post_immediately=post)


def balance(loyalty: LoyaltyClient, program_id: str, member_id: str) -> L.LoyaltyBalance:
    return loyalty.get_balance(program_id=program_id, member_id=member_id).balance


def ledger(loyalty: LoyaltyClient, program_id: str, member_id: str
           ) -> list[L.LoyaltyLedgerEntry]:
    entries, cursor = [], ""
    while True:
        page = loyalty.list_activity(program_id=program_id, member_id=member_id, page_size=7,
                                     cursor=cursor)
        entries.extend(page.entries)
        if not page.next_cursor:
            return entries
        cursor = page.next_cursor


def assert_ledger_balances(loyalty: LoyaltyClient, rclient: redis.Redis, program_id: str,
                           member_id: str) -> L.LoyaltyBalance:
    """The balance equals the sum of the ledger, and the entries chain their balances."""
    b = balance(loyalty, program_id, member_id)
    partition = int(rclient.get(keys.member_index(program_id, member_id)))
    records = [fields for _, fields in
               rclient.xrange(keys.member_ledger(partition, program_id, member_id))]
    available = sum(int(r[b"avail"]) for r in records)
    pending = sum(int(r[b"pend"]) for r in records)
    assert (available, pending) == (b.available_points, b.pending_points)
    running = 0
    for r in records:
        running += int(r[b"avail"])
        assert running == int(r[b"avail_after"])
    assert b.sequence == max([int(r[b"seq"]) for r in records], default=0)
    return b


def assert_reconciled(redis_server: RedisProcess) -> None:
    """`payauth reconcile` finds every account's and every member's books balanced."""

    checked, found = reconcile_redis(redis_server.url)
    assert checked > 0 and found == [], found


# -- programs -------------------------------------------------------------------------------


def test_a_program_with_a_bad_condition_is_refused_with_its_position(loyalty) -> None:
    bad = program(unique("prog"))
    bad.earning_rules[2].condition = 'txn.channel == 7'
    with pytest.raises(InvalidArgumentError) as caught:
        loyalty.upsert_program(program=bad)
    fields = {v.field: v.description for v in caught.value.field_violations}
    assert "program.earning_rules[2].condition" in fields
    assert "column" in fields["program.earning_rules[2].condition"]


def test_program_field_rules_are_checked_together(loyalty) -> None:
    bad = program(unique("prog"), version=0, home_currency="XXX1")
    bad.tiers[1].qualifying_points = 0
    bad.challenges[0].target_count = 0
    with pytest.raises(InvalidArgumentError) as caught:
        loyalty.upsert_program(program=bad)
    fields = {v.field: v.description for v in caught.value.field_violations}
    for name in ("program.version", "program.home_currency",
                 "program.tiers[1].qualifying_points", "program.challenges[0].target_count"):
        assert name in fields, fields


def test_program_versions_replay_and_refuse_going_back(loyalty) -> None:
    program_id = unique("prog")
    first = loyalty.upsert_program(program=program(program_id))
    assert (first.version, first.previous_version, first.replayed) == (1, 0, False)
    assert loyalty.upsert_program(program=program(program_id)).replayed
    second = loyalty.upsert_program(program=program(program_id, version=2))
    assert second.previous_version == 1
    with pytest.raises(FailedPreconditionError):
        loyalty.upsert_program(program=program(program_id, version=1, name="changed"))
    checked = loyalty.upsert_program(program=program(program_id, version=9), validate_only=True)
    assert checked.validated_only
    assert loyalty.upsert_program(program=program(program_id, version=3)).previous_version == 2


def test_unknown_program_or_member_is_not_found(loyalty, prog) -> None:
    with pytest.raises(NotFoundError):
        loyalty.get_balance(program_id=unique("nope"), member_id="x")
    with pytest.raises(NotFoundError):
        loyalty.get_balance(program_id=prog, member_id=unique("nobody"))


# -- earning rules ------------------------------------------------------------------------------


def test_base_earn_and_the_highest_multiplier(loyalty, prog) -> None:
    m = member(loyalty, prog)
    weekday = SATURDAY + 2 * DAY  # Monday
    plain = earn(loyalty, prog, m, 12_345, mcc="5411", at=weekday)
    assert (plain.points_earned, list(plain.rule_ids)) == (123, [])
    weekend = earn(loyalty, prog, m, 12_345, mcc="5411")
    assert (weekend.points_earned, list(weekend.rule_ids)) == (246, ["weekend-grocery"])


def test_birthday_month_triples_and_beats_the_weekend_double(loyalty, prog) -> None:
    m = member(loyalty, prog, birth_month=11)
    got = earn(loyalty, prog, m, 10_000, mcc="5411")
    assert got.points_earned == 300  # HIGHEST: 3x, not 2x and not both
    assert list(got.rule_ids) == ["birthday"]


def test_added_extras_combine_multipliers(loyalty) -> None:
    program_id = unique("prog")
    loyalty.upsert_program(program=program(
        program_id, multiplier_combination=L.MULTIPLIER_COMBINATION_ADD_EXTRAS))
    m = member(loyalty, program_id, birth_month=11)
    got = earn(loyalty, program_id, m, 10_000, mcc="5411")
    assert got.points_earned == 100 + 100 + 200  # base, +1x weekend, +2x birthday
    assert sorted(got.rule_ids) == ["birthday", "weekend-grocery"]


def test_caps_per_transaction_and_per_day(loyalty) -> None:
    prog = unique("prog")
    loyalty.upsert_program(program=program(prog, tiers=[]))  # no tier multiplier here
    m = member(loyalty, prog)
    flight = earn(loyalty, prog, m, 100_000, mcc="4511")  # 1,000 base, 4,000 extra capped
    assert flight.points_earned == 1000 + 1000
    # 2x weekend grocery adds at most 500 a day: 300, then 200 of 300, then 0.
    assert earn(loyalty, prog, m, 30_000, mcc="5411").points_earned == 600
    assert earn(loyalty, prog, m, 30_000, mcc="5411").points_earned == 300 + 200
    assert earn(loyalty, prog, m, 30_000, mcc="5411").points_earned == 300
    # A new day, a new allowance (Sunday is weekend too).
    assert earn(loyalty, prog, m, 30_000, mcc="5411", at=SATURDAY + DAY).points_earned == 600
    # Fixed bonus: 50 a purchase online, at most 100 a day.
    online = [earn(loyalty, prog, m, 100, channel=common_pb2.CHANNEL_ECOM).points_earned
              for _ in range(3)]
    assert online == [51, 51, 1]


def test_rule_validity_window(loyalty) -> None:
    program_id = unique("prog")
    p = program(program_id)
    p.earning_rules[3].valid_from.CopyFrom(ts(SATURDAY + DAY))
    p.earning_rules[3].valid_until.CopyFrom(ts(SATURDAY + 2 * DAY))
    loyalty.upsert_program(program=p)
    m = member(loyalty, program_id)
    assert earn(loyalty, program_id, m, 10_000, mcc="4511").points_earned == 100
    assert earn(loyalty, program_id, m, 10_000, mcc="4511",
                at=SATURDAY + DAY).points_earned == 500
    assert earn(loyalty, program_id, m, 10_000, mcc="4511",
                at=SATURDAY + 2 * DAY).points_earned == 100


def test_earn_is_idempotent_by_request_id(loyalty, prog, rclient) -> None:
    m = member(loyalty, prog)
    request = L.EarnRequest(request_id=unique("earn"), program_id=prog, member_id=m,
                            txn=txn(10_000, mcc="5814"), post_immediately=True)
    first = loyalty.earn(request)
    again = loyalty.earn(request)
    assert again.replayed and again.points_earned == first.points_earned
    assert again.entry_id == first.entry_id
    other = L.EarnRequest()
    other.CopyFrom(request)
    other.txn.amount_minor = 20_000
    with pytest.raises(AlreadyExistsError):
        loyalty.earn(other)
    assert assert_ledger_balances(loyalty, rclient, prog, m).available_points == 100


# -- tiers ---------------------------------------------------------------------------------------


def test_tier_changes_exactly_at_the_boundary_and_rolls_off(loyalty, prog, clock) -> None:
    m = member(loyalty, prog)
    weekday = SATURDAY + 2 * DAY
    clock.advance(2 * DAY)
    earn(loyalty, prog, m, 99_900, at=weekday)  # 999 qualifying points
    b = balance(loyalty, prog, m)
    assert (b.tier_id, b.next_tier_id, b.points_to_next_tier) == ("base", "silver", 1)
    # The purchase that crosses the boundary earns at the tier before it.
    crossing = earn(loyalty, prog, m, 100, at=weekday)
    assert crossing.tier_multiplier_bps == 10_000 and crossing.points_earned == 1
    b = balance(loyalty, prog, m)
    assert (b.tier_id, b.qualifying_points, b.next_tier_id) == ("silver", 1000, "gold")
    assert earn(loyalty, prog, m, 10_000, at=weekday).points_earned == 125  # 1.25x
    # 30 days of qualification: on day 29 after the earn it still counts, on day 30 not.
    clock.advance(29 * DAY)
    assert balance(loyalty, prog, m).tier_id == "silver"
    clock.advance(DAY)
    b = balance(loyalty, prog, m)
    assert (b.tier_id, b.qualifying_points) == ("base", 0)


# -- challenges ------------------------------------------------------------------------------------


def test_challenge_completes_once_on_the_crossing_purchase(loyalty, prog, rclient) -> None:
    m = member(loyalty, prog)
    assert list(earn(loyalty, prog, m, 500, mcc="5814").completed_challenge_ids) == []
    assert list(earn(loyalty, prog, m, 500, mcc="5814").completed_challenge_ids) == []
    progress = {c.challenge_id: c for c in
                loyalty.get_balance(program_id=prog, member_id=m).challenges}
    coffee = progress["coffee-week"]
    assert (coffee.progress, coffee.target, coffee.completions) == (2, 3, 0)
    assert (progress["travel-500"].progress, progress["travel-500"].target) == (0, 50_000)
    third = L.EarnRequest(request_id=unique("earn"), program_id=prog, member_id=m,
                          txn=txn(500, mcc="5814"), post_immediately=True)
    done = loyalty.earn(third)
    assert list(done.completed_challenge_ids) == ["coffee-week"]
    assert done.challenge_bonus_points == 300
    replay = loyalty.earn(third)
    assert replay.replayed and list(replay.completed_challenge_ids) == ["coffee-week"]
    fourth = earn(loyalty, prog, m, 500, mcc="5814")
    assert list(fourth.completed_challenge_ids) == []  # once per window (max_completions 0)
    coffee = loyalty.get_balance(program_id=prog, member_id=m).challenges[0]
    assert (coffee.challenge_id, coffee.completions, coffee.max_completions) == (
        "coffee-week", 1, 1)
    b = assert_ledger_balances(loyalty, rclient, prog, m)
    assert b.available_points == 4 * 5 + 300
    bonuses = [e for e in ledger(loyalty, prog, m)
               if e.kind == L.LOYALTY_LEDGER_ENTRY_KIND_BONUS]
    assert [(e.challenge_id, e.points) for e in bonuses] == [("coffee-week", 300)]


def test_spend_challenge_counts_amounts(loyalty, prog) -> None:
    m = member(loyalty, prog)
    assert not earn(loyalty, prog, m, 30_000, mcc="4511").completed_challenge_ids
    done = earn(loyalty, prog, m, 20_000, mcc="4511")
    assert list(done.completed_challenge_ids) == ["travel-500"]
    assert done.challenge_bonus_points == 1000


def test_challenge_outside_its_window_does_not_count(loyalty, prog) -> None:
    m = member(loyalty, prog)
    late = SATURDAY + 7 * DAY
    for _ in range(3):
        assert not earn(loyalty, prog, m, 500, mcc="5814", at=late).completed_challenge_ids


# -- redeem, adjust, abuse -------------------------------------------------------------------------


def test_redeem_by_points_and_by_value(loyalty, prog, rclient) -> None:
    m = member(loyalty, prog)
    earn(loyalty, prog, m, 100_000)  # 1,000 points
    by_points = loyalty.redeem(request_id=unique("r"), program_id=prog, member_id=m, points=300)
    assert (by_points.points_redeemed, by_points.value_minor) == (300, 300)
    by_value = loyalty.redeem(request_id=unique("r"), program_id=prog, member_id=m,
                              value_minor=250, currency="USD")
    assert by_value.points_redeemed == 250
    with pytest.raises(FailedPreconditionError):
        loyalty.redeem(request_id=unique("r"), program_id=prog, member_id=m, points=1000)
    partial = loyalty.redeem(request_id=unique("r"), program_id=prog, member_id=m,
                             points=1000, allow_partial=True)
    assert partial.points_redeemed == 450
    b = assert_ledger_balances(loyalty, rclient, prog, m)
    assert (b.available_points, b.lifetime_redeemed_points) == (0, 1000)


def test_concurrent_redemptions_never_go_below_zero(loyalty, prog, payauth, rclient) -> None:
    m = member(loyalty, prog)
    earn(loyalty, prog, m, 100_000)  # 1,000 points

    def redeem_once(_: int) -> int:
        with LoyaltyClient(payauth.target, timeout=5) as client:
            try:
                return client.redeem(request_id=unique("r"), program_id=prog, member_id=m,
                                     points=70).points_redeemed
            except FailedPreconditionError:
                return 0

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        redeemed = list(pool.map(redeem_once, range(30)))
    assert sum(redeemed) == 14 * 70
    assert assert_ledger_balances(loyalty, rclient, prog, m).available_points == 1000 - 980


def test_adjust_credit_debit_and_suspension(loyalty, prog, rclient) -> None:
    m = member(loyalty, prog)
    got = loyalty.adjust(request_id=unique("a"), program_id=prog, member_id=m,
                         points_delta=500, reason="goodwill", counts_toward_tier=True,
                         operator_id="agent-7")
    assert got.balance.available_points == 500 and got.balance.qualifying_points == 500
    with pytest.raises(FailedPreconditionError):
        loyalty.adjust(request_id=unique("a"), program_id=prog, member_id=m,
                       points_delta=-600, reason="correction")
    loyalty.adjust(request_id=unique("a"), program_id=prog, member_id=m, points_delta=-600,
                   reason="correction", allow_negative_balance=True)
    held = loyalty.adjust(request_id=unique("a"), program_id=prog, member_id=m,
                          reason="review", set_suspension_state=L.SUSPENSION_STATE_FRAUD_HOLD,
                          suspension_reason="chargeback review")
    assert held.balance.suspension_state == L.SUSPENSION_STATE_FRAUD_HOLD
    assert held.balance.suspension_reason == "chargeback review"
    # A fraud hold blocks redemption, not earning.
    assert earn(loyalty, prog, m, 20_000).points_earned == 200
    with pytest.raises(FailedPreconditionError):
        loyalty.redeem(request_id=unique("r"), program_id=prog, member_id=m, points=10)
    loyalty.adjust(request_id=unique("a"), program_id=prog, member_id=m, reason="cleared",
                   set_suspension_state=L.SUSPENSION_STATE_NOT_SUSPENDED,
                   suspension_reason="review passed")
    assert loyalty.redeem(request_id=unique("r"), program_id=prog, member_id=m,
                          points=10).points_redeemed == 10
    assert assert_ledger_balances(loyalty, rclient, prog, m).available_points == 90


def test_redemption_limits_put_the_member_on_fraud_hold(loyalty) -> None:
    program_id = unique("prog")
    loyalty.upsert_program(program=program(program_id, abuse_limits=L.PointsAbuseLimits(
        max_redeem_points_per_day=500, max_redemptions_per_hour=3)))
    m = member(loyalty, program_id)
    earn(loyalty, program_id, m, 500_000)
    for _ in range(3):
        loyalty.redeem(request_id=unique("r"), program_id=program_id, member_id=m, points=10)
    with pytest.raises(FailedPreconditionError):
        loyalty.redeem(request_id=unique("r"), program_id=program_id, member_id=m, points=10)
    b = balance(loyalty, program_id, m)
    assert b.suspension_state == L.SUSPENSION_STATE_FRAUD_HOLD
    assert "hourly" in b.suspension_reason

    other = member(loyalty, program_id)
    earn(loyalty, program_id, other, 500_000)
    loyalty.redeem(request_id=unique("r"), program_id=program_id, member_id=other, points=400)
    with pytest.raises(FailedPreconditionError):
        loyalty.redeem(request_id=unique("r"), program_id=program_id, member_id=other,
                       points=101)
    assert balance(loyalty, program_id, other).suspension_state == \
        L.SUSPENSION_STATE_FRAUD_HOLD


def test_earn_limit_puts_the_member_on_fraud_hold_but_keeps_earning(loyalty) -> None:
    program_id = unique("prog")
    loyalty.upsert_program(program=program(program_id, abuse_limits=L.PointsAbuseLimits(
        max_earn_points_per_day=1000)))
    m = member(loyalty, program_id)
    earn(loyalty, program_id, m, 80_000)
    assert balance(loyalty, program_id, m).suspension_state == \
        L.SUSPENSION_STATE_NOT_SUSPENDED
    assert earn(loyalty, program_id, m, 80_000).points_earned == 800
    b = balance(loyalty, program_id, m)
    assert b.suspension_state == L.SUSPENSION_STATE_FRAUD_HOLD
    assert b.available_points == 1600


# -- expiry ----------------------------------------------------------------------------------------


def test_points_expire_in_lots_oldest_first_exactly_once(loyalty, clock, rclient) -> None:
    program_id = unique("prog")
    loyalty.upsert_program(program=program(program_id, points_expiry_days=10))
    m = member(loyalty, program_id)
    earn(loyalty, program_id, m, 50_000, at=SATURDAY + 2 * DAY)  # lot 1: 500, day 0
    clock.advance(3 * DAY)
    earn(loyalty, program_id, m, 30_000, at=SATURDAY + 2 * DAY)  # lot 2: 300, day 3
    loyalty.redeem(request_id=unique("r"), program_id=program_id, member_id=m, points=200)
    b = balance(loyalty, program_id, m)
    assert (b.available_points, b.expiring_points) == (600, 300)  # 200 came from lot 1
    clock.advance(7 * DAY + 1)
    _wait_for(lambda: balance(loyalty, program_id, m).available_points == 300)
    clock.advance(3 * DAY)
    _wait_for(lambda: balance(loyalty, program_id, m).available_points == 0)
    expired = [e.points for e in ledger(loyalty, program_id, m)
               if e.kind == L.LOYALTY_LEDGER_ENTRY_KIND_EXPIRE]
    assert sorted(expired) == [-300, -300]
    assert_ledger_balances(loyalty, rclient, program_id, m)


def _wait_for(condition, timeout: float = 5.0) -> None:  # noqa: ANN001
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


# -- A/B -------------------------------------------------------------------------------------------


def test_ab_variants_split_members_deterministically(loyalty) -> None:
    program_id = unique("prog")
    loyalty.upsert_program(program=program(program_id, ab_test=L.EarningRuleAbTest(
        experiment_id="double-everything", salt="s1", variant_b_share_bps=5000,
        variant_b_earning_rules=[L.EarningRule(id="all-2x", multiplier_bps=20_000,
                                               condition="true", reason="2x everything")])))
    seen = {}
    for _ in range(16):
        m = member(loyalty, program_id)
        got = earn(loyalty, program_id, m, 10_000, at=SATURDAY + 2 * DAY)
        seen.setdefault(got.variant, []).append(got.points_earned)
        assert balance(loyalty, program_id, m).variant == got.variant
    assert set(seen) == {L.AB_VARIANT_A, L.AB_VARIANT_B}
    assert set(seen[L.AB_VARIANT_A]) == {100} and set(seen[L.AB_VARIANT_B]) == {200}


# -- inside Authorize ------------------------------------------------------------------------------


def purchase(**fields: object) -> object:
    """An AuthorizeRequest dated at the test's Saturday (the server's clock)."""
    fields.setdefault("timestamp", ts(SATURDAY))
    return authorize_request(**fields)


def linked_member(issuer, loyalty, program_id: str, balance_minor: int = 100_000
                  ) -> tuple[str, str, str]:
    account = open_account(issuer, balance_minor)
    card = issue_card(issuer, account)
    return account, card, member(loyalty, program_id, account_id=account)


def test_authorization_earns_pending_then_capture_posts(issuer, acquirer, loyalty, prog,
                                                        rclient) -> None:
    account, card, m = linked_member(issuer, loyalty, prog)
    approved = acquirer.authorize(purchase(card_token=card, amount_minor=10_000,
                                                    mcc="5411", timestamp=ts(SATURDAY)))
    assert approved.iso_response_code == "00" and approved.points_earned == 200
    b = balance(loyalty, prog, m)
    assert (b.available_points, b.pending_points) == (0, 200)
    captured = acquirer.capture(lifecycle_pb2.CaptureRequest(
        request_id=unique("cap"), authorization_id=approved.authorization_id,
        amount_minor=10_000, currency="USD", final_capture=True))
    assert captured.status == lifecycle_pb2.AUTHORIZATION_STATUS_CAPTURED
    b = assert_ledger_balances(loyalty, rclient, prog, m)
    assert (b.available_points, b.pending_points) == (200, 0)
    refund = acquirer.refund(lifecycle_pb2.RefundRequest(
        request_id=unique("ref"), authorization_id=approved.authorization_id,
        amount_minor=2_500, currency="USD"))
    assert refund.points_reversed == 50
    assert assert_ledger_balances(loyalty, rclient, prog, m).available_points == 150
    by_account = loyalty.get_balance(program_id=prog, account_id=account).balance
    assert by_account.member_id == m


def test_reversal_removes_pending_points(issuer, acquirer, loyalty, prog, rclient) -> None:
    _, card, m = linked_member(issuer, loyalty, prog)
    approved = acquirer.authorize(purchase(card_token=card, amount_minor=10_000))
    acquirer.reverse(lifecycle_pb2.ReverseRequest(
        request_id=unique("rev"), authorization_id=approved.authorization_id))
    b = assert_ledger_balances(loyalty, rclient, prog, m)
    assert (b.available_points, b.pending_points, b.lifetime_earned_points) == (0, 0, 0)


def test_points_pay_part_of_a_purchase_atomically(issuer, acquirer, loyalty, prog,
                                                  rclient, loyalty_redis) -> None:
    account, card, m = linked_member(issuer, loyalty, prog, balance_minor=5_000)
    loyalty.adjust(request_id=unique("a"), program_id=prog, member_id=m, points_delta=3_000,
                   reason="welcome")
    # 2,000 points (USD 20.00) + USD 50.00 on the card.
    paid = acquirer.authorize(purchase(card_token=card, amount_minor=7_000,
                                                points_to_redeem=2_000, mcc="5999"))
    assert paid.iso_response_code == "00", paid
    assert (paid.points_redeemed, paid.approved_amount_minor) == (2_000, 7_000)
    assert paid.points_earned == 50  # earned on the card part only
    assert issuer.get_account(account_id=account).account.held_minor == 5_000
    assert balance(loyalty, prog, m).available_points == 1_000
    # Not enough money: the points are not touched.
    poor = acquirer.authorize(purchase(card_token=card, amount_minor=1_500,
                                                points_to_redeem=500))
    assert poor.iso_response_code == "51" and poor.points_redeemed == 0
    assert balance(loyalty, prog, m).available_points == 1_000
    # Not enough points: no hold.
    issuer.upsert_account(account_id=account, kind=common_pb2.ACCOUNT_KIND_DEBIT,
                          status=common_pb2.ACCOUNT_STATUS_ACTIVE, currency="USD",
                          balance_minor=100_000)
    short = acquirer.authorize(purchase(card_token=card, amount_minor=5_000,
                                                 points_to_redeem=1_001))
    assert short.iso_response_code == "51" and short.reasons[0].rule_id.startswith("loyalty")
    assert issuer.get_account(account_id=account).account.held_minor == 5_000
    # A reversal gives the points back.
    acquirer.reverse(lifecycle_pb2.ReverseRequest(request_id=unique("rev"),
                                                  authorization_id=paid.authorization_id))
    b = assert_ledger_balances(loyalty, rclient, prog, m)
    assert (b.available_points, b.pending_points) == (3_000, 0)
    assert_reconciled(loyalty_redis)


def test_reconcile_finds_a_member_whose_points_do_not_balance(loyalty, prog, loyalty_redis,
                                                               rclient) -> None:
    m = member(loyalty, prog)
    earn(loyalty, prog, m, 12_345)
    partition = int(rclient.get(keys.member_index(prog, m)))
    key = keys.member(partition, prog, m)
    rclient.hincrby(key, "pending", 7)
    try:
        found = reconcile_redis(loyalty_redis.url)[1]
        stored = balance(loyalty, prog, m).pending_points
        assert [(d.account_id, d.what, d.stored, d.expected, d.subject) for d in found] == [
            (f"{prog}/{m}", "pending points", stored, stored - 7, "loyalty member")]
    finally:
        rclient.hincrby(key, "pending", -7)
    assert_reconciled(loyalty_redis)


def test_a_replayed_authorization_earns_once(issuer, acquirer, loyalty, prog) -> None:
    _, card, m = linked_member(issuer, loyalty, prog)
    request = purchase(card_token=card, amount_minor=1_500, mcc="5814")
    first = acquirer.authorize(request)
    again = acquirer.authorize(request)
    assert again.replayed and again.points_earned == first.points_earned == 15
    assert balance(loyalty, prog, m).pending_points == 15


def test_points_without_membership_are_declined(issuer, acquirer) -> None:
    account = open_account(issuer, 10_000)
    card = issue_card(issuer, account)
    got = acquirer.authorize(purchase(card_token=card, amount_minor=1_000,
                                               points_to_redeem=10))
    assert got.iso_response_code == "57"
    assert issuer.get_account(account_id=account).account.held_minor == 0


def test_an_account_belongs_to_one_member(issuer, loyalty, prog) -> None:
    account = open_account(issuer, 10_000)
    member(loyalty, prog, account_id=account)
    with pytest.raises(AlreadyExistsError):
        member(loyalty, prog, account_id=account)
    with pytest.raises(NotFoundError):
        member(loyalty, prog, account_id=unique("no-account"))


# -- activity and watching -------------------------------------------------------------------------


def test_list_activity_pages_newest_first_with_filters(loyalty, prog) -> None:
    m = member(loyalty, prog)
    for i in range(12):
        earn(loyalty, prog, m, 100 * (i + 1))
    loyalty.redeem(request_id=unique("r"), program_id=prog, member_id=m, points=5)
    entries = ledger(loyalty, prog, m)
    assert len(entries) == 13
    assert [e.sequence for e in entries] == list(range(13, 0, -1))
    assert entries[0].kind == L.LOYALTY_LEDGER_ENTRY_KIND_REDEEM
    redeems = loyalty.list_activity(program_id=prog, member_id=m,
                                    kinds=[L.LOYALTY_LEDGER_ENTRY_KIND_REDEEM])
    assert [e.points for e in redeems.entries] == [-5] and not redeems.next_cursor


def test_watch_balance_streams_changes_and_resumes_without_loss(loyalty, prog, payauth) -> None:
    m = member(loyalty, prog)
    earn(loyalty, prog, m, 1_000)
    received: list[L.BalanceUpdate] = []
    subscribed = threading.Event()

    def watch(cursor: str, stop_after: int) -> None:
        with LoyaltyClient(payauth.target, timeout=10) as client:
            request = L.WatchBalanceRequest(program_id=prog, member_id=m, cursor=cursor)
            for update in client.watch_balance(request):
                received.append(update)
                subscribed.set()
                if len(received) >= stop_after:
                    return

    reader = threading.Thread(target=watch, args=("", 3))
    reader.start()
    assert subscribed.wait(10)
    earn(loyalty, prog, m, 2_000)
    earn(loyalty, prog, m, 3_000)
    reader.join(10)
    assert not reader.is_alive()
    assert [u.balance.available_points for u in received] == [10, 30, 60]
    assert not received[0].HasField("entry") and received[1].entry.points == 20
    # Disconnected: two more changes happen, then the watcher resumes from its cursor.
    earn(loyalty, prog, m, 4_000)
    loyalty.redeem(request_id=unique("r"), program_id=prog, member_id=m, points=7)
    cursor = received[-1].cursor
    received.clear()
    reader = threading.Thread(target=watch, args=(cursor, 2))
    reader.start()
    reader.join(10)
    assert not reader.is_alive()
    assert [u.entry.points for u in received] == [40, -7]
    assert [u.balance.sequence for u in received] == [4, 5]
    assert received[-1].balance.available_points == 93


# -- program figures -----------------------------------------------------------------------------


def test_program_figures_per_variant_in_the_api_and_the_metrics(loyalty, payauth) -> None:
    import urllib.request

    program_id = unique("prog")
    loyalty.upsert_program(program=program(program_id, tiers=[], ab_test=L.EarningRuleAbTest(
        experiment_id="exp", salt="figures", variant_b_share_bps=5000,
        variant_b_earning_rules=[L.EarningRule(id="all-2x", multiplier_bps=20_000,
                                               condition="true")])))
    expected: dict[int, list[int]] = {}  # variant -> [members, issued, redeemed]
    # Members fall into A or B by a hash of their (random) id: enrol at least 8, and on
    # until both variants have one (all 8 in one variant happens once in 128 runs).
    enrolled = 0
    while enrolled < 8 or len(expected) < 2:
        assert enrolled < 64, "64 members, one variant: the split is not 50/50"
        enrolled += 1
        m = member(loyalty, program_id)
        got = earn(loyalty, program_id, m, 10_000, at=SATURDAY + 2 * DAY)
        loyalty.redeem(request_id=unique("r"), program_id=program_id, member_id=m, points=40)
        row = expected.setdefault(got.variant, [0, 0, 0])
        row[0] += 1
        row[1] += got.points_earned
        row[2] += 40
    figures = loyalty.get_program_figures(program_id=program_id)
    by_variant = {f.variant: f for f in figures.variants}
    assert set(by_variant) == set(expected)
    for variant, (members, issued, redeemed) in expected.items():
        f = by_variant[variant]
        assert (f.members_enrolled, f.members_active, f.points_issued, f.points_redeemed) == (
            members, members, issued, redeemed)
        assert f.points_outstanding == issued - redeemed
        assert f.redemption_rate_bps == redeemed * 10_000 // issued
    total = figures.total
    issued = sum(row[1] for row in expected.values())
    assert (total.members_enrolled, total.points_issued) == (enrolled, issued)
    assert total.liability_minor == issued - enrolled * 40  # 1 point = 1 cent
    assert total.liability_currency == "USD"
    text = urllib.request.urlopen(f"http://127.0.0.1:{payauth.metrics_port}/metrics",
                                  timeout=10).read().decode()
    assert f'payauth_loyalty_points_issued{{program="{program_id}",variant="A"}}' in text
    assert f'payauth_loyalty_members{{program="{program_id}",variant="B"}}' in text
    liability = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                    if line.startswith("payauth_loyalty_liability_minor{")
                    and f'program="{program_id}"' in line and 'currency="USD"' in line)
    assert liability == issued - enrolled * 40


def test_a_purchase_paid_in_points(issuer, acquirer, loyalty, prog, rclient,
                                   loyalty_redis) -> None:
    account, card, m = linked_member(issuer, loyalty, prog, balance_minor=1_000)
    loyalty.adjust(request_id=unique("a"), program_id=prog, member_id=m, points_delta=5_000,
                   reason="welcome")
    # USD 42.50 paid with 4,250 points; the account's money is not touched.
    paid = acquirer.authorize(purchase(card_token=card, amount_minor=4_250,
                                       payment_method=common_pb2.PAYMENT_METHOD_POINTS))
    assert paid.iso_response_code == "00", paid
    assert (paid.points_redeemed, paid.points_earned, paid.approved_amount_minor) == (
        4_250, 0, 4_250)
    got = issuer.get_account(account_id=account).account
    assert (got.balance_minor, got.held_minor) == (1_000, 0)
    assert balance(loyalty, prog, m).available_points == 750
    with pytest.raises(FailedPreconditionError):  # captured whole or not at all
        acquirer.capture(lifecycle_pb2.CaptureRequest(
            request_id=unique("cap"), authorization_id=paid.authorization_id,
            amount_minor=1_000, currency="USD"))
    acquirer.capture(lifecycle_pb2.CaptureRequest(
        request_id=unique("cap"), authorization_id=paid.authorization_id,
        amount_minor=4_250, currency="USD", final_capture=True))
    refund = acquirer.refund(lifecycle_pb2.RefundRequest(
        request_id=unique("ref"), authorization_id=paid.authorization_id,
        amount_minor=2_125, currency="USD"))
    assert refund.points_reversed == 2_125
    assert assert_ledger_balances(loyalty, rclient, prog, m).available_points == 2_875
    got = issuer.get_account(account_id=account).account
    assert (got.balance_minor, got.held_minor) == (1_000, 0)
    # More than the points are worth: declined, nothing held or spent.
    short = acquirer.authorize(purchase(card_token=card, amount_minor=3_000,
                                        payment_method=common_pb2.PAYMENT_METHOD_POINTS))
    assert short.iso_response_code == "51" and not short.authorization_id
    # A reversal before capture gives every point back.
    again = acquirer.authorize(purchase(card_token=card, amount_minor=875,
                                        payment_method=common_pb2.PAYMENT_METHOD_POINTS))
    assert balance(loyalty, prog, m).available_points == 2_000
    acquirer.reverse(lifecycle_pb2.ReverseRequest(request_id=unique("rev"),
                                                  authorization_id=again.authorization_id))
    assert assert_ledger_balances(loyalty, rclient, prog, m).available_points == 2_875
    with pytest.raises(InvalidArgumentError):
        acquirer.authorize(purchase(card_token=card, amount_minor=100, points_to_redeem=5,
                                    payment_method=common_pb2.PAYMENT_METHOD_POINTS))
    assert_reconciled(loyalty_redis)


def test_adjustment_limit_puts_the_member_on_fraud_hold(loyalty) -> None:
    program_id = unique("prog")
    loyalty.upsert_program(program=program(program_id, abuse_limits=L.PointsAbuseLimits(
        max_adjust_points_per_day=1000)))
    m = member(loyalty, program_id)
    loyalty.adjust(request_id=unique("a"), program_id=program_id, member_id=m,
                   points_delta=700, reason="goodwill")
    loyalty.adjust(request_id=unique("a"), program_id=program_id, member_id=m,
                   points_delta=-200, reason="correction")
    with pytest.raises(FailedPreconditionError, match="adjustment limit"):
        loyalty.adjust(request_id=unique("a"), program_id=program_id, member_id=m,
                       points_delta=101, reason="more goodwill")
    b = balance(loyalty, program_id, m)
    assert (b.available_points, b.suspension_state) == (500, L.SUSPENSION_STATE_FRAUD_HOLD)


def test_redemptions_from_every_channel_at_once_never_overdraw(issuer, acquirer, loyalty, prog,
                                                               payauth, rclient,
                                                               loyalty_redis) -> None:
    """Redeem calls, card purchases with points_to_redeem and purchases paid in points race
    for one member's 1,000 points."""
    _, card, m = linked_member(issuer, loyalty, prog, balance_minor=10**8)
    loyalty.adjust(request_id=unique("a"), program_id=prog, member_id=m, points_delta=1_000,
                   reason="seed")

    def spend(i: int) -> int:
        with LoyaltyClient(payauth.target, timeout=10) as lc, \
                AcquirerClient(payauth.target, timeout=10) as ac:
            if i % 3 == 0:
                try:
                    return lc.redeem(request_id=unique("r"), program_id=prog, member_id=m,
                                     points=60).points_redeemed
                except FailedPreconditionError:
                    return 0
            if i % 3 == 1:
                got = ac.authorize(purchase(card_token=card, amount_minor=10_000,
                                            points_to_redeem=60, mcc="5999"))
            else:
                got = ac.authorize(purchase(card_token=card, amount_minor=60, mcc="5999",
                                            payment_method=common_pb2.PAYMENT_METHOD_POINTS))
            return got.points_redeemed if got.iso_response_code == "00" else 0

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        spent = list(pool.map(spend, range(30)))
    assert sum(spent) == 960  # 16 of the 30 got their 60 points; the rest were refused
    b = assert_ledger_balances(loyalty, rclient, prog, m)
    assert b.available_points == 40
    assert_reconciled(loyalty_redis)


def test_a_challenge_completed_by_an_authorization_pays_once_on_replay(issuer, acquirer,
                                                                       loyalty, prog) -> None:
    _, card, m = linked_member(issuer, loyalty, prog)
    for _ in range(2):
        acquirer.authorize(purchase(card_token=card, amount_minor=450, mcc="5814"))
    third = purchase(card_token=card, amount_minor=450, mcc="5814")
    first = acquirer.authorize(third)
    again = acquirer.authorize(third)
    assert again.replayed and again.authorization_id == first.authorization_id
    bonuses = [e for e in ledger(loyalty, prog, m)
               if e.kind == L.LOYALTY_LEDGER_ENTRY_KIND_BONUS]
    assert [(e.challenge_id, e.points, e.authorization_id) for e in bonuses] == [
        ("coffee-week", 300, first.authorization_id)]
    b = balance(loyalty, prog, m)
    assert (b.available_points, b.pending_points) == (0, 12 + 300)  # pending until captured
    # Reversing the purchase that completed it takes the completion back too.
    acquirer.reverse(lifecycle_pb2.ReverseRequest(request_id=unique("rev"),
                                                  authorization_id=first.authorization_id))
    b = balance(loyalty, prog, m)
    assert (b.available_points, b.pending_points) == (0, 8)
    coffee = loyalty.get_balance(program_id=prog, member_id=m).challenges[0]
    assert (coffee.progress, coffee.completions) == (2, 0)
    # A new third coffee completes it again, and its capture posts purchase and bonus.
    done = acquirer.authorize(purchase(card_token=card, amount_minor=450, mcc="5814"))
    acquirer.capture(lifecycle_pb2.CaptureRequest(
        request_id=unique("cap"), authorization_id=done.authorization_id, amount_minor=450,
        currency="USD", final_capture=True))
    b = balance(loyalty, prog, m)
    assert (b.available_points, b.pending_points) == (4 + 300, 8)


def test_a_partial_approval_counts_as_a_purchase_and_as_its_amount(issuer, acquirer, loyalty,
                                                                   prog) -> None:
    account, card, m = linked_member(issuer, loyalty, prog, balance_minor=30_000)
    got = acquirer.authorize(purchase(card_token=card, amount_minor=60_000, mcc="4511",
                                      partial_ok=True))
    assert (got.iso_response_code, got.approved_amount_minor) == ("10", 30_000)
    assert got.points_earned == 300 + 1000  # base 300, 5x capped at 1,000 extra
    travel = {c.challenge_id: c for c in
              loyalty.get_balance(program_id=prog, member_id=m).challenges}["travel-500"]
    assert travel.progress == 30_000  # the amount approved, not the amount asked
    coffee = acquirer.authorize(purchase(card_token=card, amount_minor=500, mcc="5814",
                                         partial_ok=True))
    assert coffee.iso_response_code == "51"  # nothing left: declined, nothing counted


def test_a_failed_enrolment_leaves_the_member_free_to_enrol(issuer, loyalty, prog) -> None:
    member_id = unique("m")
    with pytest.raises(NotFoundError):
        loyalty.upsert_member(member=L.LoyaltyMember(program_id=prog, member_id=member_id,
                                                     account_id=unique("no-account")))
    account = open_account(issuer, 1_000)
    created = loyalty.upsert_member(member=L.LoyaltyMember(program_id=prog,
                                                           member_id=member_id,
                                                           account_id=account))
    assert created.created and created.balance.account_id == account


def test_a_program_counts_its_days_and_hours_in_its_time_zone(loyalty) -> None:
    """São Paulo (UTC-3): Saturday 01:00 UTC is Friday 22:00 there; the per-day cap starts
    again at local midnight, 03:00 UTC."""
    program_id = unique("prog")
    loyalty.upsert_program(program=program(
        program_id, tiers=[], time_zone="America/Sao_Paulo",
        earning_rules=[L.EarningRule(id="local-weekend", multiplier_bps=20_000,
                                     max_points_per_day=150,
                                     condition="txn.local_day_of_week in [0, 6]"),
                       L.EarningRule(id="late-night", bonus_points=7,
                                     condition="txn.local_hour >= 22")]))
    m = member(loyalty, program_id)
    friday_night = SATURDAY - 11 * 3600  # 01:00 UTC Saturday = 22:00 Friday in São Paulo
    got = earn(loyalty, program_id, m, 10_000, at=friday_night)
    assert (got.points_earned, list(got.rule_ids)) == (100 + 7, ["late-night"])
    saturday_early = SATURDAY - 9 * 3600 + 60  # 00:01 Saturday in São Paulo
    assert earn(loyalty, program_id, m, 10_000, at=saturday_early).points_earned == 200
    assert earn(loyalty, program_id, m, 10_000, at=saturday_early).points_earned == 150
    sunday_early = saturday_early + DAY  # a new local day: the cap starts again
    assert earn(loyalty, program_id, m, 10_000, at=sunday_early).points_earned == 200
    with pytest.raises(InvalidArgumentError):
        loyalty.upsert_program(program=program(unique("prog"), time_zone="Mars/Olympus"))
