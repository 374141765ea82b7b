"""Issuer policies: versioned, ordered CEL rule sets compiled once into the core.

`compile_policy(update)` checks a `payauth.v1.PolicyUpdate` and compiles every rule's
condition (over the decision context, `payauth.v1.DecisionContext`) into one
`cel_eval.Program` with a flat rule table (`policy_eval.PolicyCore`); every problem found is
reported at once, with the rule, the field and, for conditions, the line and column.
`CompiledPolicy.evaluate(context)` runs all rules in C with the GIL released and returns a
`PolicyResult` that is filled in lazily from the rules' status bytes.

Semantics (docs/policy-language.md):
- Rules run in ascending `priority`, ties in list order.
- FIRST_MATCH: ADD_TO_SCORE and TAG rules apply as they match and evaluation goes on; the
  first matching APPROVE, STEP_UP or DECLINE rule decides, and later active rules are not
  evaluated. ALL_MATCHES: every rule is evaluated; the most severe matching decision wins
  (DECLINE over STEP_UP over APPROVE), the earliest rule among equals.
- SHADOW rules are always evaluated and reported, and never change the decision, score or
  tags.
- A condition that evaluates to an error (division by zero, overflow, a missing map key...)
  counts as not matched and is reported in `PolicyResult.errored`.
- The score is the context's `score` plus the deltas of the matching ADD_TO_SCORE rules,
  clamped to [0, 1]; when no rule decided, the update's score thresholds apply (decline
  first, then step-up).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from collections.abc import Sequence
from typing import Any

from payauth.core.cel_compiler import (
    CelCompileError,
    Layout,
    ProgramBuilder,
    decision_compiler,
    decision_layout,
    message_layout,
)
from payauth.core.cel_eval import Activation
from payauth.core.cel_values import Duration
from payauth.core.policy_eval import PolicyCore
from payauth.core.trees import TreeEnsemble
from payauth.v1 import common_pb2, context_pb2, policy_pb2

MAX_RULES = 1000
MAX_CONDITION_LENGTH = 4096
MAX_REASON_LENGTH = 256

_ID = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_TAG = re.compile(r"[a-z0-9_.\-]{1,64}")

RC = common_pb2.ResponseCode
# Codes a DECLINE rule may answer with: every code that declines.
DECLINE_CODES = frozenset(
    value for name, value in RC.items()
    if name not in ("RESPONSE_CODE_UNSPECIFIED", "RESPONSE_CODE_00_APPROVED",
                    "RESPONSE_CODE_10_PARTIAL_APPROVAL",
                    "RESPONSE_CODE_1A_ADDITIONAL_AUTHENTICATION_REQUIRED")
)
# Codes a STEP_UP rule may answer with: 1A, and 65, which European issuers send to ask for
# strong customer authentication.
STEP_UP_CODES = frozenset({RC.Value("RESPONSE_CODE_1A_ADDITIONAL_AUTHENTICATION_REQUIRED"),
                           RC.Value("RESPONSE_CODE_65_EXCEEDS_FREQUENCY_LIMIT")})

_DECISIONS = {
    policy_pb2.POLICY_RULE_ACTION_DECLINE: common_pb2.DECISION_DECLINE,
    policy_pb2.POLICY_RULE_ACTION_STEP_UP: common_pb2.DECISION_STEP_UP,
    policy_pb2.POLICY_RULE_ACTION_APPROVE: common_pb2.DECISION_APPROVE,
}
_STATUS_NAMES = {0: "skipped", 1: "no_match", 2: "match", 3: "error"}


@dataclasses.dataclass(frozen=True)
class RuleInfo:
    """One rule of a compiled policy, as the issuer sent it."""

    id: str
    priority: int
    position: int
    condition: str
    action: int
    response_code: int
    score_delta: float
    tag: str
    reason: str
    shadow: bool
    soft_decline: bool
    min_merchant_liability_bps: int

    @property
    def action_name(self) -> str:
        """"DECLINE", "STEP_UP", "APPROVE", "ADD_TO_SCORE" or "TAG"."""
        return policy_pb2.PolicyRuleAction.Name(self.action).removeprefix("POLICY_RULE_ACTION_")


@dataclasses.dataclass(frozen=True)
class RuleProblem:
    """One problem of a policy update, located as precisely as possible."""

    rule_id: str
    field: str
    line: int
    column: int
    message: str

    def to_proto(self) -> policy_pb2.RuleCompileError:
        return policy_pb2.RuleCompileError(rule_id=self.rule_id, field=self.field,
                                           line=self.line, column=self.column,
                                           message=self.message)


class PolicyCompileError(ValueError):
    """A policy update that cannot be compiled; `reason` is a PolicyRejectReason and
    `errors` lists every problem found."""

    def __init__(self, reason: int, errors: Sequence[RuleProblem]) -> None:
        self.reason = reason
        self.errors = list(errors)
        lines = [f"{e.rule_id or '(update)'}.{e.field or '-'}"
                 + (f" {e.line}:{e.column}" if e.line else "") + f": {e.message}"
                 for e in self.errors]
        super().__init__("; ".join(lines))

    def ack_errors(self) -> list[policy_pb2.RuleCompileError]:
        """The errors as PolicyAck.errors."""
        return [e.to_proto() for e in self.errors]


class PolicyResult:
    """The outcome of one policy evaluation. `decision` is a payauth.v1.Decision
    (DECISION_UNSPECIFIED when neither a rule nor a threshold decided)."""

    __slots__ = ("_policy", "_status", "decision", "response_code", "rule", "threshold",
                 "score", "_cache")

    def __init__(self, policy: CompiledPolicy, status: bytes, decided: int,
                 score: float) -> None:
        self._policy = policy
        self._status = status
        self.score = score
        # (rule, threshold, decision, response_code), computed once per policy and outcome.
        self.rule, self.threshold, self.decision, self.response_code = \
            policy._outcomes[decided + 3]
        self._cache: dict[str, Any] | None = None

    def _select(self, key: str, status: int, shadow: bool | None) -> tuple[RuleInfo, ...]:
        if self._cache is None:
            self._cache = {}
        found = self._cache.get(key)
        if found is None:
            found = tuple(rule for rule, s in zip(self._policy.rules, self._status, strict=False)
                          if s == status and (shadow is None or rule.shadow == shadow))
            self._cache[key] = found
        return found

    @property
    def matched(self) -> tuple[RuleInfo, ...]:
        """Active rules whose condition held, in evaluation order."""
        return self._select("matched", 2, False)

    @property
    def shadow_matched(self) -> tuple[RuleInfo, ...]:
        """Shadow rules whose condition held (reported, never acted on)."""
        return self._select("shadow", 2, True)

    @property
    def errored(self) -> tuple[RuleInfo, ...]:
        """Rules, active or shadow, whose condition evaluated to an error (not matched)."""
        return self._select("errored", 3, None)

    @property
    def tags(self) -> tuple[str, ...]:
        """Tags of the matching active TAG rules, in evaluation order, without repeats."""
        return tuple(dict.fromkeys(r.tag for r in self.matched
                                   if r.action == policy_pb2.POLICY_RULE_ACTION_TAG))

    @property
    def score_delta(self) -> float:
        """Sum of the matching active ADD_TO_SCORE deltas (before clamping)."""
        return sum(r.score_delta for r in self.matched
                   if r.action == policy_pb2.POLICY_RULE_ACTION_ADD_TO_SCORE)

    @property
    def soft_decline(self) -> bool:
        """True for a risk-only decline that a merchant's liability offer may overturn."""
        if self.threshold == "decline_score_threshold":
            return True
        return bool(self.rule and self.rule.action == policy_pb2.POLICY_RULE_ACTION_DECLINE
                    and self.rule.soft_decline)

    @property
    def min_merchant_liability_bps(self) -> int:
        """The least liability share, in basis points, that overturns a soft decline."""
        if self.threshold == "decline_score_threshold":
            return self._policy.score_decline_min_merchant_liability_bps
        return self.rule.min_merchant_liability_bps if self.soft_decline and self.rule else 0

    @property
    def reason(self) -> str:
        """The deciding rule's reason text, or the threshold that decided."""
        if self.rule is not None:
            return self.rule.reason
        if self.threshold is not None:
            return f"risk score {self.score:.4f} at or above the policy's {self.threshold}"
        return ""

    def status(self, rule_id: str) -> str:
        """"match", "no_match", "error" or "skipped" for one rule."""
        return _STATUS_NAMES[self._status[self._policy.rule_index[rule_id]]]

    def __repr__(self) -> str:
        decision = common_pb2.Decision.Name(self.decision)
        return (f"PolicyResult({decision}, rule={self.rule.id if self.rule else None}, "
                f"score={self.score:.4f}, matched={[r.id for r in self.matched]}, "
                f"shadow={[r.id for r in self.shadow_matched]}, "
                f"errored={[r.id for r in self.errored]})")


class CompiledPolicy:
    """A policy update compiled into the core, ready to evaluate decision contexts."""

    def __init__(self, update: policy_pb2.PolicyUpdate, rules: Sequence[RuleInfo],
                 core: PolicyCore, inputs_read: frozenset[int] | None = None) -> None:
        self.policy_id = update.policy_id
        #: The decision-context slots the rules read (None: unknown, fill them all); a
        #: caller that fills a context only for this policy may skip the others.
        self.inputs_read = inputs_read
        self.version = update.version
        self.update_id = update.update_id
        self.evaluation = update.evaluation
        self.rules = tuple(rules)
        self.rule_index = {rule.id: i for i, rule in enumerate(self.rules)}
        self.step_up_score_threshold = (update.step_up_score_threshold
                                        if update.HasField("step_up_score_threshold") else None)
        self.decline_score_threshold = (update.decline_score_threshold
                                        if update.HasField("decline_score_threshold") else None)
        self.score_decline_response_code = (update.score_decline_response_code
                                            or RC.Value("RESPONSE_CODE_05_DO_NOT_HONOUR"))
        self.score_decline_min_merchant_liability_bps = \
            update.score_decline_min_merchant_liability_bps
        self.content_hash = policy_content_hash(update)
        self._core = core
        # By deciding index + 3 (-3 step-up threshold, -2 decline threshold, -1 none, then
        # the rules): (rule, threshold, decision, response_code).
        step_up = RC.Value("RESPONSE_CODE_1A_ADDITIONAL_AUTHENTICATION_REQUIRED")
        self._outcomes: tuple[tuple[RuleInfo | None, str | None, int, int], ...] = (
            (None, "step_up_score_threshold", common_pb2.DECISION_STEP_UP, step_up),
            (None, "decline_score_threshold", common_pb2.DECISION_DECLINE,
             self.score_decline_response_code),
            (None, None, common_pb2.DECISION_UNSPECIFIED, RC.Value("RESPONSE_CODE_UNSPECIFIED")),
            *((rule, None, _DECISIONS.get(rule.action, common_pb2.DECISION_UNSPECIFIED),
               rule.response_code) for rule in self.rules),
        )
        #: (decision, response_code) by deciding index + 3, as `run` reports the index.
        self.answers: tuple[tuple[int, int], ...] = tuple(
            (decision, code) for _, _, decision, code in self._outcomes)
        core.set_answers(self.answers)
        # The fast paths, bound once: `decide(context, model=None)` and `run`.
        self.decide = core.decide  # type: ignore[method-assign]
        self.run = core.evaluate  # type: ignore[method-assign]

    def evaluate(self, context: Activation, model: TreeEnsemble | None = None) -> PolicyResult:
        """Evaluate every rule over a decision context vector (see `DecisionContextBuilder`).

        With `model`, the model is first scored on the context's numeric vector (read in
        place, see `Activation`) and its probability, clamped to [0, 1], put in the context's
        `score` slot, all in one call into the core."""
        decided, score, status = self._core.evaluate(context, model)
        return PolicyResult(self, status, decided, score)

    def run(self, context: Activation, model: TreeEnsemble | None = None
            ) -> tuple[int, float, bytes]:
        """`evaluate` without building its result: (deciding index, final score, status
        byte of every rule), for a caller that keeps what it derives from the statuses
        (`result` builds the PolicyResult of the same three)."""
        return self._core.evaluate(context, model)

    def result(self, decided: int, score: float, status: bytes) -> PolicyResult:
        """The PolicyResult of what `run` returned."""
        return PolicyResult(self, status, decided, score)

    def decide(self, context: Activation, model: TreeEnsemble | None = None) -> tuple[int, int]:
        """(decision, response_code) of `evaluate(context, model)`, without building a
        PolicyResult: one call into the core that allocates nothing."""
        return self._core.decide(context, model)

    def new_context(self) -> Activation:
        """An empty decision context vector (every field at its zero value)."""
        return decision_layout().activation()

    def __repr__(self) -> str:
        return (f"CompiledPolicy({self.policy_id!r}, version={self.version}, "
                f"rules={len(self.rules)})")


def policy_content_hash(update: policy_pb2.PolicyUpdate) -> str:
    """SHA-256 of what an update decides (everything but update_id and validate_only), so a
    re-sent identical version can be acked as replayed."""
    content = policy_pb2.PolicyUpdate()
    content.CopyFrom(update)
    content.ClearField("update_id")
    content.ClearField("validate_only")
    return hashlib.sha256(content.SerializeToString(deterministic=True)).hexdigest()


def _check_update(update: policy_pb2.PolicyUpdate) -> list[RuleProblem]:
    problems: list[RuleProblem] = []

    def bad(rule_id: str, field: str, message: str) -> None:
        problems.append(RuleProblem(rule_id, field, 0, 0, message))

    if not _ID.fullmatch(update.policy_id):
        bad("", "policy_id", "policy_id must be 1 to 64 characters of [A-Za-z0-9_.-]")
    if update.version <= 0:
        bad("", "version", "version must be a positive integer")
    if update.evaluation not in (policy_pb2.EVALUATION_SEMANTICS_FIRST_MATCH,
                                 policy_pb2.EVALUATION_SEMANTICS_ALL_MATCHES):
        bad("", "evaluation", "evaluation must be FIRST_MATCH or ALL_MATCHES")
    for field in ("step_up_score_threshold", "decline_score_threshold"):
        if update.HasField(field) and not 0.0 <= getattr(update, field) <= 1.0:
            bad("", field, f"{field} must be between 0 and 1")
    if update.score_decline_response_code and \
            update.score_decline_response_code not in DECLINE_CODES:
        bad("", "score_decline_response_code", "not a decline response code")
    if not 0 <= update.score_decline_min_merchant_liability_bps <= 10000:
        bad("", "score_decline_min_merchant_liability_bps", "must be between 0 and 10000")
    seen: set[str] = set()
    for i, rule in enumerate(update.rules):
        rid = rule.id or f"#{i}"
        if not _ID.fullmatch(rule.id):
            bad(rid, "id", "rule id must be 1 to 64 characters of [A-Za-z0-9_.-]")
        elif rule.id in seen:
            bad(rid, "id", "duplicate rule id")
        seen.add(rule.id)
        if rule.action == policy_pb2.POLICY_RULE_ACTION_UNSPECIFIED or \
                rule.action not in policy_pb2.PolicyRuleAction.values():
            bad(rid, "action", "the rule has no action")
        if rule.mode not in (policy_pb2.POLICY_RULE_MODE_ACTIVE,
                             policy_pb2.POLICY_RULE_MODE_SHADOW):
            bad(rid, "mode", "mode must be ACTIVE or SHADOW")
        if not rule.condition.strip():
            bad(rid, "condition", "the condition is empty")
        if rule.action == policy_pb2.POLICY_RULE_ACTION_DECLINE and \
                rule.response_code not in DECLINE_CODES:
            bad(rid, "response_code", "a DECLINE rule needs a decline response code "
                                      "(e.g. 05, 57, 59, 61)")
        if rule.action == policy_pb2.POLICY_RULE_ACTION_STEP_UP and rule.response_code and \
                rule.response_code not in STEP_UP_CODES:
            bad(rid, "response_code", "a STEP_UP rule answers 1A (or 65)")
        if rule.action == policy_pb2.POLICY_RULE_ACTION_TAG and not _TAG.fullmatch(rule.tag):
            bad(rid, "tag", "tag must be 1 to 64 characters of [a-z0-9_.-]")
        if rule.action == policy_pb2.POLICY_RULE_ACTION_ADD_TO_SCORE and \
                not (math.isfinite(rule.score_delta) and -1.0 <= rule.score_delta <= 1.0):
            bad(rid, "score_delta", "score_delta must be between -1 and 1")
        if len(rule.reason) > MAX_REASON_LENGTH:
            bad(rid, "reason", f"reason is longer than {MAX_REASON_LENGTH} characters")
        if rule.soft_decline and not 1 <= rule.min_merchant_liability_bps <= 10000:
            bad(rid, "min_merchant_liability_bps", "a soft decline needs 1 to 10000 bps")
    return problems


def compile_policy(update: policy_pb2.PolicyUpdate) -> CompiledPolicy:
    """Check and compile a policy update; PolicyCompileError lists every problem."""
    if len(update.rules) > MAX_RULES:
        raise PolicyCompileError(policy_pb2.POLICY_REJECT_REASON_TOO_LARGE, [RuleProblem(
            "", "rules", 0, 0, f"{len(update.rules)} rules; at most {MAX_RULES}")])
    too_long = [RuleProblem(rule.id, "condition", 0, 0,
                            f"condition longer than {MAX_CONDITION_LENGTH} characters")
                for rule in update.rules if len(rule.condition) > MAX_CONDITION_LENGTH]
    if too_long:
        raise PolicyCompileError(policy_pb2.POLICY_REJECT_REASON_TOO_LARGE, too_long)
    problems = _check_update(update)
    if problems:
        raise PolicyCompileError(policy_pb2.POLICY_REJECT_REASON_INVALID_UPDATE, problems)

    compiler = decision_compiler()
    builder = ProgramBuilder(compiler.layout)
    order = sorted(range(len(update.rules)), key=lambda i: (update.rules[i].priority, i))
    rules: list[RuleInfo] = []
    rows: list[tuple[int, int, bool, float]] = []
    errors: list[RuleProblem] = []
    for position in order:
        rule = update.rules[position]
        try:
            entry = compiler.lower_into(builder, rule.condition, result_type="bool")
        except CelCompileError as exc:
            errors.append(RuleProblem(rule.id, "condition", exc.line, exc.column, exc.message))
            continue
        response_code = rule.response_code
        if rule.action == policy_pb2.POLICY_RULE_ACTION_STEP_UP and not response_code:
            response_code = RC.Value("RESPONSE_CODE_1A_ADDITIONAL_AUTHENTICATION_REQUIRED")
        if rule.action == policy_pb2.POLICY_RULE_ACTION_APPROVE:
            response_code = RC.Value("RESPONSE_CODE_00_APPROVED")
        info = RuleInfo(
            id=rule.id, priority=rule.priority, position=position, condition=rule.condition,
            action=rule.action, response_code=response_code,
            score_delta=rule.score_delta, tag=rule.tag, reason=rule.reason,
            shadow=rule.mode == policy_pb2.POLICY_RULE_MODE_SHADOW,
            soft_decline=rule.soft_decline,
            min_merchant_liability_bps=rule.min_merchant_liability_bps,
        )
        rules.append(info)
        rows.append((entry, rule.action, info.shadow,
                     rule.score_delta if rule.action == policy_pb2.POLICY_RULE_ACTION_ADD_TO_SCORE
                     else 0.0))
    if errors:
        raise PolicyCompileError(policy_pb2.POLICY_REJECT_REASON_COMPILE_ERROR, errors)
    program = builder.build()
    score_slot = compiler.layout.by_path["score"].index
    core = PolicyCore(
        program, rows, update.evaluation == policy_pb2.EVALUATION_SEMANTICS_FIRST_MATCH,
        score_slot,
        update.step_up_score_threshold if update.HasField("step_up_score_threshold") else None,
        update.decline_score_threshold if update.HasField("decline_score_threshold") else None,
    )
    return CompiledPolicy(update, rules, core, frozenset(builder.inputs_read))


class DecisionContextBuilder:
    """Fills decision context vectors: from a `payauth.v1.DecisionContext` message, or one
    field at a time by its policy name ("txn.amount_minor", "score").

    Another context message (the loyalty context) gets its own builder by passing its
    descriptor and layout."""

    def __init__(self, message: Any = None, layout: Layout | None = None) -> None:
        if message is None:
            message, layout = context_pb2.DecisionContext.DESCRIPTOR, decision_layout()
        self.layout = layout if layout is not None else message_layout(message)
        by_path = self.layout.by_path
        # field descriptor -> (slot, presence slot or None, kind, sub-plan for messages)
        self._plan: dict[Any, tuple[int, int | None, str, dict | None]] = {}
        for field in message.fields:
            if field.name + "?" in by_path and field.message_type is not None:
                sub_plan = {}
                for sub in field.message_type.fields:
                    path = f"{field.name}.{sub.name}"
                    if path in by_path:
                        presence = by_path.get(path + "?")
                        sub_plan[sub] = (by_path[path].index,
                                         presence.index if presence else None, _kind_of(sub),
                                         None)
                self._plan[field] = (by_path[field.name + "?"].index, None, "message", sub_plan)
            else:
                self._plan[field] = (by_path[field.name].index, None, _kind_of(field), None)

    def slot(self, path: str) -> int:
        """The slot index of a context field ("txn.amount_minor")."""
        return self.layout.by_path[path].index

    def new(self, extra: int = 0) -> Activation:
        """An empty context vector; its numeric vector (what a bound model reads) has
        `extra` model-only features after the context's slots."""
        return Activation(self.layout.hints, extra)

    def set(self, context: Activation, path: str, value: Any) -> None:
        """Set one field by its policy name; a message field's presence follows."""
        context.set(self.layout.by_path[path].index, value)
        parent = path.split(".")[0] + "?"
        if "." in path and parent in self.layout.by_path:
            context.set(self.layout.by_path[parent].index, True)
        if path + "?" in self.layout.by_path:
            context.set(self.layout.by_path[path + "?"].index, True)

    def from_message(self, message: context_pb2.DecisionContext,
                     context: Activation | None = None) -> Activation:
        """A context vector holding `message`'s values (unset fields read as their zero
        values, as in proto3, and `has()` is false for them)."""
        if context is None:
            context = self.layout.activation()
        else:
            context.reset()
        self._fill(context, message.ListFields(), self._plan)
        return context

    def _fill(self, context: Activation, fields: list, plan: dict) -> None:
        for field, value in fields:
            slot, presence, kind, sub_plan = plan[field]
            if kind == "int":
                context.set_int(slot, value)
            elif kind == "double":
                context.set_double(slot, value)
            elif kind == "message":
                context.set_bool(slot, True)
                self._fill(context, value.ListFields(), sub_plan)
            elif kind == "string":
                context.set_string(slot, value)
            elif kind == "bool":
                context.set_bool(slot, value)
            elif kind == "timestamp":
                context.set_timestamp(slot, value.seconds, value.nanos)
                if presence is not None:
                    context.set_bool(presence, True)
            elif kind == "duration":
                context.set(slot, Duration.from_nanos(value.seconds * 10**9 + value.nanos))
                if presence is not None:
                    context.set(presence, True)
            elif kind == "list":
                context.set(slot, list(value))
            else:
                context.set(slot, value)


def _kind_of(field: Any) -> str:
    if field.is_repeated:
        return "list"
    if field.message_type is not None:
        name = field.message_type.full_name
        return "timestamp" if name == "google.protobuf.Timestamp" else "duration"
    if field.type in (field.TYPE_INT64, field.TYPE_INT32, field.TYPE_SINT64, field.TYPE_SINT32,
                      field.TYPE_SFIXED64, field.TYPE_SFIXED32, field.TYPE_ENUM):
        return "int"
    if field.type in (field.TYPE_DOUBLE, field.TYPE_FLOAT):
        return "double"
    if field.type == field.TYPE_STRING:
        return "string"
    if field.type == field.TYPE_BOOL:
        return "bool"
    return "other"


__all__ = [
    "CompiledPolicy", "DecisionContextBuilder", "PolicyCompileError", "PolicyResult",
    "RuleInfo", "RuleProblem", "compile_policy", "policy_content_hash",
]
