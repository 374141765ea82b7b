"""Issuer policies and scoring models loaded through the API decide Authorize: a bad
update is refused with its rule, line and column while the stream stays open, versions
only move forward, every worker swaps the new policy in, and the risk score is the
model's own prediction."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from payauth.clients import (
    AcquirerClient,
    AsyncAcquirerClient,
    FailedPreconditionError,
    InvalidArgumentError,
    IssuerClient,
)
from payauth.server import keys
from payauth.v1 import common_pb2, events_pb2, policy_pb2
from tests.conftest import authorize_request, issue_card, open_account
from tests.servers import PayauthProcess, RedisProcess, wait_until

P = policy_pb2


def rule(rule_id: str, condition: str, action: int, reason: str, **fields: object
         ) -> policy_pb2.PolicyRule:
    fields.setdefault("mode", P.POLICY_RULE_MODE_ACTIVE)
    return P.PolicyRule(id=rule_id, condition=condition, action=action, reason=reason,
                        **fields)


RULES = [
    rule("big-ecom", 'txn.amount_minor > 50000 && txn.channel == "ECOM"',
         P.POLICY_RULE_ACTION_DECLINE, "large card-not-present purchase",
         response_code=common_pb2.RESPONSE_CODE_59_SUSPECTED_FRAUD, priority=10),
    rule("sca", 'txn.three_ds == "NOT_ATTEMPTED" && txn.amount_minor > 20000',
         P.POLICY_RULE_ACTION_STEP_UP, "strong authentication above 200.00",
         response_code=common_pb2.RESPONSE_CODE_1A_ADDITIONAL_AUTHENTICATION_REQUIRED,
         priority=20),
    rule("watch-grocery", 'txn.mcc in ["5411", "5412"]', P.POLICY_RULE_ACTION_TAG,
         "grocery purchase", tag="grocery", priority=30, mode=P.POLICY_RULE_MODE_SHADOW),
]


def update(version: int, rules: list[policy_pb2.PolicyRule], update_id: str = ""
           ) -> policy_pb2.PolicyUpdate:
    return P.PolicyUpdate(update_id=update_id or f"u{version}", policy_id="issuer-main",
                          version=version, evaluation=P.EVALUATION_SEMANTICS_FIRST_MATCH,
                          rules=rules)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PayauthProcess]:
    redis_server = RedisProcess(tmp_path_factory.mktemp("policy-redis")).start()
    process = PayauthProcess(tmp_path_factory.mktemp("policies"), redis_url=redis_server.url,
                             workers=2).start()
    process.redis = redis_server
    yield process
    assert process.stop() == 0, process.output()
    redis_server.stop()


def stream(server: PayauthProcess, updates: list[policy_pb2.PolicyUpdate]
           ) -> list[policy_pb2.PolicyAck]:
    with IssuerClient(server.target, timeout=30) as issuer:
        return list(issuer.stream_policies(iter(updates), timeout=60))


def test_policy_stream_acks_each_update_and_stays_open(server: PayauthProcess) -> None:
    bad = update(2, [rule("broken", "txn.amount_minor >", P.POLICY_RULE_ACTION_DECLINE,
                          "x", response_code=common_pb2.RESPONSE_CODE_05_DO_NOT_HONOUR)])
    acks = stream(server, [update(1, RULES), bad, update(1, RULES[:1], "stale"),
                           update(1, RULES, "again"), update(2, RULES)])
    assert [a.accepted for a in acks] == [True, False, False, True, True]
    assert acks[1].reject_reason == P.POLICY_REJECT_REASON_COMPILE_ERROR
    (error,) = acks[1].errors
    assert (error.rule_id, error.line, error.column > 0) == ("broken", 1, True)
    assert acks[2].reject_reason == P.POLICY_REJECT_REASON_STALE_VERSION
    assert acks[2].active_version == 1
    assert acks[3].replayed
    assert acks[4].active_version == 2

    dry = [update(2, RULES, "dry-stale"), update(9, RULES, "dry-new")]
    for u in dry:
        u.validate_only = True
    stale, fresh = stream(server, dry)
    assert (stale.accepted, stale.reject_reason, stale.active_version) == (
        False, P.POLICY_REJECT_REASON_STALE_VERSION, 2)
    assert (fresh.accepted, fresh.active_version) == (True, 2)  # checked, not stored


def test_the_policy_decides_on_every_worker(server: PayauthProcess) -> None:
    stream(server, [update(3, RULES)])
    with IssuerClient(server.target) as issuer:
        account = open_account(issuer, 10**9)
        card = issue_card(issuer, account)

    async def decide(request) -> list:  # noqa: ANN001
        clients = [AsyncAcquirerClient(server.target,
                                       options=(("grpc.use_local_subchannel_pool", 1),))
                   for _ in range(4)]
        try:
            return await asyncio.gather(*(c.authorize(authorize_request(**request))
                                          for c in clients for _ in range(3)))
        finally:
            for c in clients:
                await c.close()

    def every_worker_declines() -> bool:
        answers = asyncio.run(decide(dict(card_token=card, amount_minor=60_000,
                                          channel=common_pb2.CHANNEL_ECOM)))
        return all(a.iso_response_code == "59" for a in answers)

    wait_until(every_worker_declines, 10, "every worker to run policy v3")

    with AcquirerClient(server.target) as acquirer:
        declined = acquirer.authorize(authorize_request(
            card_token=card, amount_minor=60_000, channel=common_pb2.CHANNEL_ECOM))
        assert (declined.decision, declined.reasons[0].rule_id) == (
            common_pb2.DECISION_DECLINE, "big-ecom")
        step_up = acquirer.authorize(authorize_request(card_token=card, amount_minor=30_000))
        assert (step_up.decision, step_up.iso_response_code) == (common_pb2.DECISION_STEP_UP,
                                                                 "1A")
        approved = acquirer.authorize(authorize_request(card_token=card, amount_minor=100))
        assert approved.iso_response_code == "00"
        assert [(r.rule_id, r.shadow) for r in approved.reasons] == [("watch-grocery", True)]
    with IssuerClient(server.target) as issuer:
        # Only the approval holds anything.
        assert issuer.get_account(account_id=account).account.held_minor == 100


def _train(tmp_path: Path) -> tuple[object, bytes]:
    import lightgbm as lgb

    rng = np.random.default_rng(7)
    x = np.column_stack([rng.integers(1, 100_000, 3_000), rng.integers(0, 10**6, 3_000)])
    y = (x[:, 0] > 40_000).astype(int) ^ (rng.random(3_000) < 0.1)
    booster = lgb.train({"objective": "binary", "num_leaves": 8, "verbose": -1,
                         "min_data_in_leaf": 20},
                        lgb.Dataset(x.astype(float), y,
                                    feature_name=["txn.amount_minor",
                                                  "account.available_minor"]),
                        num_boost_round=20)
    return booster, booster.model_to_string().encode()


def test_model_score_is_the_library_prediction(server: PayauthProcess, tmp_path: Path) -> None:
    booster, dump = _train(tmp_path)
    with IssuerClient(server.target, timeout=30) as issuer:
        loaded = issuer.load_model(model_id="risk", version=1,
                                   format=P.MODEL_FORMAT_LIGHTGBM_TEXT, model=dump,
                                   activate=True)
        assert (loaded.active, loaded.num_trees, loaded.num_features) == (True, 20, 2)
        with pytest.raises(FailedPreconditionError):
            issuer.load_model(model_id="risk", version=1, format=P.MODEL_FORMAT_LIGHTGBM_TEXT,
                              model=dump + b"\n", activate=True)
        with pytest.raises(InvalidArgumentError) as bad:
            issuer.load_model(model_id="risk", version=2,
                              format=P.MODEL_FORMAT_LIGHTGBM_TEXT, model=b"not a model")
        assert [v.field for v in bad.value.field_violations] == ["model"]
        empty = issue_card(issuer, open_account(issuer, 0))
        account = open_account(issuer, 500_000)
        card = issue_card(issuer, account)

    def request(card_token: str, amount: int):  # noqa: ANN202
        return authorize_request(card_token=card_token, amount_minor=amount, mcc="5999",
                                 channel=common_pb2.CHANNEL_POS,
                                 three_ds=common_pb2.THREE_DS_RESULT_AUTHENTICATED)

    def expected(amount: int, available: int) -> float:
        return booster.predict(np.array([[amount, available]], dtype=float))[0]

    async def every_worker_scores() -> bool:
        # An empty account: declined for funds, so probing holds nothing.
        clients = [AsyncAcquirerClient(server.target,
                                       options=(("grpc.use_local_subchannel_pool", 1),))
                   for _ in range(4)]
        try:
            answers = await asyncio.gather(*(c.authorize(request(empty, 1_000))
                                             for c in clients))
        finally:
            for c in clients:
                await c.close()
        return all(abs(a.risk_score - expected(1_000, 0)) < 1e-9 for a in answers)

    wait_until(lambda: asyncio.run(every_worker_scores()), 10, "every worker to load model v1")
    with AcquirerClient(server.target) as acquirer, IssuerClient(server.target) as issuer:
        for amount in (100, 45_000, 90_000):
            available = issuer.get_account(account_id=account).account.available_minor
            response = acquirer.authorize(request(card, amount))
            assert abs(response.risk_score - expected(amount, available)) < 1e-9


def test_decision_event_carries_reasons_and_score(server: PayauthProcess) -> None:
    stream(server, [update(4, RULES)])
    with IssuerClient(server.target) as issuer:
        account = open_account(issuer, 10**9)
        card = issue_card(issuer, account)
    with AcquirerClient(server.target) as acquirer:
        def declined() -> bool:
            return acquirer.authorize(authorize_request(
                card_token=card, amount_minor=60_000, channel=common_pb2.CHANNEL_ECOM)
            ).iso_response_code == "59"
        wait_until(declined, 10, "policy v4")
    client = server.redis.client()
    events = [events_pb2.DecisionEvent.FromString(f[b"event"])
              for _, f in client.xrange(keys.events(keys.partition_of(account)))
              if b"event" in f]
    client.close()
    mine = [e for e in events if e.account_id == account]
    assert mine and mine[-1].response.reasons[0].rule_id == "big-ecom"
    assert mine[-1].response.risk_score >= 0
