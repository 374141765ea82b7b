"""Issuer policies compiled into the core: ordering, FIRST_MATCH and ALL_MATCHES, shadow
rules, errors as non-matches, score deltas and thresholds, and compile errors that name the
rule, the field and the position."""

from __future__ import annotations

import threading
import tracemalloc

import pytest
from google.protobuf import timestamp_pb2

from payauth.core.policy import (
    DecisionContextBuilder,
    PolicyCompileError,
    compile_policy,
    policy_content_hash,
)
from payauth.v1 import common_pb2, context_pb2, policy_pb2

A = policy_pb2
ACTIVE, SHADOW = A.POLICY_RULE_MODE_ACTIVE, A.POLICY_RULE_MODE_SHADOW
DECLINE, STEP_UP, APPROVE = (A.POLICY_RULE_ACTION_DECLINE, A.POLICY_RULE_ACTION_STEP_UP,
                             A.POLICY_RULE_ACTION_APPROVE)
ADD, TAG = A.POLICY_RULE_ACTION_ADD_TO_SCORE, A.POLICY_RULE_ACTION_TAG
RC = common_pb2


def rule(rule_id: str, condition: str, action: int = DECLINE, priority: int = 0,
         mode: int = ACTIVE, **kwargs) -> policy_pb2.PolicyRule:
    if action == DECLINE:
        kwargs.setdefault("response_code", RC.RESPONSE_CODE_05_DO_NOT_HONOUR)
    return policy_pb2.PolicyRule(id=rule_id, condition=condition, action=action,
                                 priority=priority, mode=mode, **kwargs)


def update(*rules: policy_pb2.PolicyRule, evaluation: int = A.EVALUATION_SEMANTICS_FIRST_MATCH,
           **kwargs) -> policy_pb2.PolicyUpdate:
    return policy_pb2.PolicyUpdate(update_id="u1", policy_id="default", version=1,
                                   evaluation=evaluation, rules=list(rules), **kwargs)


BUILDER = DecisionContextBuilder()


def context(**fields) -> object:
    """A context vector from keyword groups: txn={...}, card={...}, features={...}, score=."""
    message = context_pb2.DecisionContext(
        txn=context_pb2.Transaction(**fields.get("txn", {})),
        card=context_pb2.CardContext(**fields.get("card", {})),
        account=context_pb2.AccountContext(**fields.get("account", {})),
        merchant=context_pb2.MerchantContext(**fields.get("merchant", {})),
        features=context_pb2.Features(**fields.get("features", {})),
        score=fields.get("score", 0.0), watch_hits=fields.get("watch_hits", []),
    )
    return BUILDER.from_message(message)


def test_first_match_decides_by_priority_then_list_order() -> None:
    policy = compile_policy(update(
        rule("late", "txn.amount_minor > 0", DECLINE, priority=20),
        rule("tie_first", "txn.amount_minor > 0", STEP_UP, priority=10),
        rule("tie_second", "txn.amount_minor > 0", DECLINE, priority=10),
        rule("score", "true", ADD, priority=1, score_delta=0.25),
        rule("tag", "true", TAG, priority=2, tag="seen"),
    ))
    assert [r.id for r in policy.rules] == ["score", "tag", "tie_first", "tie_second", "late"]
    result = policy.evaluate(context(txn={"amount_minor": 100}, score=0.5))
    assert result.decision == RC.DECISION_STEP_UP
    assert result.rule.id == "tie_first"
    assert result.response_code == RC.RESPONSE_CODE_1A_ADDITIONAL_AUTHENTICATION_REQUIRED
    assert result.score == pytest.approx(0.75)
    assert result.tags == ("seen",)
    assert result.status("tie_second") == "skipped" and result.status("late") == "skipped"
    assert [r.id for r in result.matched] == ["score", "tag", "tie_first"]


def test_all_matches_takes_the_most_severe_earliest_decision() -> None:
    rules = [
        rule("approve", "true", APPROVE, priority=1),
        rule("step_up", "true", STEP_UP, priority=2),
        rule("decline_57", "txn.channel == 'ECOM'", DECLINE, priority=3,
             response_code=RC.RESPONSE_CODE_57_NOT_PERMITTED_TO_CARDHOLDER, reason="no ecom"),
        rule("decline_59", "true", DECLINE, priority=4,
             response_code=RC.RESPONSE_CODE_59_SUSPECTED_FRAUD),
        rule("tag", "true", TAG, priority=5, tag="late_tag"),
    ]
    policy = compile_policy(update(*rules, evaluation=A.EVALUATION_SEMANTICS_ALL_MATCHES))
    result = policy.evaluate(context(txn={"channel": "ECOM"}))
    assert result.decision == RC.DECISION_DECLINE
    assert result.rule.id == "decline_57" and result.reason == "no ecom"
    assert result.response_code == RC.RESPONSE_CODE_57_NOT_PERMITTED_TO_CARDHOLDER
    assert {r.id for r in result.matched} == {r.id for r in rules}
    assert result.tags == ("late_tag",)
    result = policy.evaluate(context(txn={"channel": "POS"}))
    assert result.rule.id == "decline_59"


def test_shadow_rules_are_reported_and_never_acted_on() -> None:
    policy = compile_policy(update(
        rule("shadow_decline", "true", DECLINE, priority=1, mode=SHADOW),
        rule("shadow_score", "true", ADD, priority=2, mode=SHADOW, score_delta=0.9),
        rule("shadow_tag", "true", TAG, priority=3, mode=SHADOW, tag="s"),
        rule("approve", "true", APPROVE, priority=4),
        rule("shadow_after", "txn.amount_minor > 10", DECLINE, priority=5, mode=SHADOW),
    ))
    result = policy.evaluate(context(txn={"amount_minor": 50}, score=0.1))
    assert result.decision == RC.DECISION_APPROVE
    assert result.response_code == RC.RESPONSE_CODE_00_APPROVED
    assert result.score == pytest.approx(0.1)
    assert result.tags == ()
    # Shadow rules run even after FIRST_MATCH has decided.
    assert [r.id for r in result.shadow_matched] == [
        "shadow_decline", "shadow_score", "shadow_tag", "shadow_after"]


def test_a_condition_that_errors_is_reported_and_not_matched() -> None:
    policy = compile_policy(update(
        rule("divides", "txn.amount_minor / features.card_txn_count_24h > 100", DECLINE, 1),
        rule("overflows", "txn.amount_minor * 9223372036854775807 > 0", DECLINE, 2),
        rule("fine", "txn.amount_minor > 0", STEP_UP, 3),
    ))
    result = policy.evaluate(context(txn={"amount_minor": 5}))
    assert [r.id for r in result.errored] == ["divides", "overflows"]
    assert result.rule.id == "fine"
    # CEL's commutative error absorption: false && error is false, not an error.
    policy = compile_policy(update(
        rule("absorbed", "1 / features.card_txn_count_24h > 0 && txn.amount_minor > 1000", DECLINE),
    ))
    result = policy.evaluate(context(txn={"amount_minor": 5}))
    assert result.status("absorbed") == "no_match"


def test_score_deltas_clamp_and_thresholds_decide_when_no_rule_did() -> None:
    policy = compile_policy(update(
        rule("risky_mcc", "txn.mcc in ['7995', '6051']", ADD, score_delta=0.3),
        rule("trusted", "card.status == 'ACTIVE' && txn.three_ds == 'AUTHENTICATED'", ADD,
             score_delta=-0.5),
        step_up_score_threshold=0.6, decline_score_threshold=0.9,
        score_decline_response_code=RC.RESPONSE_CODE_59_SUSPECTED_FRAUD,
        score_decline_min_merchant_liability_bps=5000,
    ))
    result = policy.evaluate(context(txn={"mcc": "7995"}, score=0.4))
    assert result.decision == RC.DECISION_STEP_UP and result.threshold == "step_up_score_threshold"
    assert result.score == pytest.approx(0.7)
    result = policy.evaluate(context(txn={"mcc": "7995"}, score=0.8))
    assert result.decision == RC.DECISION_DECLINE
    assert result.response_code == RC.RESPONSE_CODE_59_SUSPECTED_FRAUD
    assert result.score == 1.0 and result.soft_decline
    assert result.min_merchant_liability_bps == 5000
    result = policy.evaluate(context(txn={"three_ds": "AUTHENTICATED"},
                                     card={"status": "ACTIVE"}, score=0.2))
    assert result.score == 0.0 and result.decision == RC.DECISION_UNSPECIFIED


def test_analyst_examples_from_the_docs() -> None:
    night = timestamp_pb2.Timestamp(seconds=1_700_000_000 - 17 * 3600)  # 02:13 in Sao Paulo
    policy = compile_policy(update(
        rule("velocity_1h", "features.card_txn_count_1h >= 10", DECLINE, 10,
             response_code=RC.RESPONSE_CODE_65_EXCEEDS_FREQUENCY_LIMIT),
        rule("card_testing", "features.device_distinct_cards_24h > 5", DECLINE, 11,
             response_code=RC.RESPONSE_CODE_59_SUSPECTED_FRAUD),
        rule("ticket_jump", "features.amount_to_avg_ticket_ratio > 8.0 && "
             "txn.amount_minor > 50000", STEP_UP, 20),
        rule("gambling", "txn.mcc in ['7995', '7801', '7802'] && account.kind == 'CREDIT'",
             DECLINE, 30, response_code=RC.RESPONSE_CODE_57_NOT_PERMITTED_TO_CARDHOLDER),
        rule("night_ecom", "txn.channel == 'ECOM' && has(txn.timestamp) && "
             "txn.timestamp.getHours('America/Sao_Paulo') < 6", ADD, 40, score_delta=0.2),
        rule("cross_border", "txn.merchant_country != card.country", TAG, 50, tag="cross_border"),
        rule("high_score", "score >= 0.7 && txn.three_ds != 'AUTHENTICATED'", STEP_UP, 60),
        rule("watch_device", "'DEVICE' in watch_hits", TAG, 5, tag="watch_device"),
    ))
    result = policy.evaluate(context(
        txn={"channel": "ECOM", "timestamp": night, "merchant_country": "US", "mcc": "5411",
             "three_ds": "NOT_ATTEMPTED", "amount_minor": 12000},
        card={"country": "BR"}, score=0.72, watch_hits=["DEVICE"]))
    assert result.decision == RC.DECISION_STEP_UP and result.rule.id == "high_score"
    # `score` in a condition is the model's score; deltas apply to the final score only.
    assert result.score == pytest.approx(0.92)
    assert result.tags == ("watch_device", "cross_border")
    result = policy.evaluate(context(features={"card_txn_count_1h": 12}))
    assert result.rule.id == "velocity_1h"
    assert result.response_code == RC.RESPONSE_CODE_65_EXCEEDS_FREQUENCY_LIMIT
    result = policy.evaluate(context(txn={"mcc": "7995"}, account={"kind": "CREDIT"}))
    assert result.rule.id == "gambling"


def test_has_follows_proto3_presence() -> None:
    policy = compile_policy(update(
        rule("has_ts", "has(txn.timestamp)", TAG, 1, tag="ts"),
        rule("has_device", "has(txn.device_id)", TAG, 2, tag="device"),
    ))
    assert policy.evaluate(context()).tags == ()
    got = policy.evaluate(context(txn={"timestamp": timestamp_pb2.Timestamp(seconds=0),
                                       "device_id": "d1"}))
    assert got.tags == ("ts", "device")


def test_compile_errors_name_rule_field_and_position() -> None:
    with pytest.raises(PolicyCompileError) as caught:
        compile_policy(update(
            rule("typo", "txn.amount_minor > 10 &&\n  txn.amout < 5"),
            rule("not_bool", "txn.amount_minor + 1"),
            rule("dyn_regex", "txn.mcc.matches(txn.ip)"),
            rule("ok", "true"),
        ))
    error = caught.value
    assert error.reason == A.POLICY_REJECT_REASON_COMPILE_ERROR
    by_rule = {e.rule_id: e for e in error.errors}
    assert set(by_rule) == {"typo", "not_bool", "dyn_regex"}
    assert (by_rule["typo"].line, by_rule["typo"].column) == (2, 6)
    assert "amout" in by_rule["typo"].message
    assert "bool" in by_rule["not_bool"].message
    assert "literal pattern" in by_rule["dyn_regex"].message
    acks = error.ack_errors()
    assert acks[0].field == "condition" and acks[0].rule_id


def test_invalid_updates_are_rejected_with_every_problem() -> None:
    with pytest.raises(PolicyCompileError) as caught:
        compile_policy(policy_pb2.PolicyUpdate(
            update_id="u", policy_id="bad id!", version=0, rules=[
                policy_pb2.PolicyRule(id="a", condition="true", action=DECLINE, mode=ACTIVE),
                policy_pb2.PolicyRule(id="a", condition="true", action=TAG, mode=ACTIVE),
                policy_pb2.PolicyRule(id="b", condition="", mode=ACTIVE),
            ]))
    error = caught.value
    assert error.reason == A.POLICY_REJECT_REASON_INVALID_UPDATE
    fields = {(e.rule_id, e.field) for e in error.errors}
    assert {("", "policy_id"), ("", "version"), ("", "evaluation"), ("a", "response_code"),
            ("a", "id"), ("a", "tag"), ("b", "action"), ("b", "condition")} <= fields
    with pytest.raises(PolicyCompileError) as caught:
        compile_policy(update(*[rule(f"r{i}", "true") for i in range(1001)]))
    assert caught.value.reason == A.POLICY_REJECT_REASON_TOO_LARGE


def test_content_hash_ignores_update_id_and_validate_only() -> None:
    first = update(rule("r", "true"))
    second = update(rule("r", "true"))
    second.update_id = "other"
    second.validate_only = True
    assert policy_content_hash(first) == policy_content_hash(second)
    second.rules[0].condition = "false"
    assert policy_content_hash(first) != policy_content_hash(second)


def test_string_inputs_equal_to_constants_compare_interned() -> None:
    policy = compile_policy(update(rule("ecom", "txn.channel == 'ECOM'", TAG, tag="ecom")))
    channel = "".join(["EC", "OM"])  # a different str object than the constant
    ctx = BUILDER.new()
    BUILDER.set(ctx, "txn.channel", channel)
    assert policy.evaluate(ctx).tags == ("ecom",)
    BUILDER.set(ctx, "txn.channel", "ECOMX")
    assert policy.evaluate(ctx).tags == ()


def test_evaluation_is_allocation_free_in_the_core_and_thread_safe() -> None:
    policy = compile_policy(update(
        *[rule(f"r{i}", f"txn.amount_minor > {i * 100} && txn.mcc in ['5411', '7995'] && "
                        f"string(txn.amount_minor).size() > 1", TAG, i, tag=f"t{i}")
          for i in range(50)],
        evaluation=A.EVALUATION_SEMANTICS_ALL_MATCHES))
    ctx = context(txn={"amount_minor": 2550, "mcc": "5411"})
    status = bytearray(len(policy.rules))
    core = policy._core
    core.run(ctx, status)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for _ in range(2000):
        core.run(ctx, status)
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert grown < 1024
    expected = policy.evaluate(ctx).tags
    assert len(expected) == 26
    failures: list[object] = []

    def worker() -> None:
        for _ in range(500):
            if policy.evaluate(ctx).tags != expected:
                failures.append("mismatch")

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
