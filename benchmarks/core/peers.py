"""The peers: what a user could call from Python instead of payauth's core.

Models (each on the same trained model, one row and a batch):
- LightGBM `Booster.predict`, default threads and `num_threads=1`;
- XGBoost `Booster.inplace_predict`, default threads and `nthread=1`;
- lleaves (the LightGBM model compiled by LLVM), `n_jobs=1` for one row;
- treelite + tl2cgen (the model compiled to C by gcc), one thread for one row;
- onnxruntime on the model converted by onnxmltools (float32 inputs), one thread.

Rules (each on the same 50 conditions, FIRST_MATCH in Python exactly as payauth evaluates):
- common-expression-language (cel-rust), cel-expr-python (Google's cel-cpp), cel-python
  (celpy), each with every condition compiled once;
- zen-engine (GoRules): the 50 rules as one decision table (hit policy "collect"), and as 50
  compiled expressions.

A peer that cannot be set up here is returned in `unavailable` with the reason.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.metadata
import io
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from benchmarks.core import workload

# -- shared FIRST_MATCH semantics -----------------------------------------------------------

DECLINE, STEP_UP, APPROVE = "DECLINE", "STEP_UP", "APPROVE"
_KIND = {"DECLINE": 0, "STEP_UP": 0, "APPROVE": 0, "ADD_TO_SCORE": 1, "TAG": 2}


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


@dataclass(frozen=True)
class Outcome:
    """A decision in library-neutral terms, for comparing answers."""

    decision: str  # DECLINE, STEP_UP, APPROVE or "" (nothing decided)
    decided_by: str  # rule id, threshold name or ""
    matched: tuple[str, ...]  # active rules that matched, in order
    shadow_matched: tuple[str, ...]
    score: float


def first_match(rules: Sequence[workload.Rule],
                conditions: Sequence[Callable[[Any], Any]]) -> Callable[[Any, float], Any]:
    """FIRST_MATCH over per-rule predicates, as payauth's policy evaluates it: rules in order;
    ADD_TO_SCORE and TAG apply and go on; the first matching deciding rule decides and every
    active rule after it (ADD_TO_SCORE and TAG too) is skipped; shadow rules always run; an
    error is no match; then the score thresholds. Returns `decide(input, model_score) ->
    (decision, code, rule, matched, score)`, where rule is the deciding rule's index (-1
    none, -2 decline threshold, -3 step-up threshold)."""
    plan = []
    for i, (rule, cond) in enumerate(zip(rules, conditions, strict=True)):
        kind = 3 if rule.shadow else _KIND[rule.action]
        plan.append((kind, cond, i, rule.score_delta))
    actions = [(r.action, r.code or ("00" if r.action == APPROVE else "")) for r in rules]
    step_up, decline = workload.STEP_UP_SCORE_THRESHOLD, workload.DECLINE_SCORE_THRESHOLD

    def decide(inputs: Any, score: float) -> tuple[str, str, int, list[int], float]:
        decided = -1
        matched: list[int] = []
        for kind, cond, i, delta in plan:
            if decided >= 0 and kind != 3:
                continue
            try:
                hit = cond(inputs) is True
            except Exception:  # an evaluation error: not matched, as in CEL policies
                hit = False
            if hit:
                matched.append(i)
                if kind == 0:
                    decided = i
                elif kind == 1:
                    score += delta
        score = 0.0 if score < 0.0 else 1.0 if score > 1.0 else score
        if decided >= 0:
            action, code = actions[decided]
            return action, code, decided, matched, score
        if score >= decline:
            return DECLINE, "05", -2, matched, score
        if score >= step_up:
            return STEP_UP, "1A", -3, matched, score
        return "", "", -1, matched, score

    return decide


def outcome_of(rules: Sequence[workload.Rule], result: tuple) -> Outcome:
    """An Outcome from `first_match`'s result."""
    action, _code, decided, matched, score = result
    by = (rules[decided].id if decided >= 0 else
          {-2: "decline_score_threshold", -3: "step_up_score_threshold"}.get(decided, ""))
    return Outcome(action, by,
                   tuple(rules[i].id for i in matched if not rules[i].shadow),
                   tuple(rules[i].id for i in matched if rules[i].shadow), score)


# -- rules runtimes -------------------------------------------------------------------------

@dataclass
class RulesPeer:
    """One rules runtime: `prepare(record, score)` gives its input; `decide(input)` runs the
    policy FIRST_MATCH; `conditions` are the 50 per-rule predicates (cross-check)."""

    name: str
    library: str
    version: str
    prepare: Callable[[dict[str, Any], float], Any]
    conditions: list[Callable[[Any], Any]]
    decide: Callable[[Any], tuple]
    note: str = ""
    all_rules: Callable[[Any], list[bool]] | None = None  # a whole-table evaluation
    adapted_rules: list[str] = field(default_factory=list)


def _utc(seconds: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


def _plain(record: dict[str, Any], score: float, timestamp: Any) -> dict[str, Any]:
    """The record as the variables of a map-based runtime: txn, card, account, merchant,
    features, score, watch_hits."""
    txn = dict(record["txn"])
    txn["timestamp"] = timestamp(txn["timestamp"])
    return {"txn": txn, "card": record["card"], "account": record["account"],
            "merchant": record["merchant"], "features": record["features"],
            "watch_hits": record["watch_hits"], "score": score}


def cel_rust(rules: Sequence[workload.Rule]) -> RulesPeer:
    import cel

    sources = [workload.without_zones(r.cel) for r in rules]
    adapted = [r.id for r, s in zip(rules, sources, strict=True) if s != r.cel]
    programs = [cel.compile(s) for s in sources]
    conditions = [lambda x, run=p.execute: run(x[0]) for p in programs]

    def prepare(record: dict[str, Any], score: float) -> tuple:
        return cel.Context(variables=_plain(record, score, _utc)), score

    return RulesPeer("cel-rust", "common-expression-language",
                     version("common-expression-language"), prepare, conditions,
                     _wrap(rules, [p.execute for p in programs]),
                     note="common-expression-language (cel-rust via PyO3); one cel.Context "
                          "per decision; its timestamp accessors take no time zone, so "
                          f"{len(adapted)} conditions use fixed UTC-3 arithmetic instead "
                          "(identical for 2024 Sao Paulo times)",
                     adapted_rules=adapted)


def _wrap(rules: Sequence[workload.Rule], predicates: Sequence[Callable[[Any], Any]]
          ) -> Callable[[tuple], Any]:
    decide_fm = first_match(rules, predicates)

    def decide(inputs: tuple) -> Any:
        return decide_fm(inputs[0], inputs[1])
    return decide


def cel_cpp(rules: Sequence[workload.Rule]) -> RulesPeer:
    """cel-expr-python: Google's cel-cpp, declared over payauth's DecisionContext protos."""
    from cel_expr_python import cel

    from payauth.v1 import context_pb2

    pool = context_pb2.DESCRIPTOR.pool
    env = cel.NewEnv(descriptor_pool=pool, variables={
        "txn": cel.Type("payauth.v1.Transaction"), "card": cel.Type("payauth.v1.CardContext"),
        "account": cel.Type("payauth.v1.AccountContext"),
        "merchant": cel.Type("payauth.v1.MerchantContext"),
        "features": cel.Type("payauth.v1.Features"), "score": cel.Type.DOUBLE,
        "watch_hits": cel.Type.List(cel.Type.STRING)})
    expressions = [env.compile(r.cel) for r in rules]

    def predicate(expression: Any) -> Callable[[Any], Any]:
        evaluate = expression.eval

        def run(activation: Any) -> Any:
            return evaluate(activation).value()
        return run

    predicates = [predicate(e) for e in expressions]
    conditions = [lambda x, p=p: p(x[0]) for p in predicates]

    def prepare(record: dict[str, Any], score: float) -> tuple:
        txn = dict(record["txn"])
        seconds = txn.pop("timestamp")
        t = context_pb2.Transaction(**txn)
        t.timestamp.seconds = seconds
        data = {"txn": t, "card": context_pb2.CardContext(**record["card"]),
                "account": context_pb2.AccountContext(**record["account"]),
                "merchant": context_pb2.MerchantContext(**record["merchant"]),
                "features": context_pb2.Features(**record["features"]),
                "score": score, "watch_hits": list(record["watch_hits"])}
        return env.Activation(data), score

    return RulesPeer("cel-cpp", "cel-expr-python", version("cel-expr-python"), prepare,
                     conditions, _wrap(rules, predicates),
                     note="cel-expr-python (Google's cel-cpp); one Activation of "
                          "DecisionContext protos per decision")


def cel_python(rules: Sequence[workload.Rule]) -> RulesPeer:
    """cel-python (celpy): a pure-Python CEL interpreter."""
    import celpy
    from celpy import celtypes

    env = celpy.Environment()
    programs = [env.program(env.compile(r.cel)) for r in rules]

    def predicate(program: Any) -> Callable[[Any], Any]:
        evaluate = program.evaluate

        def run(activation: Any) -> Any:
            value = evaluate(activation)
            if isinstance(value, celtypes.BoolType):
                return bool(value)
            return value  # an error value: not True
        return run

    predicates = [predicate(p) for p in programs]
    conditions = [lambda x, p=p: p(x[0]) for p in predicates]

    def prepare(record: dict[str, Any], score: float) -> tuple:
        plain = _plain(record, score, int)
        seconds = plain["txn"].pop("timestamp")
        activation = celpy.json_to_cel(plain)
        activation["txn"][celtypes.StringType("timestamp")] = celtypes.TimestampType(
            _utc(seconds))
        return activation, score

    return RulesPeer("cel-python", "cel-python", version("cel-python"), prepare, conditions,
                     _wrap(rules, predicates),
                     note="celpy (pure Python); activation converted with json_to_cel")


def _zen_context(record: dict[str, Any], score: float) -> str:
    """zen's input: the variables as JSON text, which zen reads faster than a dict (about
    5.2 against 6.9 us per expression here). zen reads a number as milliseconds since the
    epoch, so the timestamp is given in milliseconds."""
    return json.dumps(_plain(record, score, lambda s: s * 1000))


def zen_expressions(rules: Sequence[workload.Rule]) -> RulesPeer:
    """zen-engine: each rule's condition as a compiled zen expression."""
    import zen

    expressions = [zen.compile_expression(r.zen) for r in rules]
    predicates = [e.evaluate for e in expressions]
    conditions = [lambda x, p=p: p(x[0]) for p in predicates]

    def prepare(record: dict[str, Any], score: float) -> tuple:
        return _zen_context(record, score), score

    return RulesPeer("zen-engine (expressions)", "zen-engine", version("zen-engine"), prepare,
                     conditions, _wrap(rules, predicates),
                     note="GoRules zen-engine: 50 zen.compile_expression, FIRST_MATCH in "
                          "Python, input as JSON text; conditions hand-written in zen's "
                          "expression language")


def zen_table(rules: Sequence[workload.Rule]) -> RulesPeer:
    """zen-engine: the 50 rules as one decision table, hit policy "collect" (every row is
    tested; the matching rule ids come back), then FIRST_MATCH applied to those ids."""
    import zen

    table = {
        "nodes": [
            {"id": "in", "type": "inputNode", "name": "request",
             "position": {"x": 0, "y": 0}},
            {"id": "rules", "type": "decisionTableNode", "name": "policy",
             "position": {"x": 200, "y": 0},
             "content": {
                 "hitPolicy": "collect",
                 "inputs": [{"id": "cond", "name": "condition"}],
                 "outputs": [{"id": "out", "name": "rule", "field": "rule"}],
                 "rules": [{"_id": f"r{i}", "cond": r.zen, "out": json.dumps(i)}
                           for i, r in enumerate(rules)],
             }},
            {"id": "out", "type": "outputNode", "name": "response",
             "position": {"x": 400, "y": 0}},
        ],
        "edges": [{"id": "e1", "sourceId": "in", "targetId": "rules", "type": "edge"},
                  {"id": "e2", "sourceId": "rules", "targetId": "out", "type": "edge"}],
    }
    decision = zen.ZenEngine().create_decision(json.dumps(table))
    evaluate = decision.evaluate

    def matched_rows(context: str) -> set[int]:
        return {int(row["rule"]) for row in evaluate(context)["result"]}

    # FIRST_MATCH over the collected rows: a rule "matches" when its row was collected.
    def decide_rows(inputs: tuple) -> Any:
        rows = matched_rows(inputs[0])
        return decide_fm(rows, inputs[1])

    decide_fm = first_match(rules, [lambda rows, i=i: i in rows for i in range(len(rules))])

    def prepare(record: dict[str, Any], score: float) -> tuple:
        return _zen_context(record, score), score

    conditions = [lambda x, i=i: i in matched_rows(x[0]) for i in range(len(rules))]
    return RulesPeer("zen-engine (decision table)", "zen-engine", version("zen-engine"),
                     prepare, conditions, decide_rows,
                     note="GoRules zen-engine: one decisionTableNode, hit policy collect, "
                          "one expression cell per rule, input as JSON text; FIRST_MATCH "
                          "applied to the rows collected",
                     all_rules=lambda x: sorted(matched_rows(x[0])))


RULES_PEERS: dict[str, Callable[[Sequence[workload.Rule]], RulesPeer]] = {
    "cel-rust": cel_rust,
    "cel-cpp": cel_cpp,
    "zen-engine-expr": zen_expressions,
    "zen-engine-table": zen_table,
    "cel-python": cel_python,
}


# -- model runtimes -------------------------------------------------------------------------

@dataclass
class ModelPeer:
    """One model runtime: `one(row)` scores one prepared row (probability), `batch(rows)` a
    prepared matrix; `prepare_one(row64)` / `prepare_batch(matrix64)` turn the float64
    model-order features into the runtime's input."""

    name: str
    library: str
    version: str
    model: str  # "lightgbm" or "xgboost"
    one: Callable[[Any], Any]
    batch: Callable[[Any], np.ndarray]
    prepare_one: Callable[[np.ndarray], Any]
    prepare_batch: Callable[[np.ndarray], Any]
    tolerance: float
    note: str = ""
    # the batch call restricted to one thread, where the default uses several
    batch_one_thread: Callable[[Any], np.ndarray] | None = None


def _row(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.reshape(1, -1), dtype=np.float64)


def _same(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float64)


def lightgbm_peers(booster: Any) -> list[ModelPeer]:
    v = version("lightgbm")
    predict = booster.predict
    return [
        ModelPeer("lightgbm predict", "lightgbm", v, "lightgbm",
                  lambda x: predict(x)[0], lambda x: predict(x), _row, _same, 1e-12,
                  "Booster.predict, default threads"),
        ModelPeer("lightgbm predict 1 thread", "lightgbm", v, "lightgbm",
                  lambda x: predict(x, num_threads=1)[0],
                  lambda x: predict(x, num_threads=1), _row, _same, 1e-12,
                  "Booster.predict(num_threads=1)"),
    ]


def xgboost_peers(booster: Any) -> list[ModelPeer]:
    v = version("xgboost-cpu") if version("xgboost-cpu") != "?" else version("xgboost")
    single = booster.copy()
    single.set_param({"nthread": 1})
    default = booster.copy()
    return [
        ModelPeer("xgboost inplace_predict", "xgboost", v, "xgboost",
                  lambda x: default.inplace_predict(x)[0], default.inplace_predict, _row,
                  _same, 1e-6, "Booster.inplace_predict, default threads"),
        ModelPeer("xgboost inplace_predict 1 thread", "xgboost", v, "xgboost",
                  lambda x: single.inplace_predict(x)[0], single.inplace_predict, _row, _same,
                  1e-6, "Booster.inplace_predict with nthread=1"),
    ]


def lleaves_peer(model_file: str, cache_dir: str) -> ModelPeer:
    import lleaves

    model = lleaves.Model(model_file=model_file)
    model.compile(cache=os.path.join(cache_dir, "lleaves.o"))
    predict = model.predict
    return ModelPeer("lleaves", "lleaves", version("lleaves"), "lightgbm",
                     lambda x: predict(x, n_jobs=1)[0], lambda x: predict(x), _row, _same,
                     1e-9, f"LLVM-compiled LightGBM model (llvmlite {version('llvmlite')}); "
                           "n_jobs=1 for one row, default (all cores) for a batch",
                     batch_one_thread=lambda x: predict(x, n_jobs=1))


def _quiet() -> contextlib.AbstractContextManager:
    return contextlib.redirect_stdout(io.StringIO())


def tl2cgen_peer(treelite_model: Any, model: str, cache_dir: str) -> ModelPeer:
    import tl2cgen

    libpath = os.path.join(cache_dir, f"tl2cgen-{model}.so")
    with _quiet():
        tl2cgen.export_lib(treelite_model, toolchain="gcc", libpath=libpath,
                           params={"parallel_comp": os.cpu_count() or 2},
                           nthread=os.cpu_count() or 2, verbose=False)
    one = tl2cgen.Predictor(libpath, nthread=1, verbose=False)
    many = tl2cgen.Predictor(libpath, verbose=False)
    dmatrix = tl2cgen.DMatrix
    return ModelPeer(f"tl2cgen ({model})", "tl2cgen", version("tl2cgen"), model,
                     lambda x: one.predict(dmatrix(x))[0, 0, 0],
                     lambda x: many.predict(dmatrix(x)).reshape(-1), _row, _same,
                     1e-9 if model == "lightgbm" else 1e-6,
                     f"treelite {version('treelite')} model compiled to C by tl2cgen and gcc "
                     "-O3; one thread for one row (DMatrix built per call), all cores for "
                     "a batch",
                     batch_one_thread=lambda x: one.predict(dmatrix(x)).reshape(-1))


def lightgbm_tl2cgen_peer(model_file: str, cache_dir: str) -> ModelPeer:
    import treelite

    return tl2cgen_peer(treelite.frontend.load_lightgbm_model(model_file), "lightgbm",
                        cache_dir)


def xgboost_tl2cgen_peer(json_file: str, cache_dir: str) -> ModelPeer:
    import treelite

    return tl2cgen_peer(treelite.frontend.load_xgboost_model(json_file), "xgboost", cache_dir)


def _onnx_session(onnx_model: Any) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(onnx_model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def _f32_row(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.reshape(1, -1), dtype=np.float32)


def _f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def onnx_peer(onnx_model: Any, model: str) -> ModelPeer:
    session = _onnx_session(onnx_model)
    run = session.run
    name = session.get_inputs()[0].name
    outputs = ["probabilities"]
    return ModelPeer(f"onnxruntime ({model})", "onnxruntime", version("onnxruntime"), model,
                     lambda x: run(outputs, {name: x})[0][0, 1],
                     lambda x: run(outputs, {name: x})[0][:, 1], _f32_row, _f32, 2e-6,
                     f"converted by onnxmltools {version('onnxmltools')} (float32 inputs and "
                     "thresholds, TreeEnsembleClassifier), one intra-op thread")


def lightgbm_onnx_peer(booster: Any) -> ModelPeer:
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    onnx_model = onnxmltools.convert_lightgbm(
        booster, initial_types=[("input", FloatTensorType([None, len(workload.MODEL_FEATURES)]))],
        zipmap=False, target_opset=15)
    return onnx_peer(onnx_model, "lightgbm")


def xgboost_onnx_peer(booster: Any) -> ModelPeer:
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    unnamed = booster.copy()
    unnamed.feature_names = None  # the converter wants f0, f1 ... names
    onnx_model = onnxmltools.convert_xgboost(
        unnamed, initial_types=[("input", FloatTensorType([None, len(workload.MODEL_FEATURES)]))],
        target_opset=15)
    return onnx_peer(onnx_model, "xgboost")


def temp_dir() -> str:
    return tempfile.mkdtemp(prefix="payauth-bench-core-")
