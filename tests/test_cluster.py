"""The same server, unchanged, on a local 3-master Redis Cluster: every commit's keys
share one slot, so the Function runs atomically on one shard."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator

import pytest

from payauth.clients import AcquirerClient, AlreadyExistsError, IssuerClient
from payauth.server import keys
from tests.conftest import authorize_request, issue_card, open_account, random_pan, unique
from tests.servers import PayauthProcess, RedisCluster
from tests.test_concurrency import _authorize_all

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    started = RedisCluster(tmp_path_factory.mktemp("cluster")).start()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def server(cluster: RedisCluster, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[PayauthProcess]:
    process = PayauthProcess(tmp_path_factory.mktemp("payauth-cluster"), redis_url=cluster.url,
                             cluster=True, workers=2).start()
    yield process
    assert process.stop() == 0, process.output()


def test_commit_keys_share_one_slot(cluster: RedisCluster) -> None:
    client = cluster.nodes[0].client()
    for n in range(50):
        account = unique(f"acct{n}")
        p = keys.partition_of(account)
        commit_keys = [keys.account(p, account), keys.idempotency(p, unique("req")),
                       keys.events(p), keys.account_holds(p, account),
                       keys.hold(p, f"A{p}-0011223344556677"), keys.expiries(p)]
        slots = {client.execute_command("CLUSTER KEYSLOT", k) for k in commit_keys}
        assert len(slots) == 1, commit_keys
    client.close()


def test_function_library_is_on_every_primary(cluster: RedisCluster,
                                              server: PayauthProcess) -> None:
    for node in cluster.nodes:
        client = node.client()
        libraries = client.execute_command("FUNCTION", "LIST", "LIBRARYNAME", "payauth")
        assert libraries, f"no payauth library on port {node.port}"
        client.close()


def test_authorize_on_the_cluster(server: PayauthProcess) -> None:
    with IssuerClient(server.target, timeout=10) as issuer, \
            AcquirerClient(server.target, timeout=10) as acquirer:
        accounts = [open_account(issuer, 5_000) for _ in range(6)]  # several shards
        for account in accounts:
            pan = random_pan()
            issue_card(issuer, account, pan=pan)
            request = authorize_request(pan=pan, amount_minor=3_000)
            first = acquirer.authorize(request)
            assert first.iso_response_code == "00"
            assert acquirer.authorize(request).replayed
            assert acquirer.authorize(authorize_request(pan=pan, amount_minor=3_000)
                                      ).iso_response_code == "51"
            partial = acquirer.authorize(authorize_request(pan=pan, amount_minor=3_000,
                                                           partial_ok=True))
            assert (partial.iso_response_code, partial.approved_amount_minor) == ("10", 2_000)
            got = issuer.get_account(account_id=account)
            assert (got.account.held_minor, len(got.holds)) == (5_000, 2)
            with pytest.raises(AlreadyExistsError):
                acquirer.authorize(authorize_request(pan=pan, amount_minor=1,
                                                     request_id=request.request_id))
        assert acquirer.authorize(authorize_request(pan=random_pan())).iso_response_code == "14"


def test_concurrent_authorizations_on_the_cluster(server: PayauthProcess) -> None:
    with IssuerClient(server.target, timeout=10) as issuer:
        account = open_account(issuer, 50 * 100)
        card = issue_card(issuer, account)
    requests = [authorize_request(card_token=card, amount_minor=100) for _ in range(100)]
    responses = asyncio.run(_authorize_all(server.target, requests + requests[:20]))
    assert Counter(r.iso_response_code for r in responses[:100]) == {"00": 50, "51": 50}
    assert sum(r.replayed for r in responses) == 20
    with IssuerClient(server.target, timeout=10) as issuer:
        got = issuer.get_account(account_id=account)
    assert (got.account.available_minor, len(got.holds)) == (0, 50)




def test_loyalty_on_the_cluster(server: PayauthProcess) -> None:
    """Enrolment, an authorization that earns, its capture, a redemption, the ledger and the
    program figures: the loyalty Functions work unchanged on a Redis Cluster."""
    from payauth.clients import LoyaltyClient
    from payauth.v1 import loyalty_pb2 as lp

    program_id = unique("prog")
    with IssuerClient(server.target) as issuer, AcquirerClient(server.target) as acquirer, \
            LoyaltyClient(server.target) as loyalty:
        loyalty.upsert_program(program=lp.LoyaltyProgram(
            program_id=program_id, version=1, points_currency="PTS", home_currency="USD",
            point_values=[lp.PointValue(currency="USD", value_mantissa=1)],
            earn_rates=[lp.EarnRate(currency="USD", points_mantissa=1, points_scale=2)],
            earning_rules=[lp.EarningRule(id="grocery", multiplier_bps=20_000,
                                          condition='txn.mcc == "5411"')]))
        members = []
        for _ in range(6):  # spread over the shards
            account = open_account(issuer, 100_000)
            card = issue_card(issuer, account)
            member_id = unique("m")
            loyalty.upsert_member(member=lp.LoyaltyMember(
                program_id=program_id, member_id=member_id, account_id=account))
            approved = acquirer.authorize(authorize_request(card_token=card,
                                                            amount_minor=10_000))
            assert approved.points_earned == 200
            acquirer.capture(request_id=unique("cap"),
                             authorization_id=approved.authorization_id, amount_minor=10_000,
                             currency="USD", final_capture=True)
            loyalty.redeem(request_id=unique("r"), program_id=program_id,
                           member_id=member_id, points=50)
            members.append(member_id)
        for member_id in members:
            balance = loyalty.get_balance(program_id=program_id, member_id=member_id).balance
            assert (balance.available_points, balance.sequence) == (150, 3)
        figures = loyalty.get_program_figures(program_id=program_id).total
        assert (figures.members_enrolled, figures.points_issued, figures.points_redeemed) == (
            6, 1200, 300)
