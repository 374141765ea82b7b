"""Capture, reversal, refund, incremental authorization, extension and expiry end to end,
on a server whose clock the test moves (--clock-file)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator

import pytest
import redis

from payauth.clients import (
    AcquirerClient,
    AlreadyExistsError,
    AsyncAcquirerClient,
    FailedPreconditionError,
    InvalidArgumentError,
    IssuerClient,
    NotFoundError,
    PayauthError,
)
from payauth.server import keys
from payauth.v1 import common_pb2, lifecycle_pb2
from tests.conftest import authorize_request, issue_card, open_account, unique
from tests.servers import PayauthProcess, RedisProcess, ServerClock, wait_until

S = lifecycle_pb2
DAY = 24 * 3600


@pytest.fixture(scope="module")
def lifecycle_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path_factory.mktemp("lifecycle-redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def clock(tmp_path_factory: pytest.TempPathFactory) -> ServerClock:
    return ServerClock(tmp_path_factory.mktemp("clock") / "now")


@pytest.fixture(scope="module")
def payauth(lifecycle_redis: RedisProcess, clock: ServerClock,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[PayauthProcess]:
    process = PayauthProcess(
        tmp_path_factory.mktemp("lifecycle"), redis_url=lifecycle_redis.url, workers=2,
        extra=("--clock-file", str(clock.path), "--sweep-interval", "0.1")).start()
    yield process
    assert process.stop() == 0, process.output()


@pytest.fixture
def rclient(lifecycle_redis: RedisProcess) -> Iterator[redis.Redis]:
    client = lifecycle_redis.client()
    yield client
    client.close()


def approve(acquirer: AcquirerClient, clock: ServerClock, card: str, amount: int,
            mcc: str = "5411", **fields: object) -> str:
    response = acquirer.authorize(authorize_request(
        card_token=card, amount_minor=amount, mcc=mcc, timestamp=clock.timestamp(), **fields))
    assert response.iso_response_code in ("00", "10"), response
    return response.authorization_id


def account_state(issuer: IssuerClient, account: str) -> tuple[int, int, int]:
    got = issuer.get_account(account_id=account).account
    return got.balance_minor, got.held_minor, got.available_minor


def setup_hold(issuer: IssuerClient, acquirer: AcquirerClient, clock: ServerClock,
               amount: int = 10_000, balance: int = 100_000, mcc: str = "5411",
               ) -> tuple[str, str, str]:
    account = open_account(issuer, balance)
    card = issue_card(issuer, account)
    return account, card, approve(acquirer, clock, card, amount, mcc=mcc)


def test_full_capture_posts_the_amount(issuer, acquirer, clock) -> None:
    account, _, auth = setup_hold(issuer, acquirer, clock)
    response = acquirer.capture(request_id=unique("cap"), authorization_id=auth,
                                amount_minor=10_000, currency="USD", final_capture=True)
    assert response.status == S.AUTHORIZATION_STATUS_CAPTURED
    assert (response.total_captured_minor, response.remaining_hold_minor) == (10_000, 0)
    assert response.capture_id
    assert account_state(issuer, account) == (90_000, 0, 90_000)
    assert issuer.get_account(account_id=account).holds == []


def test_split_shipments_then_final_capture_releases_the_rest(issuer, acquirer, clock) -> None:
    account, _, auth = setup_hold(issuer, acquirer, clock)
    first = acquirer.capture(request_id=unique("cap"), authorization_id=auth,
                             amount_minor=3_000, currency="USD")
    assert first.status == S.AUTHORIZATION_STATUS_PARTIALLY_CAPTURED
    assert first.remaining_hold_minor == 7_000
    assert account_state(issuer, account) == (97_000, 7_000, 90_000)
    second = acquirer.capture(request_id=unique("cap"), authorization_id=auth,
                              amount_minor=2_000, currency="USD", capture_sequence_number=2,
                              capture_sequence_count=2)
    assert second.status == S.AUTHORIZATION_STATUS_CAPTURED
    assert (second.total_captured_minor, second.released_amount_minor) == (5_000, 5_000)
    assert account_state(issuer, account) == (95_000, 0, 95_000)


def test_tips_within_the_mcc_tolerance(issuer, acquirer, clock) -> None:
    account, _, auth = setup_hold(issuer, acquirer, clock, mcc="5812")  # restaurant: 20 %
    with pytest.raises(FailedPreconditionError) as refused:
        acquirer.capture(request_id=unique("cap"), authorization_id=auth, amount_minor=12_001,
                         currency="USD", tip_amount_minor=2_001, final_capture=True)
    assert [v.field for v in refused.value.field_violations] == ["amount_minor"]
    tipped = acquirer.capture(request_id=unique("cap"), authorization_id=auth,
                              amount_minor=12_000, currency="USD", tip_amount_minor=2_000,
                              final_capture=True)
    assert (tipped.over_captured_minor, tipped.status) == (2_000, S.AUTHORIZATION_STATUS_CAPTURED)
    assert account_state(issuer, account) == (88_000, 0, 88_000)

    _, _, grocery = setup_hold(issuer, acquirer, clock, mcc="5411")  # no tolerance
    with pytest.raises(FailedPreconditionError):
        acquirer.capture(request_id=unique("cap"), authorization_id=grocery,
                         amount_minor=10_001, currency="USD")


def test_capture_is_idempotent(issuer, acquirer, clock) -> None:
    account, _, auth = setup_hold(issuer, acquirer, clock)
    request = S.CaptureRequest(request_id=unique("cap"), authorization_id=auth,
                               amount_minor=4_000, currency="USD")
    first, second = acquirer.capture(request), acquirer.capture(request)
    assert (first.replayed, second.replayed) == (False, True)
    assert second.capture_id == first.capture_id
    assert account_state(issuer, account) == (96_000, 6_000, 90_000)
    changed = S.CaptureRequest(request_id=request.request_id, authorization_id=auth,
                               amount_minor=5_000, currency="USD")
    with pytest.raises(AlreadyExistsError):
        acquirer.capture(changed)


def _digest(client: redis.Redis) -> bytes:
    return client.execute_command("DEBUG", "DIGEST")


def test_refusals_change_nothing(issuer, acquirer, clock, rclient) -> None:
    _, _, auth = setup_hold(issuer, acquirer, clock)
    acquirer.reverse(request_id=unique("rev"), authorization_id=auth)
    before = _digest(rclient)
    refusals = [
        (FailedPreconditionError, lambda: acquirer.capture(
            request_id=unique("cap"), authorization_id=auth, amount_minor=1, currency="USD")),
        (NotFoundError, lambda: acquirer.capture(
            request_id=unique("cap"), authorization_id="A1-00000000000000ff", amount_minor=1,
            currency="USD")),
        (FailedPreconditionError, lambda: acquirer.refund(
            request_id=unique("ref"), authorization_id=auth, amount_minor=1, currency="USD")),
        (FailedPreconditionError, lambda: acquirer.reverse(
            request_id=unique("rev"), authorization_id=auth)),
        (InvalidArgumentError, lambda: acquirer.capture(
            request_id=unique("cap"), authorization_id="not-an-id", amount_minor=1,
            currency="USD")),
        (InvalidArgumentError, lambda: acquirer.refund(
            request_id=unique("ref"), authorization_id=auth, amount_minor=0, currency="USD")),
    ]
    for error, call in refusals:
        with pytest.raises(error):
            call()
    assert _digest(rclient) == before


def test_capture_in_another_currency_is_refused(issuer, acquirer, clock) -> None:
    _, _, auth = setup_hold(issuer, acquirer, clock)
    with pytest.raises(FailedPreconditionError) as refused:
        acquirer.capture(request_id=unique("cap"), authorization_id=auth, amount_minor=100,
                         currency="EUR")
    assert [v.field for v in refused.value.field_violations] == ["currency"]


def test_partial_and_full_reversal(issuer, acquirer, clock) -> None:
    account, _, auth = setup_hold(issuer, acquirer, clock)
    partial = acquirer.reverse(request_id=unique("rev"), authorization_id=auth,
                               amount_minor=4_000, currency="USD")
    assert (partial.status, partial.remaining_hold_minor) == (S.AUTHORIZATION_STATUS_HELD, 6_000)
    with pytest.raises(FailedPreconditionError):
        acquirer.reverse(request_id=unique("rev"), authorization_id=auth, amount_minor=6_001,
                         currency="USD")
    rest = acquirer.reverse(request_id=unique("rev"), authorization_id=auth)
    assert (rest.status, rest.total_reversed_minor) == (S.AUTHORIZATION_STATUS_REVERSED, 10_000)
    assert account_state(issuer, account) == (100_000, 0, 100_000)


def test_refunds_never_exceed_the_captured_total(issuer, acquirer, clock) -> None:
    account, _, auth = setup_hold(issuer, acquirer, clock)
    acquirer.capture(request_id=unique("cap"), authorization_id=auth, amount_minor=8_000,
                     currency="USD", final_capture=True)
    part = acquirer.refund(request_id=unique("ref"), authorization_id=auth, amount_minor=3_000,
                           currency="USD")
    assert (part.status, part.refundable_remaining_minor) == (
        S.AUTHORIZATION_STATUS_PARTIALLY_REFUNDED, 5_000)
    with pytest.raises(FailedPreconditionError):
        acquirer.refund(request_id=unique("ref"), authorization_id=auth, amount_minor=5_001,
                        currency="USD")
    rest = acquirer.refund(request_id=unique("ref"), authorization_id=auth, amount_minor=5_000,
                           currency="USD")
    assert rest.status == S.AUTHORIZATION_STATUS_REFUNDED
    assert account_state(issuer, account) == (100_000, 0, 100_000)


def test_credit_line_capture_and_refund(issuer, acquirer, clock) -> None:
    account = open_account(issuer, balance=0, kind=common_pb2.ACCOUNT_KIND_CREDIT, limit=50_000)
    card = issue_card(issuer, account)
    auth = approve(acquirer, clock, card, 20_000)
    acquirer.capture(request_id=unique("cap"), authorization_id=auth, amount_minor=20_000,
                     currency="USD", final_capture=True)
    assert account_state(issuer, account) == (20_000, 0, 30_000)  # owed 200.00
    acquirer.refund(request_id=unique("ref"), authorization_id=auth, amount_minor=5_000,
                    currency="USD")
    assert account_state(issuer, account) == (15_000, 0, 35_000)


def test_incremental_authorization_raises_the_same_hold(issuer, acquirer, clock) -> None:
    account, card, auth = setup_hold(issuer, acquirer, clock, amount=50_000, mcc="7011")
    more = acquirer.authorize(authorize_request(
        card_token=card, amount_minor=30_000, mcc="7011", timestamp=clock.timestamp(),
        original_authorization_id=auth))
    assert (more.iso_response_code, more.authorization_id, more.approved_amount_minor) == (
        "00", auth, 30_000)
    got = issuer.get_account(account_id=account)
    assert [(h.authorization_id, h.amount_minor) for h in got.holds] == [(auth, 80_000)]
    too_much = acquirer.authorize(authorize_request(
        card_token=card, amount_minor=30_000, mcc="7011", timestamp=clock.timestamp(),
        original_authorization_id=auth))
    assert too_much.iso_response_code == "51"
    capture = acquirer.capture(request_id=unique("cap"), authorization_id=auth,
                               amount_minor=80_000, currency="USD", final_capture=True)
    assert capture.total_captured_minor == 80_000
    closed = acquirer.authorize(authorize_request(
        card_token=card, amount_minor=1, mcc="7011", timestamp=clock.timestamp(),
        original_authorization_id=auth))
    assert closed.iso_response_code == "12"
    _, other_card, _ = setup_hold(issuer, acquirer, clock)
    foreign = acquirer.authorize(authorize_request(
        card_token=other_card, amount_minor=1, timestamp=clock.timestamp(),
        original_authorization_id=auth))
    assert foreign.iso_response_code == "12"


def test_extension_within_the_maximum(issuer, acquirer, clock) -> None:
    account, _, auth = setup_hold(issuer, acquirer, clock, mcc="5411")  # 7-day hold
    extended = acquirer.extend_hold(request_id=unique("ext"), authorization_id=auth,
                                    expires_at=clock.timestamp(20 * DAY))
    assert extended.expires_at.ToSeconds() == clock.timestamp(20 * DAY).ToSeconds()
    with pytest.raises(FailedPreconditionError):
        acquirer.extend_hold(request_id=unique("ext"), authorization_id=auth,
                             expires_at=clock.timestamp(40 * DAY))
    holds = issuer.get_account(account_id=account).holds
    assert holds[0].expires_at.ToSeconds() == clock.timestamp(20 * DAY).ToSeconds()


def test_default_hold_lifetimes_by_mcc(issuer, acquirer, clock) -> None:
    account = open_account(issuer, 100_000)
    card = issue_card(issuer, account)
    approve(acquirer, clock, card, 100, mcc="5411")
    approve(acquirer, clock, card, 100, mcc="7011")
    lifetimes = sorted(round((h.expires_at.ToSeconds() - h.created_at.ToSeconds()) / DAY)
                       for h in issuer.get_account(account_id=account).holds)
    assert lifetimes == [7, 31]


def test_expired_holds_are_released_once(issuer, acquirer, clock, rclient) -> None:
    account, _, auth = setup_hold(issuer, acquirer, clock)
    clock.advance(8 * DAY)
    wait_until(lambda: account_state(issuer, account)[1] == 0, 15, "the sweeper")
    with pytest.raises(FailedPreconditionError, match="EXPIRED"):
        acquirer.capture(request_id=unique("cap"), authorization_id=auth, amount_minor=1,
                         currency="USD")
    entries = rclient.xrange(keys.ledger(keys.partition_of(account), account))
    assert Counter(f[b"kind"] for _, f in entries)[b"expiry"] == 1


def test_reversal_before_its_authorization(issuer, acquirer, clock) -> None:
    account = open_account(issuer, 100_000)
    card = issue_card(issuer, account)
    request = authorize_request(card_token=card, amount_minor=5_000, timestamp=clock.timestamp())
    early = acquirer.reverse(request_id=unique("rev"), original_request_id=request.request_id,
                             reason=S.REVERSAL_REASON_TIMEOUT)
    assert early.status == S.AUTHORIZATION_STATUS_REVERSED_BEFORE_AUTHORIZATION
    assert not early.authorization_found
    late = acquirer.authorize(request)
    assert (late.decision, late.iso_response_code) == (common_pb2.DECISION_DECLINE, "05")
    assert account_state(issuer, account) == (100_000, 0, 100_000)


def test_timeout_reversal_after_its_authorization(issuer, acquirer, clock) -> None:
    account = open_account(issuer, 100_000)
    card = issue_card(issuer, account)
    request = authorize_request(card_token=card, amount_minor=5_000, timestamp=clock.timestamp())
    approved = acquirer.authorize(request)
    reversal = acquirer.reverse(request_id=unique("rev"), original_request_id=request.request_id,
                                reason=S.REVERSAL_REASON_TIMEOUT)
    assert (reversal.status, reversal.authorization_id, reversal.reversed_amount_minor) == (
        S.AUTHORIZATION_STATUS_REVERSED, approved.authorization_id, 5_000)
    assert account_state(issuer, account) == (100_000, 0, 100_000)


def _outcome(call) -> str:  # noqa: ANN001
    async def run() -> str:
        try:
            await call
            return "ok"
        except PayauthError as exc:
            return exc.code.name
    return run()


def test_early_reversal_race_never_leaves_a_hold(payauth, issuer, clock) -> None:
    account = open_account(issuer, 10**9)
    card = issue_card(issuer, account)

    async def race() -> list[tuple[str, str]]:
        async with AsyncAcquirerClient(payauth.target, timeout=10) as a, \
                AsyncAcquirerClient(payauth.target, timeout=10,
                                    options=(("grpc.use_local_subchannel_pool", 1),)) as b:
            results = []
            for _ in range(40):
                request = authorize_request(card_token=card, amount_minor=100,
                                            timestamp=clock.timestamp())
                auth, rev = await asyncio.gather(
                    a.authorize(request),
                    b.reverse(request_id=unique("rev"), original_request_id=request.request_id))
                results.append((auth.iso_response_code, S.AuthorizationStatus.Name(rev.status)))
            return results

    results = asyncio.run(race())
    assert set(results) <= {("00", "AUTHORIZATION_STATUS_REVERSED"),
                            ("05", "AUTHORIZATION_STATUS_REVERSED_BEFORE_AUTHORIZATION")}
    assert account_state(issuer, account)[1] == 0


def test_capture_reverse_and_expiry_race_on_one_hold(payauth, issuer, acquirer, clock) -> None:
    account = open_account(issuer, 10**9)
    card = issue_card(issuer, account)
    auths = [approve(acquirer, clock, card, 1_000) for _ in range(20)]
    clock.advance(7 * DAY + 1)  # due now: the sweepers join the race

    async def race(auth: str) -> tuple[str, str]:
        async with AsyncAcquirerClient(payauth.target, timeout=10) as client:
            return tuple(await asyncio.gather(
                _outcome(client.capture(request_id=unique("cap"), authorization_id=auth,
                                        amount_minor=1_000, currency="USD",
                                        final_capture=True)),
                _outcome(client.reverse(request_id=unique("rev"), authorization_id=auth))))

    async def all_races() -> list[tuple[str, str]]:
        return await asyncio.gather(*(race(a) for a in auths))

    outcomes = asyncio.run(all_races())
    wait_until(lambda: account_state(issuer, account)[1] == 0, 15, "the sweeper")
    captured = sum(o[0] == "ok" for o in outcomes)
    for capture_outcome, reverse_outcome in outcomes:
        # At most one of capture and reversal won; the loser was told why.
        assert (capture_outcome, reverse_outcome) != ("ok", "ok")
        assert {capture_outcome, reverse_outcome} <= {"ok", "FAILED_PRECONDITION"}
    balance = account_state(issuer, account)[0]
    assert balance == 10**9 - captured * 1_000


def test_two_servers_sweeping_release_each_hold_once(lifecycle_redis, payauth, issuer, acquirer,
                                                     clock, rclient, tmp_path) -> None:
    # Another node: its own data folder, the same Redis and PAN key.
    other = PayauthProcess(tmp_path / "other", redis_url=lifecycle_redis.url, workers=2,
                           extra=("--clock-file", str(clock.path), "--sweep-interval", "0.05",
                                  "--pan-key-file", str(payauth.data_dir / "pan.key")),
                           ).start()
    try:
        account = open_account(issuer, 10**9)
        card = issue_card(issuer, account)
        auths = {approve(acquirer, clock, card, 100) for _ in range(50)}
        clock.advance(7 * DAY + 1)
        wait_until(lambda: account_state(issuer, account)[1] == 0, 20, "the sweepers")
    finally:
        assert other.stop() == 0
    entries = rclient.xrange(keys.ledger(keys.partition_of(account), account))
    expiries = Counter(f[b"auth_id"].decode() for _, f in entries if f[b"kind"] == b"expiry")
    assert set(expiries) == auths
    assert set(expiries.values()) == {1}
    events = rclient.xrange(keys.events(keys.partition_of(account)))
    expiry_events = Counter(f[b"auth_id"].decode() for _, f in events
                            if f[b"kind"] == b"expiry" and f[b"auth_id"].decode() in auths)
    assert set(expiry_events.values()) == {1} and len(expiry_events) == 50


def test_reconcile_while_the_sweeper_releases_holds(payauth, lifecycle_redis, issuer, acquirer,
                                                    clock) -> None:
    """Reconciliation reads each account's books at one instant: holds the sweeper releases
    while it runs are never reported as a difference."""
    from payauth.server.reconcile import reconcile
    from payauth.server.store import Store

    account = open_account(issuer, 10**9)
    card = issue_card(issuer, account)
    for _ in range(150):
        approve(acquirer, clock, card, 100)
    clock.advance(7 * DAY + 1)

    async def reconcile_until_released() -> tuple[int, list]:
        store = Store.connect(lifecycle_redis.url, cluster=False, timeout_s=10)
        runs, found = 0, []
        try:
            while True:
                books = await store.account_books(account)
                found += (await reconcile(store))[1]
                runs += 1
                if books.held == 0:
                    return runs, found
        finally:
            await store.close()

    runs, found = asyncio.run(asyncio.wait_for(reconcile_until_released(), 30))
    assert found == [] and runs > 1


def test_lifecycle_events_carry_the_authorization(issuer, acquirer, clock, rclient) -> None:
    account, _, auth = setup_hold(issuer, acquirer, clock)
    acquirer.capture(request_id=unique("cap"), authorization_id=auth, amount_minor=2_000,
                     currency="USD")
    acquirer.reverse(request_id=unique("rev"), authorization_id=auth)
    acquirer.refund(request_id=unique("ref"), authorization_id=auth, amount_minor=500,
                    currency="USD")
    events = rclient.xrange(keys.events(keys.partition_of(account)))
    kinds = [f[b"kind"] for _, f in events if f.get(b"auth_id", b"").decode() == auth]
    assert kinds == [b"authorization", b"capture", b"reversal", b"refund"]


def test_reconcile_and_settlement(payauth, lifecycle_redis, issuer, acquirer, clock, tmp_path,
                                  rclient) -> None:
    import csv
    import subprocess
    import sys

    import pyarrow.parquet as pq

    account, _, auth = setup_hold(issuer, acquirer, clock)
    merchant = unique("m")
    card = issue_card(issuer, account)
    tip = approve(acquirer, clock, card, 1_000, merchant_id=merchant)
    acquirer.capture(request_id=unique("cap"), authorization_id=tip, amount_minor=1_000,
                     currency="USD", final_capture=True)
    acquirer.refund(request_id=unique("ref"), authorization_id=tip, amount_minor=250,
                    currency="USD")
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "payauth.server", *args, "--redis-url",
                               lifecycle_redis.url], capture_output=True, text=True, timeout=120)

    clean = run("reconcile")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert " 0 discrepancy" in clean.stdout

    day = time.strftime("%Y-%m-%d", time.gmtime(clock.now))
    exported = run("settlement", "export", "--date", day, "--out", str(tmp_path))
    assert exported.returncode == 0, exported.stderr
    rows = [r for r in csv.DictReader(open(tmp_path / f"settlement-{day}.csv"))
            if r["merchant_id"] == merchant]
    assert [(r["kind"], r["amount_minor"]) for r in rows] == [("capture", "1000"),
                                                              ("refund", "250")]
    table = pq.read_table(tmp_path / f"settlement-{day}.parquet").to_pylist()
    assert [r["amount_minor"] for r in table if r["merchant_id"] == merchant] == [1000, 250]
    totals = [r for r in csv.DictReader(open(tmp_path / f"settlement-{day}-merchants.csv"))
              if r["merchant_id"] == merchant]
    assert totals[0]["net_minor"] == "750"

    rclient.hincrby(keys.account(keys.partition_of(account), account), "held", 1)
    try:
        broken = run("reconcile")
        assert broken.returncode == 1
        assert account in broken.stdout
    finally:
        rclient.hincrby(keys.account(keys.partition_of(account), account), "held", -1)


def test_timeout_reversal_of_an_increment_releases_only_the_increment(issuer, acquirer,
                                                                      clock) -> None:
    account, card, auth = setup_hold(issuer, acquirer, clock, amount=10_000, balance=25_000,
                                     mcc="7011")
    declined = authorize_request(card_token=card, amount_minor=50_000, mcc="7011",
                                 timestamp=clock.timestamp(), original_authorization_id=auth)
    assert acquirer.authorize(declined).iso_response_code == "51"
    nothing = acquirer.reverse(request_id=unique("rev"), original_request_id=declined.request_id)
    assert nothing.status == S.AUTHORIZATION_STATUS_DECLINED
    assert account_state(issuer, account) == (25_000, 10_000, 15_000)

    increment = authorize_request(card_token=card, amount_minor=5_000, mcc="7011",
                                  timestamp=clock.timestamp(), original_authorization_id=auth)
    assert acquirer.authorize(increment).iso_response_code == "00"
    assert account_state(issuer, account)[1] == 15_000
    undone = acquirer.reverse(request_id=unique("rev"), original_request_id=increment.request_id)
    assert (undone.reversed_amount_minor, undone.remaining_hold_minor) == (5_000, 10_000)
    assert account_state(issuer, account) == (25_000, 10_000, 15_000)


def test_a_lifecycle_request_id_cannot_be_reused_for_an_authorization(issuer, acquirer,
                                                                      clock) -> None:
    _, card, auth = setup_hold(issuer, acquirer, clock)
    capture_id = unique("cap")
    acquirer.capture(request_id=capture_id, authorization_id=auth, amount_minor=100,
                     currency="USD")
    with pytest.raises(AlreadyExistsError):
        acquirer.authorize(authorize_request(card_token=card, request_id=capture_id,
                                             timestamp=clock.timestamp()))


def test_reversal_in_another_currency_is_refused(issuer, acquirer, clock) -> None:
    account, _, auth = setup_hold(issuer, acquirer, clock)
    with pytest.raises(FailedPreconditionError):
        acquirer.reverse(request_id=unique("rev"), authorization_id=auth, amount_minor=100,
                         currency="EUR")
    assert account_state(issuer, account)[1] == 10_000


def test_a_sweeper_killed_mid_sweep_leaves_nothing_half_done(lifecycle_redis, payauth, issuer,
                                                            acquirer, clock, rclient,
                                                            tmp_path) -> None:
    import signal
    import subprocess

    other = PayauthProcess(tmp_path / "other", redis_url=lifecycle_redis.url, workers=1,
                           extra=("--clock-file", str(clock.path), "--sweep-interval", "0.01",
                                  "--pan-key-file", str(payauth.data_dir / "pan.key")),
                           ).start()
    account = open_account(issuer, 10**9)
    card = issue_card(issuer, account)
    auths = {approve(acquirer, clock, card, 100) for _ in range(150)}
    clock.advance(7 * DAY + 1)
    time.sleep(0.05)
    # The whole node dies at once, mid-sweep: its worker first, then its supervisor.
    subprocess.run(["pkill", "-KILL", "-P", str(other.process.pid)], check=False)
    other.stop(signal.SIGKILL)
    wait_until(lambda: account_state(issuer, account)[1] == 0, 20, "the surviving sweepers")
    entries = rclient.xrange(keys.ledger(keys.partition_of(account), account))
    expiries = Counter(f[b"auth_id"].decode() for _, f in entries if f[b"kind"] == b"expiry")
    assert set(expiries) == auths and set(expiries.values()) == {1}
