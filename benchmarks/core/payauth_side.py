"""payauth's side of the benchmark: the policy compiled by `compile_policy`, the models bound
onto the decision vector, and the server's single-decision path.

The decision path is what the server does per authorization, called from Python:

1. fill the decision context (`Activation`, one reused per worker) with the typed setters,
   one call per field, and build the model's float64 decision vector from the same record:
   context fields at their context slot's index, the model-only features after them;
2. score the model (`TreeEnsemble.probability_of`) and put the score in the context's
   `score` slot;
3. evaluate the policy (`CompiledPolicy.evaluate`) and read the decision and response code.

The fill is generated as straight-line Python (no loop over a field table, no dict of
setters), which is the fastest a server written in Python can set 45 typed fields.
"""

from __future__ import annotations

import math
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


_SETTER = {"int": "si", "double": "sd", "string": "ss", "bool": "sb", "timestamp": "st"}


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
        self.context = self.builder.new()
        self.score_slot = slots["score"]
        self._make_fill = self._compile_fill(layout)
        fills = self._make_fill(self.context)
        self.fill = fills["fill"]
        self.fill_context = fills["fill_context"]
        self.build_vector = fills["build_vector"]
        ctx = self.context
        probability_of = self.ensemble.probability_of
        evaluate = policy.evaluate
        set_score = ctx.set_double
        fill = self.fill
        score_slot = self.score_slot

        def decide(record: dict[str, Any]) -> tuple[int, int]:
            probability = probability_of(fill(record))
            set_score(score_slot, probability)
            result = evaluate(ctx)
            return result.decision, result.response_code

        def decide_result(record: dict[str, Any]) -> Any:
            probability = probability_of(fill(record))
            set_score(score_slot, probability)
            return evaluate(ctx)

        self.decide = decide
        self.decide_result = decide_result

    def _compile_fill(self, layout: Any) -> Callable[[Any], dict[str, Callable]]:
        """Straight-line code that sets every context slot from a record and returns the
        decision vector. `make(context)` gives, for one context, `fill(record)` (both) and,
        to see where the time goes, `fill_context(record)` and `build_vector(record)`.

        The presence slots ("txn?", "txn.timestamp?" ...) are set once when the context is
        made: every authorization has all five messages and a timestamp, and the worker
        reuses its context, so they never change."""
        context_lines: list[str] = []
        presence: list[str] = []
        for slot in layout.slots:
            path = slot.path
            if path.endswith("?"):
                presence.append(f"    sb({slot.index}, True)")
                continue
            if path == "score":
                continue  # set from the model after scoring
            if "." in path:
                group, field = path.split(".")
                source = f"rec[{group!r}][{field!r}]"
            else:
                source = f"rec[{path!r}]"
            hint = slot.hint
            setter = _SETTER.get(hint) if isinstance(hint, str) else None
            context_lines.append((setter or "sany", slot.index, source))
        vector = ["nan"] * self.width
        for name, index in self.vector_layout.items():
            group, field = name.split(".")
            vector[index] = f"rec[{group!r}][{field!r}]"

        def hoist(sources: list[str]) -> tuple[list[str], dict[str, str]]:
            """Read each sub-dict of the record once (g_txn = rec['txn'])."""
            lines, names = [], {}
            for src in sources:
                if src.startswith("rec[") and "][" in src:
                    group = src[4:src.index("]")]
                    if group not in names:
                        names[group] = f"g_{group.strip(chr(39))}"
                        lines.append(f"        {names[group]} = rec[{group}]")
            return lines, names

        def rewrite(src: str, names: dict[str, str]) -> str:
            if src.startswith("rec[") and "][" in src:
                group = src[4:src.index("]")]
                return names[group] + src[src.index("]") + 1:]
            return src

        def function(name: str, with_context: bool, with_vector: bool) -> list[str]:
            sources = ([src for _, _, src in context_lines] if with_context else []) + \
                      ([v for v in vector if v != "nan"] if with_vector else [])
            head, names = hoist(sources)
            body = [f"    def {name}(rec):", *head]
            if with_context:
                body += [f"        {setter}({index}, {rewrite(src, names)})"
                         for setter, index, src in context_lines]
            if with_vector:
                items = ", ".join(rewrite(v, names) for v in vector)
                body.append(f"        return array('d', [{items}])")
            return body

        source = "\n".join([
            "def make(ctx):",
            "    si, sd, ss = ctx.set_int, ctx.set_double, ctx.set_string",
            "    sb, st, sany = ctx.set_bool, ctx.set_timestamp, ctx.set",
            *presence,
            *function("fill", True, True),
            *function("fill_context", True, False),
            *function("build_vector", False, True),
            "    return {'fill': fill, 'fill_context': fill_context,"
            " 'build_vector': build_vector}",
        ])
        namespace: dict[str, Any] = {"array": array, "nan": math.nan}
        exec(source, namespace)  # noqa: S102 - generated from the context layout
        self.fill_source = source
        return namespace["make"]

    def prepared_context(self, record: dict[str, Any], score: float) -> Any:
        """A context of its own holding `record` and `score` (policy-only timings)."""
        ctx = self.builder.new()
        self._make_fill(ctx)["fill_context"](record)
        ctx.set_double(self.score_slot, score)
        return ctx

    def vector(self, record: dict[str, Any]) -> array:
        """The decision vector of a record."""
        return self.build_vector(record)
