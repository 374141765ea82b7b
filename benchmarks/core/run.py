"""The decision-core benchmark: `python -m benchmarks.core` (`make bench-core`).

One run, everything side by side (this machine is shared and noisy; only figures measured
together compare):

1. generate the workload (benchmarks/core/workload.py): 50 rules, authorizations, and a risk
   model of 200 trees of depth 6 on 30 features trained with LightGBM and with XGBoost;
2. set up payauth's core (the policy compiled once, each model bound by name onto the
   decision vector) and every peer that installs here;
3. cross-check: every contender must give payauth's answers on a sample of inputs (models:
   the probability within the contender's tolerance; rules: each of the 50 conditions on
   every sampled input, and the FIRST_MATCH decision, deciding rule, matched and shadow
   rules and final score); a contender that disagrees is reported and not timed;
4. time, in three interleaved groups: single decisions (one row per call), batches, and the
   whole decision (model + policy) of payauth against the best peer combination;
5. print the table, write benchmarks/results/core.json and core.png.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

from benchmarks.core import payauth_side, peers, report, workload  # noqa: E402
from benchmarks.core.timing import Case, measure  # noqa: E402
from benchmarks.output import cpu_model, write_results  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
RESULTS = REPO_ROOT / "benchmarks" / "results"

PAYAUTH_DECISION = "payauth decision"
PAYAUTH_DECISION_FILLED = "payauth decision, context filled"
PAYAUTH_FILL = "payauth fill: context + vector"
PAYAUTH_FILL_CONTEXT = "payauth fill: context"
PAYAUTH_FILL_VECTOR = "payauth fill: vector"
PREP = " input from record"
ONE_THREAD = " 1 thread"
PAYAUTH_POLICY = "payauth policy"
PAYAUTH_MODEL = "payauth model ({})"
PAYAUTH_POLICY_LOOP = "payauth policy C loop, {} rules"
NODE_WALK = ", node walk"  # the same, the model kept on the node walk (ranked=False)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "load_average_at_start": os.getloadavg()}


def payauth_outcome(result: Any) -> peers.Outcome:
    from payauth.v1 import common_pb2

    decision = common_pb2.Decision.Name(result.decision).removeprefix("DECISION_")
    by = result.rule.id if result.rule is not None else (result.threshold or "")
    return peers.Outcome("" if decision == "UNSPECIFIED" else decision, by,
                         tuple(r.id for r in result.matched),
                         tuple(r.id for r in result.shadow_matched), result.score)


def same_outcome(a: peers.Outcome, b: peers.Outcome) -> bool:
    return (a.decision, a.decided_by, a.matched, a.shadow_matched) == \
        (b.decision, b.decided_by, b.matched, b.shadow_matched) and abs(a.score - b.score) < 1e-9


class Bench:
    """Everything one run sets up, checks and times."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = peers.temp_dir()
        self.versions: dict[str, str] = {}
        self.unavailable: dict[str, str] = {}
        self.wrong: dict[str, str] = {}
        self.checks: dict[str, dict[str, Any]] = {}
        self.meta: dict[str, dict[str, str]] = {}  # contender -> library, version, note
        self.setup_s: dict[str, float] = {}

    # -- set-up ------------------------------------------------------------------------

    def build(self) -> None:
        a = self.args
        t = time.perf_counter()
        x_train, y_train = workload.training_set(a.train_rows)
        self.booster = workload.train_lightgbm(x_train, y_train)
        self.setup_s["train lightgbm"] = time.perf_counter() - t
        t = time.perf_counter()
        self.xgb_booster = workload.train_xgboost(x_train, y_train)
        self.setup_s["train xgboost"] = time.perf_counter() - t
        self.lgb_file = os.path.join(self.tmp, "model.txt")
        self.booster.save_model(self.lgb_file)
        self.xgb_file = os.path.join(self.tmp, "model.json")
        self.xgb_booster.save_model(self.xgb_file)
        log(f"trained: lightgbm {self.setup_s['train lightgbm']:.1f} s, "
            f"xgboost {self.setup_s['train xgboost']:.1f} s on {a.train_rows} rows "
            f"({y_train.mean():.1%} positive)")

        t = time.perf_counter()
        self.policy = payauth_side.compile_workload_policy()
        self.policy_all = payauth_side.compile_workload_policy(all_matches=True)
        self.policy_one = payauth_side.compile_workload_policy(workload.RULES[:1],
                                                               all_matches=True)
        self.setup_s["payauth compile policy"] = time.perf_counter() - t
        with open(self.lgb_file) as f:
            self.decider = payauth_side.PayauthDecider(self.policy, f.read())
        with open(self.xgb_file) as f:
            from payauth.core import load_model
            self.xgb_ensemble = load_model(f.read()).bind(self.decider.vector_layout,
                                                          width=self.decider.width)
        self.ensemble = self.decider.ensemble
        from payauth.core.trees import TreeEnsemble
        self.node_walk = TreeEnsemble(self.ensemble.model, self.ensemble.feature_index,
                                      self.ensemble.width, ranked=False)
        self.decide_node_walk = self.decider.decide_with(self.node_walk)

        # inputs: distinct records for single calls, a larger set for batches
        self.records = workload.make_records(a.records, seed=5)
        self.batch_records = workload.make_records(a.batch_rows, seed=6)
        d = self.decider
        self.vectors = [d.vector(r) for r in self.records]
        self.model_rows = np.array([workload.model_row(r) for r in self.records])
        self.batch_matrix = np.ascontiguousarray(
            np.array([np.frombuffer(d.vector(r)) for r in self.batch_records]))
        self.batch_model_rows = np.ascontiguousarray(
            np.array([workload.model_row(r) for r in self.batch_records]))
        self.scores = [self.ensemble.probability_of(v) for v in self.vectors]
        self.batch_scores = self.ensemble.probabilities(self.batch_matrix)
        self.contexts = [d.prepared_context(r, s) for r, s in zip(self.records, self.scores,
                                                                  strict=True)]
        self.batch_contexts = [d.prepared_context(r, s) for r, s in
                               zip(self.batch_records, self.batch_scores, strict=True)]
        self.results = [self.policy.evaluate(c) for c in self.contexts]
        self.outcomes = [payauth_outcome(r) for r in self.results]
        self.all_status = [[self.policy_all.evaluate(c).status(rule.id) == "match"
                            for rule in workload.RULES] for c in self.contexts]
        self.versions["payauth"] = peers.version("payauth")
        decided = sum(1 for o in self.outcomes if o.decided_by)
        evaluated = np.mean([sum(1 for rule in workload.RULES
                                 if r.status(rule.id) != "skipped") for r in self.results])
        self.workload_stats = {
            "records": len(self.records), "batch_rows": len(self.batch_records),
            "decided_share": decided / len(self.outcomes),
            "rules_evaluated_per_decision": float(evaluated),
            "nodes_visited_per_row": float(self.ensemble.nodes_visited(
                self.batch_matrix).mean()),
            "xgboost_nodes_visited_per_row": float(self.xgb_ensemble.nodes_visited(
                self.batch_matrix).mean()),
            "model_trees": self.ensemble.n_trees, "model_nodes": self.ensemble.n_nodes,
            "model_features": len(workload.MODEL_FEATURES), "rules": len(workload.RULES),
            "shadow_rules": sum(r.shadow for r in workload.RULES),
            "decision_vector_width": d.width,
        }
        log(f"payauth: policy of {len(workload.RULES)} rules compiled in "
            f"{self.setup_s['payauth compile policy']:.2f} s; {decided / len(self.outcomes):.0%}"
            f" of decisions decided by a rule or threshold, {evaluated:.1f} rules evaluated "
            f"per decision, {self.workload_stats['nodes_visited_per_row']:.0f} nodes visited "
            f"per row")
        self._check_payauth_models()

    def _check_payauth_models(self) -> None:
        """payauth's bound models against the libraries themselves (binding by name)."""
        lgb_ref = self.booster.predict(self.batch_model_rows)
        ours = self.ensemble.probabilities(self.batch_matrix)
        xgb_ref = self.xgb_booster.inplace_predict(self.batch_model_rows)
        ours_x = self.xgb_ensemble.probabilities(self.batch_matrix)
        diff, diff_x = float(np.abs(lgb_ref - ours).max()), float(np.abs(xgb_ref - ours_x).max())
        self.checks[PAYAUTH_MODEL.format("lightgbm")] = {
            "against": "lightgbm Booster.predict", "rows": len(ours), "max_abs_diff": diff,
            "ok": diff <= 1e-12}
        self.checks[PAYAUTH_MODEL.format("xgboost")] = {
            "against": "xgboost inplace_predict", "rows": len(ours), "max_abs_diff": diff_x,
            "ok": diff_x <= 1e-6}
        if diff > 1e-12 or diff_x > 1e-6:
            raise SystemExit(f"payauth's models disagree with the libraries: {diff}, {diff_x}")
        # The node walk, timed beside the ranked walk, must give the same answers.
        if not self.ensemble.walks_ranked or self.node_walk.walks_ranked:
            raise SystemExit("the benchmark model must take the ranked walk, its twin the "
                             "node walk")
        node_diff = float(np.abs(self.node_walk.probabilities(self.batch_matrix) - ours).max())
        same = sum(self.decide_node_walk(r) == self.decider.decide(r) for r in self.records)
        self.checks[PAYAUTH_MODEL.format("lightgbm") + NODE_WALK] = {
            "against": PAYAUTH_MODEL.format("lightgbm"), "rows": len(ours),
            "max_abs_diff": node_diff, "decisions": len(self.records),
            "decisions_differing": len(self.records) - same,
            "ok": node_diff == 0 and same == len(self.records)}
        if node_diff != 0 or same != len(self.records):
            raise SystemExit(f"the node walk disagrees with the ranked walk: {node_diff}, "
                             f"{len(self.records) - same} decisions")

    def _peer(self, key: str, make: Callable[[], Any]) -> Any:
        if key in self.args.skip:
            self.unavailable[key] = "skipped (--skip)"
            return None
        t = time.perf_counter()
        try:
            peer = make()
        except ImportError as exc:
            self.unavailable[key] = f"not installed: {exc}"
            log(f"{key}: unavailable ({exc})")
            return None
        except Exception as exc:  # a peer that fails to set up is reported, never faked
            self.unavailable[key] = f"set-up failed: {type(exc).__name__}: {exc}"[:400]
            log(f"{key}: set-up failed: {type(exc).__name__}: {exc}")
            return None
        self.setup_s[key] = time.perf_counter() - t
        return peer

    def build_peers(self) -> None:
        self.model_peers: list[peers.ModelPeer] = []
        self.model_peers += self._peer("lightgbm", lambda: peers.lightgbm_peers(
            self.booster)) or []
        self.model_peers += self._peer("xgboost", lambda: peers.xgboost_peers(
            self.xgb_booster)) or []
        for key, make in (
            ("lleaves", lambda: peers.lleaves_peer(self.lgb_file, self.tmp)),
            ("tl2cgen (lightgbm)", lambda: peers.lightgbm_tl2cgen_peer(self.lgb_file,
                                                                       self.tmp)),
            ("tl2cgen (xgboost)", lambda: peers.xgboost_tl2cgen_peer(self.xgb_file, self.tmp)),
            ("onnxruntime (lightgbm)", lambda: peers.lightgbm_onnx_peer(self.booster)),
            ("onnxruntime (xgboost)", lambda: peers.xgboost_onnx_peer(self.xgb_booster)),
        ):
            log(f"setting up {key} ...")
            peer = self._peer(key, make)
            if peer is not None:
                self.model_peers.append(peer)
                log(f"{key}: ready in {self.setup_s[key]:.1f} s")
        self.rules_peers: list[peers.RulesPeer] = []
        for key, make in peers.RULES_PEERS.items():
            peer = self._peer(key, lambda make=make: make(workload.RULES))
            if peer is not None:
                self.rules_peers.append(peer)
        for p in self.model_peers:
            self.versions[p.library] = p.version
            self.meta[p.name] = {"library": p.library, "version": p.version, "note": p.note}
        for p in self.rules_peers:
            self.versions[p.library] = p.version
            self.meta[p.name] = {"library": p.library, "version": p.version, "note": p.note}
        for dist in ("lightgbm", "xgboost-cpu", "numpy", "cel-expr-python", "llvmlite",
                     "treelite", "onnxmltools", "onnx"):
            self.versions.setdefault(dist, peers.version(dist))

    # -- cross-checks ----------------------------------------------------------------------

    def check_models(self) -> None:
        n = self.args.check_rows
        rows = self.batch_model_rows[:n]
        ours = {"lightgbm": self.ensemble.probabilities(self.batch_matrix[:n]),
                "xgboost": self.xgb_ensemble.probabilities(self.batch_matrix[:n])}
        kept = []
        for p in self.model_peers:
            ref = ours[p.model]
            batch = np.asarray(p.batch(p.prepare_batch(rows)), dtype=np.float64).reshape(-1)
            single = np.array([p.one(p.prepare_one(rows[i])) for i in range(min(n, 300))],
                              dtype=np.float64)
            diff = max(float(np.abs(batch - ref).max()),
                       float(np.abs(single - ref[:len(single)]).max()))
            if p.batch_one_thread is not None:
                one_thread = np.asarray(p.batch_one_thread(p.prepare_batch(rows)),
                                        dtype=np.float64).reshape(-1)
                diff = max(diff, float(np.abs(one_thread - ref).max()))
            ok = diff <= p.tolerance
            self.checks[p.name] = {"against": PAYAUTH_MODEL.format(p.model),
                                   "rows": n, "single_rows": len(single),
                                   "max_abs_diff": diff, "tolerance": p.tolerance, "ok": ok}
            log(f"check {p.name}: max |p - payauth| = {diff:.3g} over {n} rows "
                f"({'ok' if ok else 'WRONG'})")
            if ok:
                kept.append(p)
            else:
                self.wrong[p.name] = f"probability differs from payauth by {diff:.3g} " \
                                     f"(tolerance {p.tolerance:g})"
        self.model_peers = kept

    def check_rules(self) -> None:
        kept = []
        for p in self.rules_peers:
            n = self.args.check_slow if p.library == "cel-python" else len(self.records)
            inputs = [p.prepare(r, s) for r, s in zip(self.records[:n], self.scores[:n],
                                                       strict=True)]
            bad_conditions = 0
            first_bad = ""
            for i, inp in enumerate(inputs):
                hits = self._peer_hits(p, inp)
                for j, rule in enumerate(workload.RULES):
                    hit = hits[j]
                    if hit != self.all_status[i][j]:
                        bad_conditions += 1
                        first_bad = first_bad or (f"record {i}, rule {rule.id}: peer {hit}, "
                                                  f"payauth {self.all_status[i][j]}")
            bad_decisions = 0
            for i, inp in enumerate(inputs):
                if not same_outcome(peers.outcome_of(workload.RULES, p.decide(inp)),
                                    self.outcomes[i]):
                    bad_decisions += 1
                    first_bad = first_bad or f"record {i}: decision differs"
            ok = bad_conditions == 0 and bad_decisions == 0
            self.checks[p.name] = {"against": PAYAUTH_POLICY, "records": n,
                                   "conditions_checked": n * len(workload.RULES),
                                   "conditions_differing": bad_conditions,
                                   "decisions_differing": bad_decisions, "ok": ok,
                                   "adapted_rules": p.adapted_rules}
            if first_bad:
                self.checks[p.name]["first_difference"] = first_bad
            log(f"check {p.name}: {n * len(workload.RULES)} conditions, {n} decisions: "
                + ("ok" if ok else f"WRONG ({bad_conditions} conditions, {bad_decisions} "
                                   f"decisions; {first_bad})"))
            if ok:
                p.inputs = inputs  # type: ignore[attr-defined]
                kept.append(p)
            else:
                self.wrong[p.name] = f"{bad_conditions} conditions and {bad_decisions} " \
                                     f"decisions differ from payauth; first: {first_bad}"
        self.rules_peers = kept

    @staticmethod
    def _peer_hits(p: peers.RulesPeer, inp: Any) -> list[bool]:
        """Each of the 50 conditions on one input, by the peer (an error is no match)."""
        if p.all_rules is not None:
            rows = set(p.all_rules(inp))
            return [j in rows for j in range(len(workload.RULES))]
        hits = []
        for cond in p.conditions:
            try:
                hits.append(cond(inp) is True)
            except Exception:
                hits.append(False)
        return hits

    # -- timing ----------------------------------------------------------------------------

    def _measure(self, cases: list[Case], what: str) -> None:
        log(f"timing {what}: {len(cases)} contenders, {self.args.repeats} interleaved rounds "
            f"of ~{self.args.repeat_seconds:g} s each")
        measure(cases, self.args.repeats, self.args.repeat_seconds,
                progress=lambda m: None)

    def single_cases(self) -> list[Case]:
        d = self.decider
        policy = self.policy
        lgb_prob = self.ensemble.probability_of
        status = bytearray(len(workload.RULES))
        run_all = self.policy_all._core.run  # the C rule loop without PolicyResult
        run_one = self.policy_one._core.run
        status_one = bytearray(1)

        def decide_filled(ctx: Any, decide: Any = policy.decide, model: Any = self.ensemble) -> Any:
            # The decision's own call without its plan: the model scores the prepared
            # context's numeric vector, the rules run, the outcome's answer comes back.
            return decide(ctx, model)

        cases = [
            Case(PAYAUTH_DECISION, d.decide, self.records),
            Case(PAYAUTH_DECISION + NODE_WALK, self.decide_node_walk, self.records),
            Case(PAYAUTH_DECISION_FILLED, decide_filled, self.contexts),
            Case(PAYAUTH_FILL, d.fill, self.records),
            Case(PAYAUTH_FILL_CONTEXT, d.fill_context, self.records),
            Case(PAYAUTH_FILL_VECTOR, d.build_vector, self.records),
            Case(PAYAUTH_MODEL.format("lightgbm"), lgb_prob, self.vectors),
            Case(PAYAUTH_MODEL.format("lightgbm") + NODE_WALK, self.node_walk.probability_of,
                 self.vectors),
            Case(PAYAUTH_MODEL.format("xgboost"), self.xgb_ensemble.probability_of,
                 self.vectors),
            Case(PAYAUTH_POLICY, policy.evaluate, self.contexts),
            Case(PAYAUTH_POLICY_LOOP.format(50), lambda c: run_all(c, status), self.contexts),
            Case(PAYAUTH_POLICY_LOOP.format(1), lambda c: run_one(c, status_one),
                 self.contexts),
        ]
        for p in self.model_peers:
            cases.append(Case(p.name, p.one, [p.prepare_one(r) for r in self.model_rows]))
        for p in self.rules_peers:
            cases.append(Case(p.name, p.decide, p.inputs))  # type: ignore[attr-defined]
            cases.append(Case(p.name + PREP, lambda r, prepare=p.prepare: prepare(r, 0.5),
                              self.records))
        return cases

    def batch_cases(self) -> list[Case]:
        n = len(self.batch_records)
        matrix, rows = self.batch_matrix, self.batch_model_rows
        cases = [
            Case(PAYAUTH_MODEL.format("lightgbm") + " batch", self.ensemble.probabilities,
                 [matrix], rows=n),
            Case(PAYAUTH_MODEL.format("xgboost") + " batch", self.xgb_ensemble.probabilities,
                 [matrix], rows=n),
            Case("payauth C loop (margins, lightgbm)", self.ensemble.margins, [matrix], rows=n),
            Case("payauth C loop (margins, xgboost)", self.xgb_ensemble.margins, [matrix],
                 rows=n),
        ]
        for p in self.model_peers:
            cases.append(Case(p.name + " batch", p.batch, [p.prepare_batch(rows)], rows=n))
            if p.batch_one_thread is not None:
                cases.append(Case(p.name + ONE_THREAD + " batch", p.batch_one_thread,
                                  [p.prepare_batch(rows)], rows=n))
        return cases

    def decision_cases(self, best_model: peers.ModelPeer | None,
                       best_rules: peers.RulesPeer | None,
                       lightgbm: peers.ModelPeer | None) -> list[Case]:
        """The whole decision from a record: payauth against peer combinations, single
        and batch."""
        d = self.decider
        cases = [Case(PAYAUTH_DECISION, d.decide, self.records)]
        policy, slot = self.policy, d.score_slot
        probabilities = self.ensemble.probabilities
        contexts = self.batch_contexts
        matrix = self.batch_matrix

        def payauth_batch(m: np.ndarray) -> None:
            for ctx, p in zip(contexts, probabilities(m), strict=True):
                ctx.set_double(slot, p)
                policy.evaluate(ctx)

        cases.append(Case("payauth decision batch", payauth_batch, [matrix],
                          rows=len(contexts)))
        row_of = model_row_maker()
        if best_rules is not None:
            for model in (best_model, lightgbm):
                if model is None:
                    continue
                name = f"{model.name} + {best_rules.name}"
                cases.append(Case(name, peer_decision(model, best_rules, row_of),
                                  self.records))
                self.meta[name] = {"library": f"{model.library} + {best_rules.library}",
                                   "version": f"{model.version} + {best_rules.version}",
                                   "note": "the model's row and the rules' input built from "
                                           "the record, then score, then rules"}
            if best_model is not None and best_rules.library in RESCORABLE:
                inputs = [best_rules.prepare(r, 0.0) for r in self.batch_records]
                rows = best_model.prepare_batch(self.batch_model_rows)
                decide, batch = best_rules.decide, best_model.batch
                rescore = rescorer(best_rules)

                def peer_batch(x: Any) -> None:
                    for inp, p in zip(inputs, batch(x), strict=True):
                        decide(rescore(inp, float(p)))

                name = f"{best_model.name} + {best_rules.name} batch"
                cases.append(Case(name, peer_batch, [rows], rows=len(inputs)))
                self.meta[name] = {
                    "library": f"{best_model.library} + {best_rules.library}",
                    "version": f"{best_model.version} + {best_rules.version}",
                    "note": "batch predict, then the rules per row on inputs built "
                            "beforehand (only the score is replaced)"}
        return cases

    def check_decisions(self, cases: list[Case]) -> None:
        """The peer combinations must decide as payauth does (on the single-call inputs)."""
        for case in cases:
            if case.name.startswith("payauth") or case.name.endswith("batch"):
                continue
            differing = 0
            n = min(len(self.records), self.args.check_rows)
            for i in range(n):
                theirs = peers.outcome_of(workload.RULES, case.func(self.records[i]))
                if not same_outcome(theirs, self.outcomes[i]):
                    differing += 1
            self.checks[case.name] = {"against": PAYAUTH_DECISION, "records": n,
                                      "decisions_differing": differing, "ok": differing == 0}
            log(f"check {case.name}: {n} decisions, {differing} differ")
            if differing:
                self.wrong[case.name] = f"{differing} of {n} decisions differ from payauth"
        wrong = set(self.wrong)
        cases[:] = [c for c in cases if c.name not in wrong]


def model_row_maker() -> Callable[[dict[str, Any]], np.ndarray]:
    """Straight-line code building the model's 1 x 30 float64 row from a record (what a
    peer-based server would run per decision)."""
    items = []
    for name in workload.MODEL_FEATURES:
        group, field = name.split(".")
        items.append(f"r[{group!r}][{field!r}]")
    source = (f"def row(r):\n    return np.array([[{', '.join(items)}]], "
              f"dtype=np.float64)\n")
    namespace: dict[str, Any] = {"np": np}
    exec(source, namespace)  # noqa: S102 - generated from workload.MODEL_FEATURES
    return namespace["row"]


RESCORABLE = ("common-expression-language",)


def rescorer(rules: peers.RulesPeer) -> Callable[[Any, float], Any]:
    """Put a new model score into a rules peer's prepared input."""
    if rules.library == "common-expression-language":
        def cel_rust(inp: tuple, score: float) -> tuple:
            inp[0].add_variable("score", score)
            return inp[0], score
        return cel_rust
    raise ValueError(f"no batch re-scoring for {rules.library}")


def peer_decision(model: peers.ModelPeer, rules: peers.RulesPeer,
                  row_of: Callable[[dict[str, Any]], np.ndarray]) -> Callable[[dict], Any]:
    """The whole decision with peers, from the same record payauth decides from."""
    one = model.one
    prepare, decide = rules.prepare, rules.decide
    if model.library == "onnxruntime":
        def decision(record: dict[str, Any]) -> Any:
            score = float(one(row_of(record).astype(np.float32)))
            return decide(prepare(record, score))
    else:
        def decision(record: dict[str, Any]) -> Any:
            score = float(one(row_of(record)))
            return decide(prepare(record, score))
    return decision


def ratio(timings: dict[str, dict[str, Any]], slower: str, faster: str) -> float | None:
    if slower not in timings or faster not in timings:
        return None
    return timings[slower]["median_ns"] / timings[faster]["median_ns"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.core", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15,
                        help="interleaved rounds per group (default 15)")
    parser.add_argument("--repeat-seconds", type=float, default=0.06,
                        help="target duration of one repeat of one contender (default 0.06)")
    parser.add_argument("--records", type=int, default=1000,
                        help="distinct authorizations cycled by single-call timings")
    parser.add_argument("--batch-rows", type=int, default=10000, help="rows per batch call")
    parser.add_argument("--train-rows", type=int, default=20000)
    parser.add_argument("--check-rows", type=int, default=1000,
                        help="rows each model peer and decision combination is checked on")
    parser.add_argument("--check-slow", type=int, default=100,
                        help="records cel-python (the slowest) is checked on")
    parser.add_argument("--skip", action="append", default=[],
                        help="a peer to leave out (lightgbm, xgboost, lleaves, "
                             "'tl2cgen (xgboost)', cel-python ...); repeatable")
    parser.add_argument("--quick", action="store_true",
                        help="3 rounds of 0.03 s, fewer rows: a smoke run, not figures")
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help="folder for core.json and core.png")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.repeat_seconds = 3, 0.03
        args.records, args.batch_rows, args.check_rows = 300, 2000, 300
        args.check_slow = 20
    started = time.perf_counter()
    bench = Bench(args)
    try:
        return _run(bench, args, started)
    finally:
        shutil.rmtree(bench.tmp, ignore_errors=True)


def _run(bench: Bench, args: argparse.Namespace, started: float) -> int:
    info = machine()
    log(f"machine: {info['cpu']}, {info['cores']} cores, load {info['load_average_at_start']}")
    bench.build()
    bench.build_peers()
    bench.check_models()
    bench.check_rules()

    single = bench.single_cases()
    bench._measure(single, "single decisions (one row per call)")
    batch = bench.batch_cases()
    bench._measure(batch, f"batches of {args.batch_rows} rows")
    timings = {c.name: c.summary() for c in single}
    timings.update({c.name: c.summary() for c in batch})

    # the fastest peers on the LightGBM model (the policy's model) and on the rules
    lgb_peers = [p for p in bench.model_peers if p.model == "lightgbm"]
    best_model = min(lgb_peers, key=lambda p: timings[p.name]["median_ns"], default=None)
    fastest_rules = min(bench.rules_peers, key=lambda p: timings[p.name]["median_ns"],
                        default=None)
    # for the whole decision, the rules peer that is fastest with its input built included
    best_rules = min(bench.rules_peers, key=lambda p: timings[p.name]["median_ns"]
                     + timings[p.name + PREP]["median_ns"], default=None)
    lightgbm = min((p for p in lgb_peers if p.library == "lightgbm"),
                   key=lambda p: timings[p.name]["median_ns"], default=None)
    decision = bench.decision_cases(best_model, best_rules,
                                    lightgbm if lightgbm is not best_model else None)
    bench.check_decisions(decision)
    bench._measure(decision, "whole decisions: payauth against the best peer combination")
    combined = {c.name: c.summary() for c in decision}

    doc = summarize(bench, args, info, timings, combined, best_model, fastest_rules,
                    best_rules, lightgbm, started)
    write_results(doc, args.out, "core", report.plot,
                  lambda d: f"{report.table(d)}\n\n{report.targets_text(d)}")
    log(f"{time.perf_counter() - started:.0f} s in all")
    return 0


def summarize(bench: Bench, args: argparse.Namespace, info: dict[str, Any],
              timings: dict[str, dict[str, Any]], combined: dict[str, dict[str, Any]],
              best_model: peers.ModelPeer | None, fastest_rules: peers.RulesPeer | None,
              combo_rules: peers.RulesPeer | None, lightgbm: peers.ModelPeer | None,
              started: float) -> dict[str, Any]:
    stats = bench.workload_stats
    nodes = stats["nodes_visited_per_row"]
    ns_node = timings["payauth C loop (margins, lightgbm)"]["median_ns"] / nodes
    ns_node_x = (timings["payauth C loop (margins, xgboost)"]["median_ns"]
                 / stats["xgboost_nodes_visited_per_row"])
    loop50 = timings[PAYAUTH_POLICY_LOOP.format(50)]["median_ns"]
    loop1 = timings[PAYAUTH_POLICY_LOOP.format(1)]["median_ns"]
    ns_rule = (loop50 - loop1) / (len(workload.RULES) - 1)

    for name, t in timings.items():
        t["group"] = ("batch" if name.endswith("batch") or "margins" in name else
                      "prep" if name.endswith(PREP) else "single")
        base = name.removesuffix(" batch").removesuffix(PREP)
        t.update(bench.meta.get(base, bench.meta.get(base.removesuffix(ONE_THREAD),
                                                     {"library": "payauth"})))
    for name, t in combined.items():
        t["group"] = "decision batch" if name.endswith("batch") else "decision"
        t.update(bench.meta.get(name, {"library": "payauth"}))

    ratios: dict[str, float] = {}
    counterpart = {"lightgbm": PAYAUTH_MODEL.format("lightgbm"),
                   "xgboost": PAYAUTH_MODEL.format("xgboost")}
    for p in bench.model_peers:
        r = ratio(timings, p.name, counterpart[p.model])
        if r is not None:
            ratios[f"payauth_vs_{slug(p.name)}"] = r
        for suffix in (" batch", ONE_THREAD + " batch"):
            r = ratio(timings, p.name + suffix, counterpart[p.model] + " batch")
            if r is not None:
                ratios[f"payauth_vs_{slug(p.name + suffix)}"] = r
    for p in bench.rules_peers:
        r = ratio(timings, p.name, PAYAUTH_POLICY)
        if r is not None:
            ratios[f"payauth_vs_{slug(p.name)}"] = r
    for name in combined:
        if not name.startswith("payauth"):
            ours = "payauth decision batch" if name.endswith("batch") else PAYAUTH_DECISION
            ratios[f"payauth_decision_vs_{slug(name)}"] = \
                combined[name]["median_ns"] / combined[ours]["median_ns"]

    for name in (PAYAUTH_DECISION, PAYAUTH_MODEL.format("lightgbm")):
        r = ratio(timings, name + NODE_WALK, name)
        if r is not None:
            ratios[f"{slug(name)}_ranked_vs_node_walk"] = r

    # targets (issue 6): all from the single-decision group, measured side by side
    targets = []
    decision_ns = timings[PAYAUTH_DECISION]["median_ns"]
    filled_ns = timings[PAYAUTH_DECISION_FILLED]["median_ns"]
    decision_min = timings[PAYAUTH_DECISION]["min_ns"]

    def by_min(name: str) -> str:
        return f"by the minima {timings[name]['min_ns'] / decision_min:.1f}x"

    def target(name: str, bound: str, measured: float | None, goal: float, higher: bool,
               against: str, detail: str) -> None:
        met = None if measured is None else (measured >= goal if higher else measured <= goal)
        targets.append({"target": name, "bound": bound, "measured": measured,
                        "met": met, "against": against, "detail": detail})

    if lightgbm is not None:
        lgb_ns = timings[lightgbm.name]["median_ns"]
        target("decision vs LightGBM one-row predict", ">= 10x", lgb_ns / decision_ns, 10,
               True, lightgbm.name,
               f"payauth decision (fill + score + policy) {decision_ns:.0f} ns vs "
               f"{lightgbm.name} {lgb_ns:.0f} ns ({by_min(lightgbm.name)}); with the "
               f"context already filled {filled_ns:.0f} ns = {lgb_ns / filled_ns:.1f}x")
        ratios["payauth_decision_vs_lightgbm_predict"] = lgb_ns / decision_ns
        ratios["payauth_decision_filled_vs_lightgbm_predict"] = lgb_ns / filled_ns
    best_rules = fastest_rules
    if best_rules is not None:
        rules_ns = timings[best_rules.name]["median_ns"]
        prep_ns = timings[best_rules.name + PREP]["median_ns"]
        target("decision vs the fastest CEL/rules runtime", ">= 10x", rules_ns / decision_ns,
               10, True, best_rules.name,
               f"payauth decision {decision_ns:.0f} ns vs {best_rules.name} (rules alone, "
               f"input prepared) {rules_ns:.0f} ns ({by_min(best_rules.name)}); with the "
               f"context already filled {filled_ns:.0f} ns = {rules_ns / filled_ns:.1f}x; "
               f"both from the record (its input built: {prep_ns:.0f} ns more) "
               f"{(rules_ns + prep_ns) / decision_ns:.1f}x")
        ratios["payauth_decision_vs_fastest_rules_runtime"] = rules_ns / decision_ns
        ratios["payauth_decision_filled_vs_fastest_rules_runtime"] = rules_ns / filled_ns
    compiled = [p for p in bench.model_peers
                if p.model == "lightgbm" and p.library in ("lleaves", "tl2cgen")]
    if compiled:
        best_compiled = min(compiled, key=lambda p: timings[p.name]["median_ns"])
        ours = timings[PAYAUTH_MODEL.format("lightgbm")]["median_ns"]
        theirs = timings[best_compiled.name]["median_ns"]
        mins = (timings[best_compiled.name]["min_ns"]
                / timings[PAYAUTH_MODEL.format("lightgbm")]["min_ns"])
        target("model alone vs the best compiled-model runtime", ">= 1x (no slower)",
               theirs / ours, 1, True, best_compiled.name,
               f"payauth model {ours:.0f} ns vs {best_compiled.name} {theirs:.0f} ns, one row "
               f"(by the minima {mins:.1f}x)")
        ratios["payauth_model_vs_best_compiled_runtime"] = theirs / ours
    target("C loop per tree node visited", "<= 5 ns", ns_node, 5, False,
           "payauth C loop (margins, lightgbm)",
           f"{timings['payauth C loop (margins, lightgbm)']['median_ns']:.0f} ns per row / "
           f"{nodes:.0f} nodes visited (XGBoost model: {ns_node_x:.2f} ns)")

    ns_per_decision = {name: t["median_ns"] for name, t in timings.items()
                       if t["group"] == "single" and "C loop" not in name}
    ns_per_decision_batch = {name: t["median_ns"] for name, t in timings.items()
                             if t["group"] == "batch"}
    ns_input = {name: t["median_ns"] for name, t in timings.items() if t["group"] == "prep"}
    return {
        "benchmark": "core",
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": "make bench-core",
        "argv": sys.argv[1:],
        "machine": dict(info, load_average_at_end=os.getloadavg()),
        "config": {"repeats": args.repeats, "repeat_seconds": args.repeat_seconds,
                   "records": args.records, "batch_rows": args.batch_rows,
                   "train_rows": args.train_rows, "check_rows": args.check_rows,
                   "statistic": "median over interleaved repeats; min, max, IQR in timings"},
        "workload": stats,
        "versions": bench.versions,
        "ns_per_decision": ns_per_decision,
        "ns_per_decision_batch": ns_per_decision_batch,
        "ns_per_decision_combined": {n: t["median_ns"] for n, t in combined.items()},
        "ns_input_from_record": ns_input,
        "ns_per_node": ns_node,
        "ns_per_node_xgboost": ns_node_x,
        "ns_per_rule": ns_rule,
        "ratios": ratios,
        "targets": targets,
        "best_peers": {"model": best_model.name if best_model else None,
                       "rules": fastest_rules.name if fastest_rules else None,
                       "rules_with_input": combo_rules.name if combo_rules else None},
        "timings": timings,
        "timings_combined": combined,
        "cross_check": bench.checks,
        "wrong_answers": bench.wrong,
        "unavailable": bench.unavailable,
        "contenders": bench.meta,
        "setup_seconds": bench.setup_s,
        "elapsed_seconds": time.perf_counter() - started,
    }


if __name__ == "__main__":
    raise SystemExit(main())
