"""Scoring models in the core against the libraries' own predict.

LightGBM and XGBoost binary classifiers are trained here on generated data (numeric,
with NaNs, LightGBM categoricals with unseen and negative categories, XGBoost with and
without base_score, up to 200 trees of depth 6 on 30 features); the core must give the
library's raw margin and probability within 1e-6 on thousands of rows, through each
accepted dump (LightGBM text and JSON, XGBoost JSON). Hand-made single-split models,
drawn by hypothesis and loaded into the libraries too, pin down the corners: split
boundaries, float32 rounding, the zero band, NaN and strange categories. Malformed
dumps must raise ValueError, never crash.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from payauth.core.models import (
    TreeModel,
    load_lightgbm_json,
    load_lightgbm_text,
    load_model,
    load_xgboost_json,
)
from payauth.core.trees import TreeEnsemble

lgb = pytest.importorskip("lightgbm")
xgb = pytest.importorskip("xgboost")

TOLERANCE = 1e-6  # the contract: the library's margin and probability within 1e-6
ROWS = 3000
LIGHTGBM_ZERO = float(np.float32(1e-35))  # LightGBM's kZeroThreshold

# -- references: a trained model, its dumps and the library's own predict ----------------


@dataclass
class Reference:
    """A trained model: its dumps by format, the library's predict, rows to score."""

    name: str
    dumps: dict[str, Callable[[], object]]
    raw: Callable[[np.ndarray], np.ndarray]
    proba: Callable[[np.ndarray], np.ndarray]
    rows: np.ndarray


def _names(p: int) -> list[str]:
    return [f"f{i}" for i in range(p)]


def _training_data(rng: np.random.Generator, n: int, p: int, nan_rate: float = 0.1,
                   categorical: tuple[int, ...] = (), zeros: float = 0.0
                   ) -> tuple[np.ndarray, np.ndarray]:
    x = rng.normal(size=(n, p))
    for c in categorical:
        x[:, c] = rng.integers(-2, 25, n)  # negatives become missing in LightGBM training
    if zeros:
        x[rng.random((n, p)) < zeros] = 0.0
    x[rng.random((n, p)) < nan_rate] = np.nan
    signal = np.nan_to_num(x[:, 0]) - 0.7 * np.nan_to_num(x[:, 1]) * np.nan_to_num(x[:, 2] > 0)
    for c in categorical:
        signal += 1.5 * np.isin(x[:, c], [1, 3, 4, 9, 16, 21])
    signal += np.isnan(x[:, 1]) * 0.8 + rng.normal(size=n) * 0.6
    return x, (signal > 0.3).astype(np.int32)


def _thresholds(model: TreeModel) -> dict[int, np.ndarray]:
    numeric = (model.split_feature >= 0) & ~model.categorical
    return {f: np.unique(model.threshold[numeric & (model.split_feature == f)])
            for f in range(len(model.feature_names))}


def _scoring_rows(rng: np.random.Generator, model: TreeModel, n: int,
                  categorical: tuple[int, ...] = (), float32: bool = False) -> np.ndarray:
    """Rows that reach every corner: the training range, split thresholds exactly and one
    ulp (double and float32) either side, NaN, zeros, tiny and far values, and for
    categorical columns unseen, negative, fractional and huge categories."""
    p = len(model.feature_names)
    rows = rng.normal(scale=rng.choice([0.5, 1.0, 3.0], size=(n, 1)), size=(n, p))
    pick = rng.random((n, p))
    for f, ts in _thresholds(model).items():
        if not len(ts):
            continue
        t = rng.choice(ts, size=n)
        t32 = t.astype(np.float32)
        near = np.stack([
            t, np.nextafter(t, np.inf), np.nextafter(t, -np.inf),
            np.nextafter(t32, np.float32(np.inf)).astype(np.float64),
            np.nextafter(t32, np.float32(-np.inf)).astype(np.float64),
            # the float32 rounding boundary below t: exactly, and a double ulp either side
            (t32.astype(np.float64) + np.nextafter(t32, np.float32(-np.inf))) / 2,
            np.nextafter((t32.astype(np.float64) + np.nextafter(t32, np.float32(-np.inf)))
                         / 2, np.inf),
        ])[rng.integers(0, 7, n), np.arange(n)]
        rows[:, f] = np.where(pick[:, f] < 0.4, near, rows[:, f])
    special = [np.nan, 0.0, -0.0, 1e-36, -1e-36, LIGHTGBM_ZERO, -LIGHTGBM_ZERO, 2e-35, 1e6]
    if not float32:  # XGBoost's DMatrix refuses infinities
        special += [np.inf, -np.inf]
    mask = pick > 0.85
    rows[mask] = rng.choice(special, size=int(mask.sum()))
    for c in categorical:
        cats = np.concatenate([rng.integers(-3, 40, n).astype(np.float64),
                               [np.nan, -0.5, -1.0, 2.0**31, 2.0**31 - 1, 1e10, 63.0, 64.0,
                                3.5, -2147483649.0]])
        rows[:, c] = rng.choice(cats, size=n)
    return np.ascontiguousarray(rows)


def _lightgbm(name: str, params: dict, rounds: int, *, n: int = 1500, p: int = 6,
              seed: int = 0, categorical: tuple[int, ...] = (), **data: float) -> Reference:
    rng = np.random.default_rng(seed)
    x, y = _training_data(rng, n, p, categorical=categorical, **data)
    if params.get("objective") == "regression":
        y = y + rng.normal(size=n)
    booster = lgb.train({"verbose": -1, "num_threads": 1, "min_data_in_leaf": 5,
                         "max_cat_to_onehot": 2, "min_data_per_group": 5, "cat_smooth": 1,
                         **params},
                        lgb.Dataset(x, y, feature_name=_names(p),
                                    categorical_feature=list(categorical) or "auto"),
                        num_boost_round=rounds)
    model = load_lightgbm_text(booster.model_to_string())
    return Reference(
        name=name,
        dumps={"lightgbm-text": booster.model_to_string,
               "lightgbm-json": lambda: json.dumps(booster.dump_model()),
               "lightgbm-dict": booster.dump_model},
        raw=lambda rows: booster.predict(rows, raw_score=True, num_threads=1),
        proba=lambda rows: booster.predict(rows, num_threads=1),
        rows=_scoring_rows(rng, model, ROWS, categorical))


def _xgboost(name: str, params: dict, rounds: int, *, n: int = 1500, p: int = 6,
             seed: int = 0) -> Reference:
    rng = np.random.default_rng(seed)
    x, y = _training_data(rng, n, p)
    if params.get("objective", "").startswith("reg:squared"):
        y = y + rng.normal(size=n)
    booster = xgb.train({"nthread": 1, **params},
                        xgb.DMatrix(x, y, feature_names=_names(p), missing=np.nan),
                        num_boost_round=rounds)
    model = load_xgboost_json(booster.save_raw("json"))

    def predict(rows: np.ndarray, margin: bool) -> np.ndarray:
        data = xgb.DMatrix(rows, feature_names=_names(p), missing=np.nan)
        return booster.predict(data, output_margin=margin).astype(np.float64)

    return Reference(
        name=name,
        dumps={"xgboost-json": lambda: bytes(booster.save_raw("json")),
               "xgboost-dict": lambda: json.loads(booster.save_raw("json"))},
        raw=lambda rows: predict(rows, True),
        proba=lambda rows: predict(rows, False),
        rows=_scoring_rows(rng, model, ROWS, float32=True))


REFERENCES: dict[str, Callable[[], Reference]] = {
    "lgb-numeric-nan": lambda: _lightgbm(
        "lgb-numeric-nan", {"objective": "binary", "num_leaves": 15}, 40),
    "lgb-sigmoid-0.7-depth3": lambda: _lightgbm(
        "lgb-sigmoid-0.7-depth3", {"objective": "binary", "sigmoid": 0.7, "max_depth": 3,
                                   "num_leaves": 8}, 25, seed=1),
    "lgb-categorical": lambda: _lightgbm(
        "lgb-categorical", {"objective": "binary", "num_leaves": 12}, 30, seed=2,
        categorical=(3, 4)),
    "lgb-zero-as-missing": lambda: _lightgbm(
        "lgb-zero-as-missing", {"objective": "binary", "zero_as_missing": True,
                                "num_leaves": 10}, 20, seed=3, zeros=0.2, nan_rate=0.05),
    "lgb-no-missing": lambda: _lightgbm(
        "lgb-no-missing", {"objective": "binary", "use_missing": False, "num_leaves": 10},
        20, seed=4),
    "lgb-random-forest": lambda: _lightgbm(
        "lgb-random-forest", {"objective": "binary", "boosting": "rf", "bagging_freq": 1,
                              "bagging_fraction": 0.6, "num_leaves": 10}, 15, seed=5),
    "lgb-regression": lambda: _lightgbm(
        "lgb-regression", {"objective": "regression", "num_leaves": 10}, 15, seed=6),
    "lgb-200-trees-depth-6": lambda: _lightgbm(
        "lgb-200-trees-depth-6", {"objective": "binary", "num_leaves": 63, "max_depth": 6,
                                  "num_threads": 2, "min_data_in_leaf": 10}, 200,
        n=4000, p=30, seed=7),
    "lgb-deep-trees": lambda: _lightgbm(
        "lgb-deep-trees", {"objective": "binary", "num_leaves": 48, "min_data_in_leaf": 2}, 10,
        seed=8),
    "xgb-default-base-score": lambda: _xgboost(
        "xgb-default-base-score", {"objective": "binary:logistic", "max_depth": 3}, 30),
    "xgb-base-score-0.3-depth1": lambda: _xgboost(
        "xgb-base-score-0.3-depth1", {"objective": "binary:logistic", "base_score": 0.3,
                                      "max_depth": 1}, 20, seed=1),
    "xgb-base-score-0.8-depth5": lambda: _xgboost(
        "xgb-base-score-0.8-depth5", {"objective": "binary:logistic", "base_score": 0.8,
                                      "max_depth": 5, "eta": 0.5}, 25, seed=2),
    "xgb-logitraw": lambda: _xgboost(
        "xgb-logitraw", {"objective": "binary:logitraw", "max_depth": 3}, 15, seed=3),
    "xgb-squarederror": lambda: _xgboost(
        "xgb-squarederror", {"objective": "reg:squarederror", "max_depth": 3}, 15, seed=4),
    "xgb-200-trees-depth-6": lambda: _xgboost(
        "xgb-200-trees-depth-6", {"objective": "binary:logistic", "max_depth": 6,
                                  "nthread": 2}, 200, n=2500, p=30, seed=5),
}

_trained: dict[str, Reference] = {}


def reference(name: str) -> Reference:
    if name not in _trained:
        _trained[name] = REFERENCES[name]()
    return _trained[name]


CASES = [(name, fmt) for name in REFERENCES
         for fmt in (("xgboost-json", "xgboost-dict") if name.startswith("xgb")
                     else ("lightgbm-text", "lightgbm-json", "lightgbm-dict"))]
LOADERS = {"lightgbm-text": load_lightgbm_text, "lightgbm-json": load_lightgbm_json,
           "lightgbm-dict": load_lightgbm_json, "xgboost-json": load_xgboost_json,
           "xgboost-dict": load_xgboost_json}


def _assert_close(what: str, got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    worst = int(np.argmax(np.abs(got - want)))
    assert np.allclose(got, want, rtol=0, atol=TOLERANCE), (
        f"{what}: max |core - library| = {abs(got[worst] - want[worst]):.3g} at row {worst}")


# The three walks a model may take (TreeEnsemble's options): the ranked walk where the model
# allows it (the default), the node walk through the row buffer, the node walk reading the
# decision vector directly. Every parity test runs each.
WALKS = {"ranked": {}, "nodes": {"ranked": False}, "direct": {"direct": True}}


def _ensembles(model: TreeModel, index: list[int], width: int) -> list[TreeEnsemble]:
    return [TreeEnsemble(model, index, width, **options) for options in WALKS.values()]


# -- parity with the libraries -------------------------------------------------------------


@pytest.mark.parametrize("walk", list(WALKS))
@pytest.mark.parametrize(("name", "fmt"), CASES, ids=[f"{n}-{f}" for n, f in CASES])
def test_margin_and_probability_match_the_library(name: str, fmt: str, walk: str) -> None:
    ref = reference(name)
    model = LOADERS[fmt](ref.dumps[fmt]())
    assert load_model(ref.dumps[fmt]()).n_trees == model.n_trees
    ensemble = TreeEnsemble(model, list(range(len(model.feature_names))),
                            len(model.feature_names), **WALKS[walk])
    assert ensemble.reads_directly == (walk == "direct")
    if walk != "ranked":
        assert not ensemble.walks_ranked
    rows = ref.rows
    _assert_close(f"{name} {fmt} margin", ensemble.margins(rows), ref.raw(rows))
    _assert_close(f"{name} {fmt} probability", ensemble.probabilities(rows), ref.proba(rows))
    # The single-row entry, as the server calls it.
    for i in range(0, len(rows), 97):
        margin, probability = ensemble.score(rows[i])
        assert margin == ensemble.margin_of(rows[i]) == ensemble.margins(rows[i:i + 1])[0]
        assert probability == ensemble.probability_of(rows[i])


def test_the_big_models_have_the_shape_asked_for() -> None:
    for name in ("lgb-200-trees-depth-6", "xgb-200-trees-depth-6"):
        ref = reference(name)
        fmt = "xgboost-json" if name.startswith("xgb") else "lightgbm-text"
        model = LOADERS[fmt](ref.dumps[fmt]())
        ensemble = model.bind()
        assert model.n_trees == 200 and len(model.feature_names) == 30
        visited = ensemble.nodes_visited(ref.rows[:200])
        assert visited.max() <= 200 * 6 and visited.mean() > 200 * 4


def test_a_tree_that_is_one_leaf() -> None:
    # LightGBM stops with one single-leaf tree when nothing can be split.
    rng = np.random.default_rng(3)
    x, y = _training_data(rng, 200, 3)
    booster = lgb.train({"objective": "binary", "verbose": -1, "min_data_in_leaf": 1000,
                         "num_threads": 1}, lgb.Dataset(x, y, feature_name=_names(3)), 5)
    rows = _scoring_rows(rng, load_lightgbm_text(booster.model_to_string()), 100)
    for model in (load_lightgbm_text(booster.model_to_string()),
                  load_lightgbm_json(booster.dump_model())):
        assert model.n_trees == 1 and model.n_nodes == 1
        np.testing.assert_array_equal(model.bind().margins(rows),
                                      booster.predict(rows, raw_score=True))


def test_probability_is_the_link_of_the_margin() -> None:
    lgb_model = load_lightgbm_text(reference("lgb-sigmoid-0.7-depth3").dumps["lightgbm-text"]())
    assert lgb_model.link == "sigmoid" and lgb_model.sigmoid_scale == 0.7
    regression = load_lightgbm_text(reference("lgb-regression").dumps["lightgbm-text"]())
    rows = reference("lgb-regression").rows
    ensemble = regression.bind()
    assert regression.link == "identity"
    np.testing.assert_array_equal(ensemble.probabilities(rows), ensemble.margins(rows))
    raw = load_xgboost_json(reference("xgb-logitraw").dumps["xgboost-json"]())
    assert raw.link == "identity" and raw.float32


# -- hand-made models: the corners, against the libraries ---------------------------------

_LGB_TREE = """Tree={index}
num_leaves=2
num_cat={num_cat}
split_feature={feature}
split_gain=1
threshold={threshold}
decision_type={decision}
left_child=-1
right_child=-2
leaf_value={left} {right}
leaf_weight=1 1
leaf_count=1 1
internal_value=0
internal_weight=1
internal_count=2
{cats}is_linear=0
shrinkage=1

"""

def _lightgbm_text(trees: list[str]) -> str:
    # LightGBM finds each tree by tree_sizes (bytes), so they must be right.
    return ("tree\nversion=v4\nnum_class=1\nnum_tree_per_iteration=1\nlabel_index=0\n"
            "max_feature_idx=3\nobjective=binary sigmoid:1\nfeature_names=a b c d\n"
            "feature_infos=none none none none\ntree_sizes="
            + " ".join(str(len(t.encode())) for t in trees)
            + "\n\n" + "".join(trees) + "end of trees\n\npandas_categorical:null\n")


INTERESTING = [0.0, -0.0, 1e-36, -1e-36, 5e-36, -5e-36, LIGHTGBM_ZERO, -LIGHTGBM_ZERO,
               float(np.nextafter(LIGHTGBM_ZERO, 1)), float(np.nextafter(-LIGHTGBM_ZERO, -1)),
               2e-35, -2e-35, 0.5, -0.5, 1.0, -1.0, 3.0, 2.0**31, 1e300, -1e300]
# dump_model writes an infinite threshold as +-1e300, so the JSON cannot tell a real
# 1e300 from inf; trained models have inf (a NaN-only split), never 1e300.
THRESHOLDS = [t for t in INTERESTING if abs(t) != 1e300] + [math.inf, -math.inf]


@st.composite
def lightgbm_corner_models(draw: st.DrawFn) -> tuple[str, np.ndarray]:
    """A LightGBM text model of single-split trees (leaf values 0 and 2**-t, so the sum
    tells every tree's direction apart) and rows aimed at its thresholds."""
    n_trees = draw(st.integers(1, 24))
    trees = []
    values: list[float] = list(INTERESTING)
    for t in range(n_trees):
        feature = draw(st.integers(0, 3))
        missing = draw(st.sampled_from([0, 1, 2]))
        default_left = draw(st.booleans())
        if draw(st.integers(0, 3)) == 0:  # categorical
            cats = draw(st.sets(st.integers(0, 70), min_size=1, max_size=6))
            words = [0] * (max(cats) // 32 + 1)
            for c in cats:
                words[c // 32] |= 1 << (c % 32)
            trees.append(_LGB_TREE.format(
                index=t, num_cat=1, feature=feature, threshold=0,
                decision=1 | default_left << 1 | missing << 2, left=0.0, right=2.0**-t,
                cats=f"cat_boundaries=0 {len(words)}\ncat_threshold="
                     f"{' '.join(map(str, words))}\n"))
            values += [float(c) for c in cats] + [c + 0.5 for c in cats]
            continue
        threshold = draw(st.one_of(st.sampled_from(THRESHOLDS),
                                   st.floats(-5, 5, allow_nan=False)))
        trees.append(_LGB_TREE.format(
            index=t, num_cat=0, feature=feature, threshold=repr(threshold),
            decision=default_left << 1 | missing << 2, left=0.0, right=2.0**-t, cats=""))
        values += [threshold, float(np.nextafter(threshold, np.inf)),
                   float(np.nextafter(threshold, -np.inf))]
    text = _lightgbm_text(trees)
    pool = np.array(values + [np.nan, np.inf, -np.inf, -2147483649.0, 1e10])
    seed = draw(st.integers(0, 2**32 - 1))
    rows = np.random.default_rng(seed).choice(pool, size=(300, 4))
    return text, rows


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lightgbm_corner_models())
def test_lightgbm_corners_match_lightgbm(case: tuple[str, np.ndarray]) -> None:
    text, rows = case
    booster = lgb.Booster(model_str=text)
    want = booster.predict(rows, raw_score=True, num_threads=1)
    for model in (load_lightgbm_text(text), load_lightgbm_json(booster.dump_model())):
        for ensemble in _ensembles(model, [0, 1, 2, 3], 4):
            np.testing.assert_array_equal(ensemble.margins(rows), want)


def test_the_ranked_walk_with_a_thousand_thresholds_on_one_feature() -> None:
    # 1,000 stumps on feature 0 (NaN sent left and right in turn) and 40 on the others:
    # feature 0's cuts fill a table of 1,024, the others pad to it. Rows sit on every
    # threshold and one ulp either side, or are NaN, infinite or zero.
    rng = np.random.default_rng(11)
    cuts = np.unique(rng.normal(scale=100, size=1000))
    trees = []
    for t in range(len(cuts) + 40):
        feature, threshold = (0, cuts[t]) if t < len(cuts) else (1 + t % 3, rng.normal())
        trees.append(_LGB_TREE.format(
            index=t, num_cat=0, feature=feature, threshold=repr(float(threshold)),
            decision=(t % 2) << 1 | 2 << 2, left=repr(float(rng.normal())),
            right=repr(float(rng.normal())), cats=""))
    text = _lightgbm_text(trees)
    pool = np.concatenate([cuts, np.nextafter(cuts, np.inf), np.nextafter(cuts, -np.inf),
                           [np.nan, np.inf, -np.inf, 0.0, -0.0]])
    rows = rng.choice(pool, size=(3000, 4))
    want = lgb.Booster(model_str=text).predict(rows, raw_score=True, num_threads=1)
    ranked, nodes, direct = _ensembles(load_lightgbm_text(text), [0, 1, 2, 3], 4)
    assert ranked.walks_ranked
    for ensemble in (ranked, nodes, direct):
        np.testing.assert_array_equal(ensemble.margins(rows), want)


def _stumps(feature: np.ndarray, threshold: np.ndarray, p: int) -> TreeModel:
    """A LightGBM-like model of one stump per threshold (leaves -1 and 1, NaN left)."""
    n = len(feature)
    split = np.full(3 * n, -1, np.int32)
    split[0::3] = feature
    cuts = np.zeros(3 * n)
    cuts[0::3] = threshold
    left = np.full(3 * n, -1, np.int32)
    left[0::3] = 1
    right = np.full(3 * n, -1, np.int32)
    right[0::3] = 2
    leaves = np.zeros(3 * n)
    leaves[1::3], leaves[2::3] = -1.0, 1.0
    return TreeModel(
        source="lightgbm", objective="binary", feature_names=tuple(_names(p)),
        tree_offsets=np.arange(0, 3 * n + 1, 3, dtype=np.int64), split_feature=split,
        threshold=cuts, left_child=left, right_child=right,
        default_left=np.ones(3 * n, bool), missing_type=np.full(3 * n, 2, np.uint8),
        categorical=np.zeros(3 * n, bool), leaf_value=leaves,
        cat_offsets=np.zeros(1, np.int64), cat_bits=np.zeros(0, np.uint32), float32=False,
        base_margin=0.0, divisor=1.0, link="sigmoid", sigmoid_scale=1.0)


def test_rank_tables_past_the_budget_keep_the_node_walk() -> None:
    # 30 features read: tables of 4,096 fit (32 x 4,096 = 131,072 entries), 4,096 cuts on
    # one feature need 8,192 and do not.
    rng = np.random.default_rng(5)
    for n_cuts, ranked in ((4095, True), (4096, False)):
        feature = np.concatenate([np.zeros(n_cuts, np.int32), np.arange(1, 30, dtype=np.int32)])
        threshold = np.concatenate([np.arange(n_cuts) * 0.5, rng.normal(size=29)])
        model = _stumps(feature, threshold, 30)
        ensemble = model.bind()
        assert ensemble.walks_ranked is ranked
        rows = rng.choice(np.concatenate([threshold, threshold + 0.25, [np.nan, -1.0]]),
                          size=(500, 30))
        want = sum(np.where(np.isnan(rows[:, f]) | (rows[:, f] <= t), -1.0, 1.0)
                   for f, t in zip(feature, threshold, strict=True))
        np.testing.assert_array_equal(ensemble.margins(rows), want)


def _max_depth(model: TreeModel) -> int:
    deepest = 0
    for t in range(model.n_trees):
        base = model.tree_offsets[t]
        stack = [(0, 0)]
        while stack:
            node, depth = stack.pop()
            if model.split_feature[base + node] < 0:
                deepest = max(deepest, depth)
            else:
                stack += [(model.left_child[base + node], depth + 1),
                          (model.right_child[base + node], depth + 1)]
    return deepest


def test_which_models_walk_ranked() -> None:
    # Every model read through the row buffer walks ranked unless it has a categorical or
    # zero-as-missing split (LightGBM) or a tree deeper than 6.
    taken = {}
    for name in REFERENCES:
        fmt = "xgboost-json" if name.startswith("xgb") else "lightgbm-text"
        model = LOADERS[fmt](reference(name).dumps[fmt]())
        special = not model.float32 and bool(np.any(model.categorical)
                                              | np.any(model.missing_type == 1))
        deep = _max_depth(model) > 6
        taken[name] = model.bind().walks_ranked
        assert taken[name] == (not special and not deep), name
    assert taken["lgb-200-trees-depth-6"] and taken["xgb-200-trees-depth-6"]
    assert not taken["lgb-categorical"] and not taken["lgb-zero-as-missing"]
    assert not taken["lgb-deep-trees"]


_xgb_template: dict = {}


def _xgboost_document(trees: list[dict], base_score: float, objective: str) -> dict:
    if not _xgb_template:
        rng = np.random.default_rng(0)
        booster = xgb.train({"objective": "binary:logistic", "max_depth": 1, "nthread": 1},
                            xgb.DMatrix(rng.normal(size=(40, 4)), rng.random(40) > 0.5,
                                        feature_names=list("abcd")), num_boost_round=1)
        _xgb_template.update(json.loads(booster.save_raw("json")))
    doc = json.loads(json.dumps(_xgb_template))
    learner = doc["learner"]
    learner["learner_model_param"]["base_score"] = f"[{float(np.float32(base_score)):.9E}]"
    learner["objective"]["name"] = objective
    model = learner["gradient_booster"]["model"]
    model["trees"] = trees
    model["tree_info"] = [0] * len(trees)
    model["iteration_indptr"] = list(range(len(trees) + 1))
    model["gbtree_model_param"]["num_trees"] = str(len(trees))
    return doc


def _xgboost_stump(t: int, feature: int, threshold: float, default_left: bool,
                   left: float, right: float) -> dict:
    return {"base_weights": [0.0, left, right], "categories": [], "categories_nodes": [],
            "categories_segments": [], "categories_sizes": [],
            "default_left": [int(default_left), 0, 0], "id": t,
            "left_children": [1, -1, -1], "loss_changes": [1.0, 0.0, 0.0],
            "parents": [2147483647, 0, 0], "right_children": [2, -1, -1],
            "split_conditions": [threshold, left, right], "split_indices": [feature, 0, 0],
            "split_type": [0, 0, 0], "sum_hessian": [2.0, 1.0, 1.0],
            "tree_param": {"num_deleted": "0", "num_feature": "4", "num_nodes": "3",
                           "size_leaf_vector": "1"}}


@st.composite
def xgboost_corner_models(draw: st.DrawFn) -> tuple[dict, np.ndarray]:
    """An XGBoost model of stumps at float32 thresholds (leaves 0 and 2**-t), with rows
    at the thresholds, their float32 and double neighbours and the rounding midpoints."""
    n_trees = draw(st.integers(1, 20))
    trees = []
    values: list[float] = [0.0, -0.0, 1e-40, -1e-40]
    for t in range(n_trees):
        threshold = float(draw(st.one_of(
            st.floats(-1e6, 1e6, width=32, allow_nan=False),
            st.sampled_from([0.0, -0.0, 1e-45, -1e-45, 3.4028234663852886e38,
                             -3.4028234663852886e38, 1.0, 0.1]))))
        trees.append(_xgboost_stump(t, draw(st.integers(0, 3)), threshold, draw(st.booleans()),
                                    0.0, 2.0**-t))
        t32 = np.float32(threshold)
        with np.errstate(over="ignore"):
            below = float(np.nextafter(t32, np.float32(-np.inf)))
            above = float(np.nextafter(t32, np.float32(np.inf)))
        mid = (below + threshold) / 2
        values += [threshold, below, above, mid,
                   float(np.nextafter(mid, np.inf)), float(np.nextafter(mid, -np.inf)),
                   float(np.nextafter(threshold, np.inf)), float(np.nextafter(threshold, -1e39))]
    values = [v for v in values if abs(v) < 3.4e38]  # XGBoost refuses what overflows float32
    objective = draw(st.sampled_from(["binary:logistic", "binary:logitraw", "reg:squarederror"]))
    base = draw(st.floats(0.0009765625, 0.9990234375, width=32)) \
        if objective == "binary:logistic" else draw(st.floats(-10, 10, width=32))
    seed = draw(st.integers(0, 2**32 - 1))
    rows = np.random.default_rng(seed).choice(np.array(values + [np.nan]), size=(300, 4))
    return _xgboost_document(trees, base, objective), rows


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(xgboost_corner_models())
def test_xgboost_corners_match_xgboost(case: tuple[dict, np.ndarray]) -> None:
    document, rows = case
    text = json.dumps(document)
    booster = xgb.Booster(model_file=bytearray(text.encode()))
    data = xgb.DMatrix(rows, feature_names=list("abcd"), missing=np.nan)
    margin = booster.predict(data, output_margin=True).astype(np.float64)
    inplace = booster.inplace_predict(rows, predict_type="margin", missing=np.nan)
    np.testing.assert_array_equal(inplace, margin)
    probability = booster.predict(data).astype(np.float64)
    for model in (load_xgboost_json(text), load_xgboost_json(document)):
        for ensemble in _ensembles(model, [0, 1, 2, 3], 4):
            np.testing.assert_array_equal(ensemble.margins(rows), margin)
            _assert_close("probability", ensemble.probabilities(rows), probability)


# -- named features, bound to the shared decision vector ----------------------------------


def test_binding_places_named_features_in_the_decision_vector() -> None:
    ref = reference("lgb-categorical")
    model = load_lightgbm_text(ref.dumps["lightgbm-text"]())
    names = list(model.feature_names)
    # A decision vector shared with policies: other readers' entries around the model's.
    layout = {"txn.amount": 0, "card.velocity_1h": 1}
    order = np.random.default_rng(1).permutation(len(names))
    for slot, i in enumerate(order):
        layout[names[i]] = 3 + 2 * slot
    ensemble = model.bind(layout, width=40)
    assert ensemble.width == 40
    assert ensemble.feature_index == tuple(layout[n] for n in names)
    vectors = np.full((len(ref.rows), 40), 123.0)
    for j, name in enumerate(names):
        vectors[:, layout[name]] = ref.rows[:, j]
    _assert_close("bound margin", ensemble.margins(vectors), ref.raw(ref.rows))
    assert set(model.used_features) <= set(names)


def test_binding_fails_clearly() -> None:
    model = load_lightgbm_text(reference("lgb-numeric-nan").dumps["lightgbm-text"]())
    layout = {name: i for i, name in enumerate(model.feature_names)}
    with pytest.raises(ValueError, match="lacks the model's features 'f2'"):
        model.bind({k: v for k, v in layout.items() if k != "f2"})
    with pytest.raises(ValueError, match="not an integer"):
        model.bind({**layout, "f0": "3"})
    with pytest.raises(ValueError, match="not an integer"):
        model.bind({**layout, "f0": True})
    with pytest.raises(ValueError, match="out of range"):
        model.bind({**layout, "f0": -1})
    with pytest.raises(ValueError, match="several model features one index: 'f0'->1, 'f1'->1"):
        model.bind({**layout, "f0": 1})
    with pytest.raises(ValueError, match="width 3 is less than 6"):
        model.bind(layout, width=3)
    with pytest.raises(TypeError):
        model.bind([0, 1, 2])  # type: ignore[arg-type]
    ensemble = model.bind(layout)
    with pytest.raises(ValueError, match="has 5 values, the model reads 6"):
        ensemble.score(np.zeros(5))
    with pytest.raises(ValueError, match="have 5 values"):
        ensemble.margins(np.zeros((2, 5)))
    with pytest.raises(ValueError):
        ensemble.margins(np.zeros((2, 6), dtype=np.float32))  # a float64 vector only
    with pytest.raises(RuntimeError):
        ensemble.__init__(model, list(range(6)), 6)


def test_threads_share_one_ensemble() -> None:
    # The walk releases the GIL and keeps its state on the C stack: no shared scratch.
    ref = reference("lgb-categorical")
    ensemble = load_lightgbm_text(ref.dumps["lightgbm-text"]()).bind()
    chunks = np.array_split(ref.rows, 8)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(ensemble.margins, chunks * 4))
    serial = [ensemble.margins(c) for c in chunks] * 4
    for got, want in zip(results, serial, strict=True):
        np.testing.assert_array_equal(got, want)


def test_loading_never_imports_the_libraries() -> None:
    dumps = {"lgb": reference("lgb-numeric-nan").dumps["lightgbm-text"](),
             "xgb": reference("xgb-default-base-score").dumps["xgboost-json"]().decode()}
    script = textwrap.dedent("""
        import json, sys
        import numpy as np
        from payauth.core.models import load_model
        dumps = json.load(sys.stdin)
        for text in dumps.values():
            load_model(text).bind().margins(np.zeros((3, 6)))
        assert "lightgbm" not in sys.modules and "xgboost" not in sys.modules
    """)
    result = subprocess.run([sys.executable, "-c", script], input=json.dumps(dumps),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


# -- malformed dumps ----------------------------------------------------------------------


def _lgb_text() -> str:
    return reference("lgb-categorical").dumps["lightgbm-text"]()


def _edit_line(text: str, key: str, value: str) -> str:
    """Set the first `key=` line; `value` with `{n}` in it repeats that token n times,
    n being the line's own count of tokens."""
    lines = text.splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith(key + "="))
    if "{n}" in value:
        count = len(lines[i].partition("=")[2].split(" "))
        value = " ".join([value.replace("{n}", "")] * count)
    lines[i] = f"{key}={value}"
    return "\n".join(lines) + "\n"


LIGHTGBM_TEXT_DEFECTS = [
    (lambda t: t.replace("tree\n", "forest\n", 1), "must start with a 'tree' line"),
    (lambda t: t[:t.index("end of trees")], "no 'end of trees'"),
    (lambda t: _edit_line(t, "num_class", "3"), "3 classes"),
    (lambda t: _edit_line(t, "objective", "multiclass num_class:3"), "'multiclass'"),
    (lambda t: _edit_line(t, "objective", "poisson"), "'poisson' is not supported"),
    (lambda t: _edit_line(t, "feature_names", "a b c"), "3 feature names for 6"),
    (lambda t: _edit_line(t, "feature_names", "a b c d e a"), "repeat: a"),
    (lambda t: _edit_line(t, "version", "v9"), "version 'v9'"),
    (lambda t: _edit_line(t, "num_leaves", "0"), "below 1"),
    (lambda t: _edit_line(t, "leaf_value", "1 2"), "leaf_value has 2 values"),
    (lambda t: _edit_line(t, "threshold", "abc{n}"), "not a number"),
    (lambda t: _edit_line(t, "left_child", "0{n}"), "out of"),
    (lambda t: _edit_line(t, "left_child", "-1{n}"), "two parents"),
    (lambda t: _edit_line(t, "decision_type", "12{n}"), "decision_type 12"),
    (lambda t: _edit_line(t, "split_feature", "6{n}"), "split feature 6"),
    (lambda t: _edit_line(t, "is_linear", "1"), "linear tree"),
    (lambda t: _edit_line(t, "cat_boundaries", "0 99"), "cat_boundaries"),
    (lambda t: _edit_line(t, "cat_threshold", "4294967296{n}"), "outside 32 bits"),
    (lambda t: _edit_line(t, "leaf_value", "nan{n}"), "not finite"),
    (lambda t: t.replace("Tree=1\n", "Tree=7\n"), "expected Tree=1"),
    (lambda t: _edit_line(t, "shrinkage", "0.10"), "tree_sizes disagree"),
    (lambda t: _edit_line(t, "tree_sizes", "1 2 3"), "tree_sizes disagree"),
]


@pytest.mark.parametrize(("defect", "message"), LIGHTGBM_TEXT_DEFECTS,
                         ids=[m for _, m in LIGHTGBM_TEXT_DEFECTS])
def test_malformed_lightgbm_text_is_rejected(defect: Callable[[str], str], message: str) -> None:
    text = _lgb_text()
    assert "cat_boundaries=" in text  # what the edits assume
    with pytest.raises(ValueError, match=message):
        load_lightgbm_text(defect(text))


def _lgb_dump() -> dict:
    return reference("lgb-categorical").dumps["lightgbm-dict"]()


def _first_with(decision: str) -> Callable[[dict], dict]:
    def find(dump: dict) -> dict:
        stack = [t["tree_structure"] for t in dump["tree_info"]]
        while stack:
            node = stack.pop(0)
            if node.get("decision_type") == decision:
                return node
            stack += [node[k] for k in ("left_child", "right_child") if k in node]
        raise AssertionError(f"no {decision} split")
    return find


_first_split = _first_with("<=")
_first_categorical = _first_with("==")


def _set(path: Callable[[dict], dict], key: str, value: object) -> Callable[[dict], dict]:
    def edit(dump: dict) -> dict:
        path(dump)[key] = value
        return dump
    return edit


def _drop(path: Callable[[dict], dict], key: str) -> Callable[[dict], dict]:
    def edit(dump: dict) -> dict:
        del path(dump)[key]
        return dump
    return edit


LIGHTGBM_JSON_DEFECTS = [
    (_drop(lambda d: d, "tree_info"), "no 'tree_info'"),
    (_set(lambda d: d, "tree_info", {}), "not a list"),
    (_set(lambda d: d, "tree_info", []), "has no trees"),
    (_set(lambda d: d, "feature_names", []), "declares no feature names"),
    (_set(lambda d: d, "num_tree_per_iteration", 3), "3 trees per iteration"),
    (_set(_first_split, "decision_type", "<"), "decision_type '<'"),
    (_set(_first_split, "default_left", "yes"), "not a boolean"),
    (_set(_first_split, "missing_type", "Sometimes"), "missing_type 'Sometimes'"),
    (_set(_first_split, "threshold", None), "not a number"),
    (_set(_first_split, "threshold", float("nan")), "threshold is NaN"),
    (_set(_first_split, "split_feature", 17), "split feature 17"),
    (_set(_first_split, "split_feature", True), "not an integer"),
    (_drop(_first_split, "left_child"), "no 'left_child'"),
    (_set(_first_split, "left_child", [1]), "not an object"),
    (_set(_first_split, "left_child", {"leaf_index": 0}), "neither a split nor a leaf"),
    (_set(_first_categorical, "threshold", "1||x"), "not an integer"),
    (_set(_first_categorical, "threshold", "-3||1"), "category outside"),
    (_set(_first_categorical, "threshold", str(2**40)), "category outside"),
    (_set(lambda d: d["tree_info"][0], "tree_structure", {"leaf_value": float("inf")}),
     "not finite"),
    (_set(lambda d: d, "objective", 7), "not a string"),
]


@pytest.mark.parametrize(("defect", "message"), LIGHTGBM_JSON_DEFECTS,
                         ids=[m for _, m in LIGHTGBM_JSON_DEFECTS])
def test_malformed_lightgbm_json_is_rejected(defect: Callable[[dict], dict], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_lightgbm_json(defect(_lgb_dump()))
    with pytest.raises(ValueError, match=message):
        load_lightgbm_json(json.dumps(defect(_lgb_dump())))


def _xgb_doc() -> dict:
    return reference("xgb-base-score-0.8-depth5").dumps["xgboost-dict"]()


def _learner(doc: dict) -> dict:
    return doc["learner"]


def _tree0(doc: dict) -> dict:
    return doc["learner"]["gradient_booster"]["model"]["trees"][0]


def _params(doc: dict) -> dict:
    return doc["learner"]["learner_model_param"]


def _edit_tree0(key: str, index: int, value: object) -> Callable[[dict], dict]:
    def edit(doc: dict) -> dict:
        _tree0(doc)[key][index] = value
        return doc
    return edit


XGBOOST_DEFECTS = [
    (_drop(lambda d: d, "learner"), "no 'learner'"),
    (_set(_learner, "feature_names", []), "declares no feature names"),
    (_set(_learner, "feature_names", ["a"] * 6), "repeat: a"),
    (_set(lambda d: d["learner"]["objective"], "name", "multi:softprob"), "'multi:softprob'"),
    (_set(lambda d: d["learner"]["objective"], "name", "count:poisson"), "'count:poisson'"),
    (_set(_params, "num_class", "3"), "3 classes"),
    (_set(_params, "base_score", "[5E-1,5E-1]"), "not one number"),
    (_set(_params, "base_score", "1.5"), r"must lie in \(0, 1\)"),
    (_set(_params, "base_score", "zero"), "not a number"),
    (_set(lambda d: d["learner"]["gradient_booster"], "name", "dart"), "'dart'"),
    (_set(lambda d: d["learner"]["gradient_booster"]["model"]["gbtree_model_param"],
          "num_trees", "3"), "declares 3 trees"),
    (_set(lambda d: d["learner"]["gradient_booster"]["model"], "tree_info", [1] * 25),
     "several outputs"),
    (_set(lambda d: d["learner"]["gradient_booster"]["model"], "trees", [[]] * 25),
     "is not an object"),
    (_edit_tree0("left_children", 0, 999), "out of"),
    (_edit_tree0("left_children", 0, 0), "out of"),
    (_edit_tree0("split_type", 0, 1), "categorical split"),
    (_edit_tree0("split_indices", 0, 99), "split feature 99"),
    (_edit_tree0("split_conditions", 0, "NaN"), "not a usable threshold"),
    (_edit_tree0("default_left", 0, 7), "not 0/1"),
    (_set(_tree0, "split_conditions", [0.5]), "has 1 entries"),
    (_set(lambda d: _tree0(d)["tree_param"], "size_leaf_vector", "3"), "vector leaves"),
]


@pytest.mark.parametrize(("defect", "message"), XGBOOST_DEFECTS,
                         ids=[m for _, m in XGBOOST_DEFECTS])
def test_malformed_xgboost_json_is_rejected(defect: Callable[[dict], dict], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_xgboost_json(defect(_xgb_doc()))
    with pytest.raises(ValueError, match=message):
        load_xgboost_json(json.dumps(defect(_xgb_doc())))


def test_xgboost_tree_with_two_parents_is_rejected() -> None:
    doc = _xgb_doc()
    tree = _tree0(doc)
    right = tree["right_children"][0]
    tree["right_children"][0] = tree["left_children"][0]
    assert right != tree["left_children"][0]
    with pytest.raises(ValueError, match="two parents"):
        load_xgboost_json(doc)


def test_ubjson_gets_a_hint() -> None:
    ref = reference("xgb-default-base-score")
    booster = xgb.Booster(model_file=bytearray(ref.dumps["xgboost-json"]()))
    with pytest.raises(ValueError, match="UBJSON is not accepted"):
        load_xgboost_json(bytes(booster.save_raw("ubj")))


@pytest.mark.parametrize("data", [b"", b"\xff\xfe", "{", "[]", "hello", b"tree\n",
                                  '{"learner": 1}', '{"tree_info": []}', "{" * 100000])
def test_garbage_is_rejected(data: str | bytes) -> None:
    with pytest.raises(ValueError):
        load_model(data)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_lightgbm_text_loads_or_raises_value_error(data: st.DataObject) -> None:
    lines = _lgb_text().splitlines()
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(lines) - 1))
        action = data.draw(st.sampled_from(["drop", "repeat", "token", "truncate"]))
        if action == "drop":
            del lines[i]
        elif action == "repeat":
            lines.insert(i, lines[i])
        elif action == "truncate":
            lines[i] = lines[i][:data.draw(st.integers(0, len(lines[i])))]
        else:
            key, _, value = lines[i].partition("=")
            tokens = value.split(" ")
            j = data.draw(st.integers(0, len(tokens) - 1))
            tokens[j] = data.draw(st.sampled_from(
                ["-1", "0", "1", "-7", "99999999999", "1e309", "nan", "inf", "", "x", "3.5",
                 "-2147483648", "255"]))
            lines[i] = key + "=" + " ".join(tokens)
    _loads_or_value_error(lambda: load_lightgbm_text("\n".join(lines) + "\n"), 6)


JSON_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-3, 40),
                        st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=5),
                        st.lists(st.integers(-2, 5), max_size=3), st.just({}))


def _mutate_json(data: st.DataObject, doc: object) -> None:
    """Replace or drop one value somewhere in a parsed JSON document."""
    node = doc
    while True:
        if isinstance(node, dict) and node:
            key = data.draw(st.sampled_from(sorted(node)))
        elif isinstance(node, list) and node:
            key = data.draw(st.integers(0, len(node) - 1))
        else:
            return
        child = node[key]
        if not isinstance(child, dict | list) or not child or data.draw(st.integers(0, 3)) == 0:
            if isinstance(node, dict) and data.draw(st.booleans()):
                del node[key]
            else:
                node[key] = data.draw(JSON_VALUES)
            return
        node = child


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_json_dumps_load_or_raise_value_error(data: st.DataObject) -> None:
    lgb_dump = _lgb_dump()
    xgb_doc = _xgb_doc()
    for _ in range(data.draw(st.integers(1, 3))):
        _mutate_json(data, lgb_dump)
        _mutate_json(data, xgb_doc)
    _loads_or_value_error(lambda: load_lightgbm_json(lgb_dump), 6)
    _loads_or_value_error(lambda: load_xgboost_json(xgb_doc), 6)
    _loads_or_value_error(lambda: load_xgboost_json(json.dumps(xgb_doc)), 6)


def _loads_or_value_error(load: Callable[[], TreeModel], width: int) -> None:
    try:
        model = load()
    except ValueError:
        return
    # Whatever loads is a model the core walks safely, on any row.
    rows = np.array([[np.nan] * width, [0.0] * width, [1e300] * width, [-3.0] * width])
    ensemble = model.bind(width=max(width, len(model.feature_names)))
    for walker in _ensembles(model, list(ensemble.feature_index), ensemble.width):
        margins = walker.margins(np.ascontiguousarray(np.resize(rows, (4, ensemble.width))))
        assert margins.shape == (4,)


def _parity_table() -> None:
    """Print the measured parity of every reference, as docs/models.md quotes it."""
    print(f"{'model':28} {'format':14} {'rows':>5} {'max|dmargin|':>13} {'max|dprob|':>11} "
          f"{'bit-equal':>9}")
    for name, fmt in CASES:
        ref = reference(name)
        ensemble = LOADERS[fmt](ref.dumps[fmt]()).bind()
        margin = ensemble.margins(ref.rows)
        raw = ref.raw(ref.rows)
        dprob = np.abs(ensemble.probabilities(ref.rows) - ref.proba(ref.rows)).max()
        print(f"{name:28} {fmt:14} {len(raw):5} {np.abs(margin - raw).max():13.3g} "
              f"{dprob:11.3g} {np.mean(margin == raw):9.1%}")


if __name__ == "__main__":  # .venv/bin/python -m tests.test_models
    _parity_table()
