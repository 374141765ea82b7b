"""payauth's side of the benchmark: the policy compiled by `compile_policy`, the models bound
onto the decision vector, and the server's single-decision path.

The decision path is what the server does per authorization, called from Python, in one
call into the core, `CompiledPolicy.decide(context, model, plan, record)`:

1. fill the decision context (`Activation`, one reused per worker) from the record: a
   plan made once says, per value, its key path in the record, its slot and its type, and
   the core reads, converts and stores them all in C (`Activation.fill_from`). The context
   keeps a float64 numeric vector beside its slots (each numeric slot's number, then the
   model-only features the same fill writes after the context's slots): that is the
   model's decision vector, so nothing is copied a second time;
2. score the model on the context's numeric vector in place, put the score in the `score`
   slot, run the 50 rules and return the precomputed (decision, response code) of the
   outcome.
"""

from __future__ import annotations

import functools
from array import array
from collections.abc import Callable, Sequence
from typing import Any

from benchmarks.core import workload
from payauth.core import CompiledPolicy, DecisionContextBuilder, compile_policy, load_model
from payauth.v1 import common_pb2, policy_pb2

_CODES = {
    "05": "RESPONSE_CODE_05_DO_NOT_HONOUR", "41": "RESPONSE_CODE_41_LOST_CARD",
    "43": "RESPONSE_CODE_43_STOLEN_CARD", "46": "RESPONSE_CODE_46_CLOSED_ACCOUNT",
    "51": "RESPONSE_CODE_51_INSUFFICIENT_FUNDS", "54": "RESPONSE_CODE_54_EXPIRED_CARD",
    "57": "RESPONSE_CODE_57_NOT_PERMITTED_TO_CARDHOLDER",
    "59": "RESPONSE_CODE_59_SUSPECTED_FRAUD", "61": "RESPONSE_CODE_61_EXCEEDS_AMOUNT_LIMIT",
    "62": "RESPONSE_CODE_62_RESTRICTED_CARD", "65": "RESPONSE_CODE_65_EXCEEDS_FREQUENCY_LIMIT",
    "1A": "RESPONSE_CODE_1A_ADDITIONAL_AUTHENTICATION_REQUIRED",
}


def policy_update(rules: Sequence[workload.Rule] = workload.RULES, *,
                  all_matches: bool = False) -> policy_pb2.PolicyUpdate:
    """The workload's rules as an issuer's `PolicyUpdate` (FIRST_MATCH unless `all_matches`)."""
    update = policy_pb2.PolicyUpdate(
        update_id="bench-1", policy_id="bench", version=1,
        evaluation=(policy_pb2.EVALUATION_SEMANTICS_ALL_MATCHES if all_matches
                    else policy_pb2.EVALUATION_SEMANTICS_FIRST_MATCH),
        step_up_score_threshold=workload.STEP_UP_SCORE_THRESHOLD,
        decline_score_threshold=workload.DECLINE_SCORE_THRESHOLD,
    )
    for priority, rule in enumerate(rules):
        update.rules.add(
            id=rule.id, priority=priority, condition=rule.cel,
            action=policy_pb2.PolicyRuleAction.Value(f"POLICY_RULE_ACTION_{rule.action}"),
            response_code=common_pb2.ResponseCode.Value(_CODES[rule.code]) if rule.code else 0,
            score_delta=rule.score_delta, tag=rule.tag, reason=f"rule {rule.id}",
            mode=(policy_pb2.POLICY_RULE_MODE_SHADOW if rule.shadow
                  else policy_pb2.POLICY_RULE_MODE_ACTIVE),
            soft_decline=rule.soft_decline,
            min_merchant_liability_bps=5000 if rule.soft_decline else 0,
        )
    return update


def compile_workload_policy(rules: Sequence[workload.Rule] = workload.RULES, *,
                            all_matches: bool = False) -> CompiledPolicy:
    return compile_policy(policy_update(rules, all_matches=all_matches))


_KIND = {"int": "int", "double": "double", "string": "string", "bool": "bool",
         "timestamp": "timestamp"}


class PayauthDecider:
    """The decision context, the decision vector and the compiled policy and model of one
    worker; `decide(record)` is the server's per-authorization path."""

    def __init__(self, policy: CompiledPolicy, model_text: str | bytes | dict) -> None:
        self.policy = policy
        self.builder = DecisionContextBuilder()
        layout = self.builder.layout
        self.n_slots = len(layout.slots)
        slots = {slot.path: slot.index for slot in layout.slots}
        self.vector_layout = workload.decision_vector_layout(slots, self.n_slots)
        self.width = self.n_slots + len(workload.RISK_FEATURES)
        self.model = load_model(model_text)
        self.ensemble = self.model.bind(self.vector_layout, width=self.width)
        # The context's numeric vector is the decision vector: context fields at their
        # slots, the model-only features after them.
        self.context = self.builder.new(extra=len(workload.RISK_FEATURES))
        self.score_slot = slots["score"]
        self._make_fill = self._compile_fill(layout)
        fills = self._make_fill(self.context, policy.decide, self.ensemble)
        self.fill = fills["fill"]
        self.fill_context = fills["fill_context"]
        self.build_vector = fills["build_vector"]
        ctx = self.context
        ensemble = self.ensemble
        evaluate = policy.evaluate
        fill = self.fill

        def decide_result(record: dict[str, Any]) -> Any:
            fill(record)
            return evaluate(ctx, ensemble)

        # One call into the core fills the context (and the model's features) from the
        # record, scores the model on the context's numeric vector in place, puts the score
        # in the `score` slot, runs the rules and returns the outcome's answer.
        self.decide = fills["decide"]
        self.decide_result = decide_result

    def _compile_fill(self, layout: Any) -> Callable[..., dict[str, Callable]]:
        """Plans that gather every context field and model-only feature of a record in C
        (`Activation.fill_from`: each value's slot, type and key path in the record, made
        once), so no Python code runs per field. `make(context, decide_core, model)`
        gives, for one context, `fill(record)` (both), `decide(record)` (fill, score, rules
        and answer in one call into the core) and, to see where the time goes,
        `fill_context(record)` (the policy's fields) and `build_vector(record)` (only what
        the model reads).

        The presence slots ("txn?", "txn.timestamp?" ...) are set once when the context is
        made: every authorization has all five messages and a timestamp, and the worker
        reuses its context, so they never change."""
        context_entries: list[tuple[int, str, tuple[str, ...]]] = []
        presence: list[int] = []
        for slot in layout.slots:
            path = slot.path
            if path.endswith("?"):
                presence.append(slot.index)
                continue
            if path == "score":
                continue  # set from the model after scoring
            hint = slot.hint
            kind = _KIND.get(hint, "any") if isinstance(hint, str) else "any"
            context_entries.append((slot.index, kind, tuple(path.split("."))))
        feature_entries = [(index, "feature", tuple(name.split(".")))
                           for name, index in self.vector_layout.items()
                           if index >= self.n_slots]
        model_reads = set(self.vector_layout.values())
        vector_entries = [e for e in context_entries if e[0] in model_reads] + feature_entries
        # The decision fills only what the policy's rules and the model read (the server's
        # filler does the same, per policy and model).
        policy_reads = self.policy.inputs_read
        decide_entries = [e for e in context_entries
                          if policy_reads is None or e[0] in policy_reads or e[0] in model_reads]
        plans = {
            "fill": context_entries + feature_entries,
            "fill_context": context_entries,
            "build_vector": vector_entries,
            "decide": decide_entries + feature_entries,
        }
        self.fill_plans = plans

        def make(ctx: Any, decide_core: Callable, model: Any) -> dict[str, Callable]:
            for index in presence:
                ctx.set_bool(index, True)
            made = {name: ctx.plan([t for t, _, _ in entries], [k for _, k, _ in entries],
                                   [src for _, _, src in entries])
                    for name, entries in plans.items()}
            fill_from = ctx.fill_from
            plan_fill, plan_context, plan_vector = (made["fill"], made["fill_context"],
                                                    made["build_vector"])

            def fill(rec: dict[str, Any]) -> Any:
                fill_from(plan_fill, rec)
                return ctx

            def fill_context(rec: dict[str, Any]) -> Any:
                fill_from(plan_context, rec)
                return ctx

            def build_vector(rec: dict[str, Any]) -> Any:
                fill_from(plan_vector, rec)
                return ctx

            # decide(record): bound with partial, no Python frame of its own per decision.
            decide = functools.partial(decide_core, ctx, model, made["decide"])

            return {"fill": fill, "fill_context": fill_context, "build_vector": build_vector,
                    "decide": decide}

        return make

    def decide_with(self, model: Any) -> Callable[[dict[str, Any]], Any]:
        """`decide` with another ensemble bound to the same vector (the node walk, to
        measure the ranked walk against it in the same run)."""
        return self._make_fill(self.context, self.policy.decide, model)["decide"]

    def prepared_context(self, record: dict[str, Any], score: float) -> Any:
        """A context of its own holding `record` and `score` (policy-only timings)."""
        ctx = self.builder.new(extra=len(workload.RISK_FEATURES))
        self._make_fill(ctx, self.policy.decide, self.ensemble)["fill"](record)
        ctx.set_double(self.score_slot, score)
        return ctx

    def vector(self, record: dict[str, Any]) -> array:
        """The decision vector of a record (the numeric vector its context holds)."""
        ctx = self.builder.new(extra=len(workload.RISK_FEATURES))
        self._make_fill(ctx, self.policy.decide, self.ensemble)["fill"](record)
        return array("d", ctx.numeric())
