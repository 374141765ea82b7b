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


# The server's risk stage (`DecisionCore.assess` over the worker's `DecisionContextFiller`,
# which gathers the context in the core) against the reference: a DecisionContext message
# built field by field, filled by `DecisionContextBuilder.from_message`, the model's
# features by `MODEL_FEATURES`, and the policy's full `evaluate` result.

EVERY_FIELD_RULES = [
    rule("enum-names", 'txn.channel == "ECOM" && txn.payment_method == "CARD" '
         '&& card.status == "ACTIVE"', P.POLICY_RULE_ACTION_STEP_UP, "names",
         priority=5),
    rule("three-ds", 'txn.three_ds in ["FAILED", "UNSPECIFIED"]', P.POLICY_RULE_ACTION_DECLINE,
         "3ds", response_code=common_pb2.RESPONSE_CODE_05_DO_NOT_HONOUR, priority=6),
    rule("account", 'account.kind == "CREDIT" && account.status != "ACTIVE" '
         '&& account.available_minor < account.credit_limit_minor / 2',
         P.POLICY_RULE_ACTION_DECLINE, "account",
         response_code=common_pb2.RESPONSE_CODE_57_NOT_PERMITTED_TO_CARDHOLDER, priority=7),
    rule("presence", "has(txn.timestamp) && has(card.token) && !has(features.ip_txn_count_1h)"
         " && features.card_txn_count_1h == 0 && card.country == '' && size(watch_hits) == 0",
         P.POLICY_RULE_ACTION_ADD_TO_SCORE, "presence", score_delta=0.125, priority=8),
    rule("strings", 'txn.mcc == merchant.mcc && txn.merchant_id == merchant.id '
         '&& merchant.country == txn.merchant_country && txn.currency == account.currency '
         '&& txn.device_id.startsWith("d1") && txn.ip != "" && card.token.size() > 0',
         P.POLICY_RULE_ACTION_TAG, "strings", tag="strings", priority=9),
    rule("numbers", "txn.amount_minor == txn.account_amount_minor && txn.partial_ok "
         "&& txn.points_to_redeem > 10 && card.expiry_year * 100 + card.expiry_month > 202600 "
         "&& account.balance_minor > 0", P.POLICY_RULE_ACTION_ADD_TO_SCORE, "numbers",
         score_delta=0.25, priority=11),
    rule("weekend", "txn.timestamp.getDayOfWeek('UTC') == 6", P.POLICY_RULE_ACTION_TAG,
         "weekend", tag="weekend", priority=12, mode=P.POLICY_RULE_MODE_SHADOW),
    rule("errors", "1 / (txn.amount_minor % 2) == 1", P.POLICY_RULE_ACTION_TAG, "odd",
         tag="odd", priority=13),
    rule("scored", "score > 0.5", P.POLICY_RULE_ACTION_TAG, "scored", tag="scored",
         priority=14, mode=P.POLICY_RULE_MODE_SHADOW),
]


def _policies() -> list[policy_pb2.PolicyUpdate]:
    first = update(1, RULES + EVERY_FIELD_RULES)
    every = update(2, EVERY_FIELD_RULES)
    every.evaluation = P.EVALUATION_SEMANTICS_ALL_MATCHES
    every.step_up_score_threshold = 0.3
    every.decline_score_threshold = 0.6
    every.score_decline_response_code = common_pb2.RESPONSE_CODE_59_SUSPECTED_FRAUD
    return [first, every]


def _generated(count: int, seed: int) -> list[tuple]:  # noqa: ANN401
    import random

    from google.protobuf.timestamp_pb2 import Timestamp

    from payauth.server.store import AccountRecord, CardRecord
    from payauth.v1 import authorizer_pb2

    rng = random.Random(seed)

    def text(prefix: str) -> str:
        return rng.choice(["", prefix, f"{prefix}{rng.randrange(100)}", "é€", "d1x"])

    cases = []
    for i in range(count):
        request = authorizer_pb2.AuthorizeRequest(
            request_id=f"r{i}", merchant_id=text("m"), mcc=f"{rng.randrange(10_000):04d}",
            merchant_country=rng.choice(["US", "BR", ""]), currency=rng.choice(["USD", "EUR"]),
            amount_minor=rng.choice([0, 1, rng.randrange(1, 10**6), 2**40 + 1]),
            channel=rng.choice(common_pb2.Channel.values()),
            payment_method=rng.choice(common_pb2.PaymentMethod.values()),
            three_ds=rng.choice(common_pb2.ThreeDsResult.values()),
            device_id=text("d"), ip=text("10.0.0."), partial_ok=rng.random() < 0.5,
            points_to_redeem=rng.choice([0, 5, 500]))
        if rng.random() < 0.9:
            request.timestamp.CopyFrom(Timestamp(seconds=rng.randrange(2 * 10**9),
                                                 nanos=rng.randrange(10**9)))
        card = CardRecord(text("tok"), "a", rng.choice(common_pb2.CardStatus.values()),
                          rng.choice([2024, 2026, 2031]), rng.randrange(1, 13), "h")
        account = AccountRecord("a", rng.choice(common_pb2.AccountKind.values()),
                                rng.choice(common_pb2.AccountStatus.values()),
                                rng.choice(["USD", "EUR"]), rng.randrange(-10**5, 10**7),
                                rng.choice([0, 10**6]), rng.randrange(10**5), 0)
        cases.append((request, card, account))
    return cases


def _reference(core, request, card, account):  # noqa: ANN001, ANN202
    """The decision as the context message and the policy's full result give it."""
    from payauth.core import DecisionContextBuilder
    from payauth.server.decision_context import _NAMES, MODEL_FEATURES, context_slots
    from payauth.server.decision_core import RiskOutcome
    from payauth.v1 import authorizer_pb2, context_pb2

    message = context_pb2.DecisionContext(
        txn=context_pb2.Transaction(
            amount_minor=request.amount_minor, currency=request.currency, mcc=request.mcc,
            channel=_NAMES["channel"][request.channel],
            payment_method=_NAMES["payment_method"][request.payment_method],
            merchant_country=request.merchant_country, device_id=request.device_id,
            ip=request.ip, three_ds=_NAMES["three_ds"][request.three_ds],
            partial_ok=request.partial_ok, points_to_redeem=request.points_to_redeem,
            timestamp=request.timestamp, merchant_id=request.merchant_id,
            account_amount_minor=request.amount_minor),
        card=context_pb2.CardContext(token=card.card_token,
                                     status=_NAMES["card_status"][card.status],
                                     expiry_year=card.expiry_year,
                                     expiry_month=card.expiry_month),
        account=context_pb2.AccountContext(
            kind=_NAMES["kind"][account.kind], status=_NAMES["account_status"][account.status],
            currency=account.currency, balance_minor=account.balance,
            available_minor=account.available, credit_limit_minor=account.limit),
        merchant=context_pb2.MerchantContext(id=request.merchant_id, mcc=request.mcc,
                                             country=request.merchant_country))
    builder = DecisionContextBuilder()
    context = builder.from_message(message, builder.new(extra=len(MODEL_FEATURES)))
    for i, read in enumerate(MODEL_FEATURES.values()):
        context.set_feature(context_slots() + i, float(read(request, card, account)))
    if core.policy is None:
        score = min(max(core.model.probability_of(context), 0.0), 1.0)
        return context, RiskOutcome(score, 0, 0, ())
    result = core.policy.evaluate(context, core.model)
    reasons = []
    if result.rule is not None:
        reasons.append(authorizer_pb2.Reason(rule_id=result.rule.id, text=result.reason))
    elif result.threshold is not None:
        reasons.append(authorizer_pb2.Reason(rule_id=f"policy.{result.threshold}",
                                             text=result.reason))
    reasons.extend(authorizer_pb2.Reason(rule_id=r.id, text=r.reason)
                   for r in result.matched if r is not result.rule)
    reasons.extend(authorizer_pb2.Reason(rule_id=r.id, text=r.reason, shadow=True)
                   for r in result.shadow_matched)
    return context, RiskOutcome(result.score, result.decision, result.response_code,
                                tuple(reasons))


def _risk_model():  # noqa: ANN202
    import lightgbm as lgb

    from payauth.server.decision_core import build_model

    names = ["txn.amount_minor", "txn.mcc", "txn.channel", "txn.three_ds", "card.status",
             "account.kind", "account.available_minor", "features.card_txn_count_1h",
             "txn.partial_ok"]
    rng = np.random.default_rng(3)
    x = np.column_stack([rng.integers(0, 10**6, 4000), rng.integers(0, 10_000, 4000),
                         rng.integers(0, 8, 4000), rng.integers(0, 6, 4000),
                         rng.integers(0, 6, 4000), rng.integers(0, 3, 4000),
                         rng.integers(-10**5, 10**7, 4000), np.zeros(4000),
                         rng.integers(0, 2, 4000)]).astype(float)
    y = ((x[:, 0] > 5 * 10**5) ^ (x[:, 2] == 2) ^ (x[:, 1] > 7000)).astype(int)
    booster = lgb.train({"objective": "binary", "num_leaves": 15, "verbose": -1},
                        lgb.Dataset(x, y, feature_name=names), num_boost_round=30)
    return build_model(P.LoadModelRequest(format=P.MODEL_FORMAT_LIGHTGBM_TEXT,
                                          model=booster.model_to_string().encode()))


def test_server_risk_stage_equals_the_reference_on_generated_requests(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import math

    from payauth.core import compile_policy
    from payauth.server import decision_core

    monkeypatch.setattr(decision_core, "_DESCRIBED_MAX", 16)  # the cache starts over too
    model = _risk_model()
    policies = [compile_policy(u) for u in _policies()]
    cores = [decision_core.DecisionCore(p, m, 1) for p in policies for m in (model, None)]
    cores.append(decision_core.DecisionCore(None, model, 1))
    from payauth.core import DecisionContextBuilder
    from payauth.server.decision_context import _CONTEXT_FIELDS

    filler_slot = DecisionContextBuilder().slot
    outcomes = set()
    for seed, core in enumerate(cores * 2):
        filler = core.filler  # fills only what this core's policy and model read
        score_slot = filler._score
        read = filler.filled_slots | {score_slot}
        if core.policy is not None:
            # Every field the rules read is filled (the rest of what they read, presence
            # and not-yet-computed fields, is the same for every authorization).
            fillable = {filler_slot(path) for path, *_ in _CONTEXT_FIELDS}
            assert core.policy.inputs_read & fillable <= read
            read |= core.policy.inputs_read
        model_reads = set(core.model.feature_index) if core.model is not None else set()
        for request, card, account in _generated(300, seed):
            got = core.assess(request, card, account)
            context, want = _reference(core, request, card, account)
            assert (got.score, got.decision, got.response_code) == \
                (want.score, want.decision, want.response_code)
            assert [(r.rule_id, r.text, r.shadow) for r in got.reasons] == \
                [(r.rule_id, r.text, r.shadow) for r in want.reasons]
            outcomes.add((got.decision, got.reasons[0].rule_id if got.reasons else ""))
            for i in range(context.n_slots):
                if i in read and (i != score_slot or core.policy is not None):
                    assert filler.context.get(i) == context.get(i), i
            numeric, want = filler.context.numeric(), context.numeric()
            for i in model_reads:
                a, b = numeric[i], want[i]
                assert a == b or (math.isnan(a) and math.isnan(b)), i
    # Every kind of outcome was met: rules, both thresholds, nothing decided.
    rule_ids = {rule_id for _, rule_id in outcomes}
    assert {"policy.decline_score_threshold", "policy.step_up_score_threshold", "big-ecom",
            "enum-names", "three-ds", "account"} <= rule_ids
    assert common_pb2.DECISION_UNSPECIFIED in {d for d, _ in outcomes}
