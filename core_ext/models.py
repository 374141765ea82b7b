"""Scoring models in the libraries' own formats, parsed into one flat tree ensemble.

Accepted: LightGBM's text model (`Booster.model_to_string()` / `save_model`), LightGBM's
`dump_model()` JSON, and XGBoost's JSON model (`Booster.save_model("m.json")` /
`save_raw("json")`), for binary classifiers (and plain regression margins). Parsing never
imports lightgbm or xgboost: the server reads the dumps itself, and a dump that is not a
well-formed model raises ValueError saying what is wrong.

A `TreeModel` is the flat, library-neutral form (typed node arrays, tree offsets, base
margin, link); `TreeModel.bind(layout)` places its named features in the decision vector
shared with policies and returns the C evaluator, `payauth.core.trees.TreeEnsemble`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np

from payauth.core.trees import TreeEnsemble, xgboost_logit_base

__all__ = [
    "MISSING_NAN",
    "MISSING_NONE",
    "MISSING_ZERO",
    "TreeModel",
    "load_lightgbm_json",
    "load_lightgbm_text",
    "load_model",
    "load_xgboost_json",
]

# LightGBM's missing_type (decision_type bits 2-3); XGBoost splits are always MISSING_NAN.
MISSING_NONE = 0
MISSING_ZERO = 1
MISSING_NAN = 2

# A decision vector index must fit the core's 30-bit node field.
MAX_WIDTH = 1 << 30
# The largest category a JSON dump may name (its bitset is built here, 4 MiB at most).
MAX_CATEGORY = 1 << 25

# LightGBM objectives whose output is the raw score, and those with a sigmoid link.
_LIGHTGBM_IDENTITY = frozenset({
    "regression", "regression_l2", "l2", "mean_squared_error", "mse", "regression_l1", "l1",
    "mean_absolute_error", "mae", "huber", "fair", "quantile", "mape",
    "mean_absolute_percentage_error", "lambdarank", "rank_xendcg", "custom", "none",
})
_LIGHTGBM_SIGMOID = frozenset({"binary", "cross_entropy", "xentropy"})
# XGBoost objectives: name -> (link, base_score is a probability turned into a logit).
# binary:logitraw keeps its base_score as a margin (XGBoost 3.x, checked by the tests).
_XGBOOST_OBJECTIVES = {
    "binary:logistic": ("sigmoid", True),
    "reg:logistic": ("sigmoid", True),
    "binary:logitraw": ("identity", False),
    "reg:squarederror": ("identity", False),
    "reg:linear": ("identity", False),
    "reg:absoluteerror": ("identity", False),
    "reg:pseudohubererror": ("identity", False),
}


@dataclass(frozen=True, eq=False)
class TreeModel:
    """A tree ensemble in one library-neutral, flat form.

    Tree t owns nodes `tree_offsets[t]:tree_offsets[t + 1]`; its root is the first, and
    `left_child`/`right_child` are indices within the tree (-1 on a leaf, where
    `split_feature` is -1 too). A numeric split sends x left when x <= threshold
    (LightGBM) or float32(x) < threshold (XGBoost, `float32` set); a categorical split
    (LightGBM) stores in `threshold` the index of its bitset, words
    `cat_bits[cat_offsets[i]:cat_offsets[i + 1]]`, whose set bits are the categories
    that go left. The raw margin is `base_margin` plus the sum of one leaf per tree (in
    float32 for XGBoost); the probability is `link(margin / divisor)`, `divisor` being
    LightGBM's number of iterations in random forest mode (`average_output`), else 1.
    """

    source: str  # "lightgbm" or "xgboost"
    objective: str
    feature_names: tuple[str, ...]
    tree_offsets: np.ndarray  # int64, n_trees + 1
    split_feature: np.ndarray  # int32, model feature index; -1 on a leaf
    threshold: np.ndarray  # float64
    left_child: np.ndarray  # int32
    right_child: np.ndarray  # int32
    default_left: np.ndarray  # bool: where a missing value goes
    missing_type: np.ndarray  # uint8: MISSING_NONE, MISSING_ZERO or MISSING_NAN
    categorical: np.ndarray  # bool
    leaf_value: np.ndarray  # float64 (float32 values for XGBoost)
    cat_offsets: np.ndarray  # int64, n_bitsets + 1
    cat_bits: np.ndarray  # uint32
    float32: bool  # XGBoost arithmetic: float32 features, thresholds, leaves and sum
    base_margin: float
    divisor: float  # LightGBM average_output (random forest): iterations; else 1
    link: str  # "sigmoid" or "identity"
    sigmoid_scale: float  # LightGBM's sigmoid parameter

    @property
    def n_trees(self) -> int:
        return len(self.tree_offsets) - 1

    @property
    def n_nodes(self) -> int:
        return len(self.split_feature)

    @property
    def used_features(self) -> tuple[str, ...]:
        """The features some split reads, in the model's order."""
        used = np.unique(self.split_feature[self.split_feature >= 0])
        return tuple(self.feature_names[i] for i in used)

    def bind(self, layout: Mapping[str, int] | None = None, *,
             width: int | None = None) -> TreeEnsemble:
        """Compile the model against a decision vector layout (feature name -> index).

        Every feature the model declares must be in `layout` (extra names are other
        readers' features). Without a layout the model's own order is used, as the
        library's predict reads its columns. `width` is the decision vector's length
        (default: one past the highest index the model reads).
        """
        if layout is None:
            layout = {name: i for i, name in enumerate(self.feature_names)}
        if not isinstance(layout, Mapping):
            raise TypeError("layout must map feature names to decision vector indices")
        missing = [name for name in self.feature_names if name not in layout]
        if missing:
            shown = ", ".join(repr(n) for n in missing[:10])
            more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            raise ValueError(f"the decision vector layout lacks the model's features "
                             f"{shown}{more}")
        index = []
        for name in self.feature_names:
            i = layout[name]
            if isinstance(i, bool) or not isinstance(i, int | np.integer):
                raise ValueError(f"layout index of {name!r} is not an integer: {i!r}")
            if not 0 <= i < MAX_WIDTH:
                raise ValueError(f"layout index of {name!r} is out of range: {i}")
            index.append(int(i))
        if len(set(index)) != len(index):
            shared = [(n, i) for n, i in zip(self.feature_names, index, strict=True)
                      if index.count(i) > 1]
            raise ValueError(f"the layout gives several model features one index: "
                             f"{', '.join(f'{n!r}->{i}' for n, i in shared[:10])}")
        needed = max(index) + 1
        if width is None:
            width = needed
        elif width < needed:
            raise ValueError(f"width {width} is less than {needed}, one past the highest "
                             f"index of the model's features")
        return TreeEnsemble(self, index, width)


# -- shared validation -----------------------------------------------------------------

def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int(v: Any, what: str) -> int:
    if _is_int(v):
        return v
    if isinstance(v, str) and re.fullmatch(r"[+-]?\d{1,19}", v.strip()):
        return int(v)
    raise ValueError(f"{what} is not an integer: {v!r:.60}")


def _float(v: Any, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float | str) or \
            isinstance(v, str) and "_" in v:
        raise ValueError(f"{what} is not a number: {v!r:.60}")
    try:
        return float(v)
    except (ValueError, OverflowError):
        raise ValueError(f"{what} is not a number: {v!r:.60}") from None


def _list(v: Any, what: str) -> list:
    if not isinstance(v, list):
        raise ValueError(f"{what} is not a list: {v!r:.60}")
    return v


def _get(obj: Any, key: str, what: str) -> Any:
    if not isinstance(obj, Mapping):
        raise ValueError(f"{what} is not an object")
    if key not in obj:
        raise ValueError(f"{what} has no {key!r}")
    return obj[key]


def _feature_names(names: Any, n: int, what: str) -> tuple[str, ...]:
    names = _list(names, f"{what} feature_names")
    if not names:
        raise ValueError(f"{what} declares no feature names; payauth binds features by name "
                         f"(LightGBM: Dataset(feature_name=...); XGBoost: "
                         f"DMatrix(feature_names=...))")
    if len(names) != n:
        raise ValueError(f"{what} declares {len(names)} feature names for {n} features")
    for name in names:
        if not isinstance(name, str) or not name or name != name.strip():
            raise ValueError(f"{what} feature name {name!r:.60} is empty or not a string")
    dup = sorted({name for name in names if names.count(name) > 1})
    if dup:
        raise ValueError(f"{what} feature names repeat: {', '.join(dup[:10])}")
    return tuple(names)


def _check_tree(t: int, left: Sequence[int], right: Sequence[int], leaf: Sequence[bool],
                *, allow_orphans: bool, what: str) -> None:
    """Node 0 is the root; every reachable node has one parent; children are in range."""
    n = len(left)
    parent = [-1] * n
    stack = [0]
    reached = 1
    while stack:
        i = stack.pop()
        if leaf[i]:
            continue
        for c in (left[i], right[i]):
            if not 0 < c < n:
                raise ValueError(f"{what} tree {t}: node {i} has child {c}, out of [1, {n})")
            if parent[c] != -1:
                raise ValueError(f"{what} tree {t}: node {c} has two parents")
            parent[c] = i
            reached += 1
            stack.append(c)
    if reached != n and not allow_orphans:
        raise ValueError(f"{what} tree {t}: {n - reached} nodes are unreachable from the root")


class _Builder:
    """Accumulates trees (tree-local node arrays) into one TreeModel's flat arrays."""

    def __init__(self, what: str, n_features: int) -> None:
        self.what = what
        self.n_features = n_features
        self.offsets = [0]
        self.feature: list[int] = []
        self.threshold: list[float] = []
        self.left: list[int] = []
        self.right: list[int] = []
        self.default_left: list[bool] = []
        self.missing: list[int] = []
        self.categorical: list[bool] = []
        self.value: list[float] = []
        self.cat_offsets = [0]
        self.cat_bits: list[int] = []

    def add_bitset(self, words: Iterable[int]) -> int:
        self.cat_bits.extend(words)
        self.cat_offsets.append(len(self.cat_bits))
        return len(self.cat_offsets) - 2

    def add_tree(self, feature: list[int], threshold: list[float], left: list[int],
                 right: list[int], default_left: list[bool], missing: list[int],
                 categorical: list[bool], value: list[float], *,
                 allow_orphans: bool = False) -> None:
        t = len(self.offsets) - 1
        n = len(feature)
        if n == 0:
            raise ValueError(f"{self.what} tree {t} has no nodes")
        leaf = [f < 0 for f in feature]
        for i in range(n):
            if leaf[i]:
                if not math.isfinite(value[i]):
                    raise ValueError(f"{self.what} tree {t}: leaf value {value[i]} is not "
                                     f"finite")
                continue
            if not 0 <= feature[i] < self.n_features:
                raise ValueError(f"{self.what} tree {t}: split feature {feature[i]} is out of "
                                 f"range [0, {self.n_features})")
            if math.isnan(threshold[i]):
                raise ValueError(f"{self.what} tree {t}: split threshold is NaN")
        _check_tree(t, left, right, leaf, allow_orphans=allow_orphans, what=self.what)
        self.feature += feature
        self.threshold += threshold
        self.left += left
        self.right += right
        self.default_left += default_left
        self.missing += missing
        self.categorical += categorical
        self.value += value
        self.offsets.append(len(self.feature))

    def build(self, **model: Any) -> TreeModel:
        if len(self.offsets) < 2:
            raise ValueError(f"{self.what} has no trees")

        def frozen(values: list, dtype: Any) -> np.ndarray:
            a = np.array(values, dtype=dtype)
            a.flags.writeable = False
            return a

        return TreeModel(
            tree_offsets=frozen(self.offsets, np.int64),
            split_feature=frozen(self.feature, np.int32),
            threshold=frozen(self.threshold, np.float64),
            left_child=frozen(self.left, np.int32),
            right_child=frozen(self.right, np.int32),
            default_left=frozen(self.default_left, np.bool_),
            missing_type=frozen(self.missing, np.uint8),
            categorical=frozen(self.categorical, np.bool_),
            leaf_value=frozen(self.value, np.float64),
            cat_offsets=frozen(self.cat_offsets, np.int64),
            cat_bits=frozen(self.cat_bits, np.uint32),
            **model,
        )


def _text(data: str | bytes | bytearray, what: str) -> str:
    if isinstance(data, bytes | bytearray):
        try:
            return bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"{what} is not UTF-8 text: {exc}") from None
    if isinstance(data, str):
        return data
    raise TypeError(f"{what} must be str or bytes, not {type(data).__name__}")


def _guarded(what: str, parse: Callable[[], TreeModel]) -> TreeModel:
    """Run a parser; shapes it did not foresee still come out as a ValueError."""
    try:
        return parse()
    except ValueError:
        raise
    except (KeyError, IndexError, TypeError, AttributeError, OverflowError,
            RecursionError) as exc:
        raise ValueError(f"malformed {what}: {type(exc).__name__}: {exc}") from None


# -- LightGBM ----------------------------------------------------------------------------

def _lightgbm_objective(objective: str, what: str) -> tuple[str, float]:
    """(link, sigmoid scale) of a LightGBM objective string such as 'binary sigmoid:1'."""
    tokens = objective.split()
    if not tokens:
        raise ValueError(f"{what} has an empty objective")
    name = tokens[0]
    params = {}
    for token in tokens[1:]:
        key, sep, value = token.partition(":")
        params[key] = value if sep else ""
    if name in _LIGHTGBM_SIGMOID:
        scale = _float(params.get("sigmoid", "1"), f"{what} sigmoid") if name == "binary" \
            else 1.0
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"{what} sigmoid {scale} must be a positive number")
        return "sigmoid", scale
    if name in _LIGHTGBM_IDENTITY:
        if "sqrt" in params:
            raise ValueError(f"{what}: objective {objective!r} squares its output; "
                             f"payauth scores raw or sigmoid outputs only")
        return "identity", 1.0
    raise ValueError(f"{what}: objective {name!r} is not supported; payauth scores binary "
                     f"classifiers (binary, cross_entropy) and plain regression margins")


def _lightgbm_header(what: str, num_class: int, per_iteration: int) -> None:
    if num_class != 1 or per_iteration != 1:
        raise ValueError(f"{what} has {num_class} classes and {per_iteration} trees per "
                         f"iteration; payauth scores single-output models")


def load_lightgbm_text(data: str | bytes) -> TreeModel:
    """Parse LightGBM's text model (`Booster.model_to_string()`, `save_model`)."""
    what = "LightGBM text model"
    text = _text(data, what)
    return _guarded(what, lambda: _parse_lightgbm_text(text, what))


def _parse_lightgbm_text(text: str, what: str) -> TreeModel:
    lines = text.splitlines(keepends=True)
    if not lines or lines[0].strip() != "tree":
        raise ValueError(f"{what} must start with a 'tree' line")
    header: dict[str, str] = {}
    blocks: list[tuple[int, dict[str, str]]] = []
    starts: list[int] = []  # byte offset of each "Tree=" line, then of "end of trees"
    current: dict[str, str] | None = None
    offset = len(lines[0].encode())
    for number, raw in enumerate(lines[1:], start=2):
        line = raw.strip()
        at = offset
        offset += len(raw.encode())
        if line == "end of trees":
            starts.append(at)
            break
        if not line:
            continue
        key, sep, value = line.partition("=")
        if key == "Tree":
            if _int(value, f"{what} line {number}: Tree") != len(blocks):
                raise ValueError(f"{what} line {number}: expected Tree={len(blocks)}")
            current = {}
            blocks.append((number, current))
            starts.append(at)
            continue
        target = header if current is None else current
        if key in target:
            raise ValueError(f"{what} line {number}: {key!r} repeats")
        target[key] = value if sep else ""
    if len(starts) != len(blocks) + 1:
        raise ValueError(f"{what} has no 'end of trees' line (truncated?)")

    def need(key: str) -> str:
        if key not in header:
            raise ValueError(f"{what} header has no {key!r}")
        return header[key]

    version = need("version")
    if version not in ("v2", "v3", "v4"):
        raise ValueError(f"{what} version {version!r} is not v2, v3 or v4")
    _lightgbm_header(what, _int(need("num_class"), f"{what} num_class"),
                     _int(header.get("num_tree_per_iteration", "1"),
                          f"{what} num_tree_per_iteration"))
    n_features = _int(need("max_feature_idx"), f"{what} max_feature_idx") + 1
    if not 0 < n_features <= MAX_WIDTH:
        raise ValueError(f"{what} max_feature_idx {n_features - 1} is out of range")
    names = _feature_names(need("feature_names").split(" "), n_features, what)
    objective = need("objective")
    link, scale = _lightgbm_objective(objective, what)
    builder = _Builder(what, n_features)
    for t, (number, block) in enumerate(blocks):
        _lightgbm_text_tree(builder, t, block, f"{what} tree {t} (line {number})")
    if "tree_sizes" in header:
        # LightGBM finds its trees by these byte counts: a file whose counts no longer
        # match its blocks (edited by hand?) would be read differently by LightGBM.
        sizes = [_int(v, f"{what} tree_sizes") for v in header["tree_sizes"].split(" ")]
        found = [b - a for a, b in zip(starts, starts[1:], strict=False)]
        if sizes != found:
            t = next((i for i, (a, b) in enumerate(zip(sizes, found, strict=False)) if a != b),
                     min(len(sizes), len(found)))
            raise ValueError(f"{what}: tree_sizes disagree with the tree blocks (tree {t}: "
                             f"{sizes[t] if t < len(sizes) else 'none'} bytes declared, "
                             f"{found[t] if t < len(found) else 'none'} found); LightGBM "
                             f"would read other trees than these")
    # Random forest mode: LightGBM's output (not its raw_score) is the sum / iterations.
    divisor = float(len(blocks)) if "average_output" in header and blocks else 1.0
    return builder.build(source="lightgbm", objective=objective, feature_names=names,
                         float32=False, base_margin=0.0, divisor=divisor, link=link,
                         sigmoid_scale=scale)


def _lightgbm_text_tree(builder: _Builder, t: int, block: dict[str, str], what: str) -> None:
    def field(key: str, count: int, convert: Callable[[Any, str], Any]) -> list:
        if count == 0:
            return []
        if key not in block:
            raise ValueError(f"{what} has no {key!r}")
        items = block[key].split(" ")
        if len(items) != count:
            raise ValueError(f"{what}: {key} has {len(items)} values, expected {count}")
        return [convert(v, f"{what} {key}") for v in items]

    if "num_leaves" not in block:
        raise ValueError(f"{what} has no 'num_leaves'")
    n_leaves = _int(block["num_leaves"], f"{what} num_leaves")
    if n_leaves < 1:
        raise ValueError(f"{what}: num_leaves {n_leaves} is below 1")
    if _int(block.get("is_linear", "0"), f"{what} is_linear") != 0:
        raise ValueError(f"{what} is a linear tree (linear_tree=true); not supported")
    n_cat = _int(block.get("num_cat", "0"), f"{what} num_cat")
    n_split = n_leaves - 1
    feature = field("split_feature", n_split, _int)
    threshold = field("threshold", n_split, _float)
    decision = field("decision_type", n_split, _int)
    left = field("left_child", n_split, _int)
    right = field("right_child", n_split, _int)
    value = field("leaf_value", n_leaves, _float)
    bitsets: list[int] = []
    if n_cat < 0:
        raise ValueError(f"{what}: num_cat {n_cat} is negative")
    if n_cat:
        bounds = field("cat_boundaries", n_cat + 1, _int)
        if "cat_threshold" not in block:
            raise ValueError(f"{what} has no 'cat_threshold'")
        words = [_int(v, f"{what} cat_threshold") for v in block["cat_threshold"].split(" ")]
        if bounds[0] != 0 or bounds[-1] != len(words) or \
                any(b > a for a, b in zip(bounds[1:], bounds, strict=False)):
            raise ValueError(f"{what}: cat_boundaries {bounds[:8]} do not split cat_threshold")
        if any(not 0 <= w < 1 << 32 for w in words):
            raise ValueError(f"{what}: cat_threshold holds a value outside 32 bits")
        bitsets = [builder.add_bitset(words[a:b]) for a, b in zip(bounds, bounds[1:],
                                                                   strict=False)]
    # One node array: splits 0..n_split-1, then leaf k at n_split + k (children ~k).
    n = n_split + n_leaves
    node_feature = feature + [-1] * n_leaves
    node_threshold = list(threshold) + [0.0] * n_leaves
    node_left = [-1] * n
    node_right = [-1] * n
    default_left = [False] * n
    missing = [MISSING_NONE] * n
    categorical = [False] * n
    node_value = [0.0] * n_split + value
    for i in range(n_split):
        for out, c in ((node_left, left[i]), (node_right, right[i])):
            if not -n_leaves <= c < n_split:
                raise ValueError(f"{what}: child {c} of split {i} is out of range")
            out[i] = c if c >= 0 else n_split + ~c
        d = decision[i]
        if not 0 <= d < 16 or (d >> 2) & 3 == 3:
            raise ValueError(f"{what}: decision_type {d} of split {i} is not valid")
        default_left[i] = bool(d & 2)
        missing[i] = (d >> 2) & 3
        if d & 1:
            categorical[i] = True
            cat = threshold[i]
            if not (math.isfinite(cat) and cat == int(cat) and 0 <= cat < n_cat):
                raise ValueError(f"{what}: categorical split {i} names bitset {cat}, "
                                 f"out of [0, {n_cat})")
            node_threshold[i] = float(bitsets[int(cat)])
    builder.add_tree(node_feature, node_threshold, node_left, node_right, default_left,
                     missing, categorical, node_value)


def load_lightgbm_json(data: str | bytes | Mapping[str, Any]) -> TreeModel:
    """Parse LightGBM's `Booster.dump_model()` (the dict, or its JSON text)."""
    what = "LightGBM JSON model"
    if isinstance(data, Mapping):
        dump = data
    else:
        dump = _json(data, what)
    return _guarded(what, lambda: _parse_lightgbm_json(dump, what))


def _json(data: str | bytes, what: str, hint: str = "", **kwargs: Any) -> Any:
    text = _text(data, what + hint)
    try:
        return json.loads(text, **kwargs)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what} is not valid JSON: {exc}{hint}") from None
    except RecursionError:
        raise ValueError(f"{what} nests too deeply") from None


def _parse_lightgbm_json(dump: Mapping[str, Any], what: str) -> TreeModel:
    if not isinstance(dump, Mapping):
        raise ValueError(f"{what} is not a JSON object")
    if dump.get("name", "tree") != "tree":
        raise ValueError(f"{what}: name {dump.get('name')!r} is not 'tree'")
    _lightgbm_header(what, _int(_get(dump, "num_class", what), f"{what} num_class"),
                     _int(dump.get("num_tree_per_iteration", 1),
                          f"{what} num_tree_per_iteration"))
    n_features = _int(_get(dump, "max_feature_idx", what), f"{what} max_feature_idx") + 1
    if not 0 < n_features <= MAX_WIDTH:
        raise ValueError(f"{what} max_feature_idx {n_features - 1} is out of range")
    names = _feature_names(_get(dump, "feature_names", what), n_features, what)
    objective = _get(dump, "objective", what)
    if not isinstance(objective, str):
        raise ValueError(f"{what} objective is not a string")
    link, scale = _lightgbm_objective(objective, what)
    average = dump.get("average_output", False)
    if not isinstance(average, bool):
        raise ValueError(f"{what} average_output is not a boolean")
    trees = _list(_get(dump, "tree_info", what), f"{what} tree_info")
    builder = _Builder(what, n_features)
    for t, info in enumerate(trees):
        _lightgbm_json_tree(builder, t, _get(info, "tree_structure", f"{what} tree {t}"),
                            f"{what} tree {t}")
    return builder.build(source="lightgbm", objective=objective, feature_names=names,
                         float32=False, base_margin=0.0,
                         divisor=float(len(trees)) if average and trees else 1.0,
                         link=link, sigmoid_scale=scale)


_LIGHTGBM_JSON_INF = 1e300
_JSON_MISSING = {"None": MISSING_NONE, "Zero": MISSING_ZERO, "NaN": MISSING_NAN}


def _lightgbm_json_tree(builder: _Builder, t: int, root: Any, what: str) -> None:
    feature: list[int] = []
    threshold: list[float] = []
    left: list[int] = []
    right: list[int] = []
    default_left: list[bool] = []
    missing: list[int] = []
    categorical: list[bool] = []
    value: list[float] = []
    # Pre-order, iteratively (a deep tree must not exhaust the Python stack).
    stack: list[tuple[Any, int, str]] = [(root, -1, "")]
    while stack:
        node, parent, side = stack.pop()
        i = len(feature)
        if parent >= 0:
            (left if side == "left" else right)[parent] = i
        if not isinstance(node, Mapping):
            raise ValueError(f"{what}: node {i} is not an object")
        left.append(-1)
        right.append(-1)
        if "split_feature" not in node:
            if "leaf_value" not in node:
                raise ValueError(f"{what}: node {i} is neither a split nor a leaf")
            feature.append(-1)
            threshold.append(0.0)
            default_left.append(False)
            missing.append(MISSING_NONE)
            categorical.append(False)
            value.append(_float(node["leaf_value"], f"{what} leaf_value"))
            continue
        feature.append(_int(node["split_feature"], f"{what} split_feature"))
        kind = _get(node, "decision_type", f"{what} node {i}")
        flag = _get(node, "default_left", f"{what} node {i}")
        if not isinstance(flag, bool):
            raise ValueError(f"{what}: default_left of node {i} is not a boolean")
        default_left.append(flag)
        kind_missing = node.get("missing_type", "None")
        if kind_missing not in _JSON_MISSING:
            raise ValueError(f"{what}: missing_type {kind_missing!r} of node {i} is not "
                             f"None, Zero or NaN")
        missing.append(_JSON_MISSING[kind_missing])
        raw = _get(node, "threshold", f"{what} node {i}")
        if kind == "<=":
            categorical.append(False)
            limit = _float(raw, f"{what} threshold")
            # dump_model writes an infinite threshold as +-1e300 (LightGBM's AvoidInf);
            # the booster and its text model keep inf, which a +-inf input tells apart.
            if abs(limit) == _LIGHTGBM_JSON_INF:
                limit = math.copysign(math.inf, limit)
            threshold.append(limit)
        elif kind == "==":
            categorical.append(True)
            cats = [_int(c, f"{what} categories") for c in
                    (str(raw).split("||") if isinstance(raw, str) else [raw])]
            if any(not 0 <= c < MAX_CATEGORY for c in cats):
                raise ValueError(f"{what}: node {i} has a category outside "
                                 f"[0, {MAX_CATEGORY})")
            words = [0] * (max(cats) // 32 + 1)
            for c in cats:
                words[c // 32] |= 1 << (c % 32)
            threshold.append(float(builder.add_bitset(words)))
        else:
            raise ValueError(f"{what}: decision_type {kind!r} of node {i} is not '<=' or '=='")
        value.append(0.0)
        stack.append((_get(node, "right_child", f"{what} node {i}"), i, "right"))
        stack.append((_get(node, "left_child", f"{what} node {i}"), i, "left"))
    builder.add_tree(feature, threshold, left, right, default_left, missing, categorical,
                     value)


# -- XGBoost -----------------------------------------------------------------------------

def _float32(v: Any, what: str) -> float:
    """A number as XGBoost holds it: the nearest float32 to the decimal it wrote.

    JSON text is parsed with `parse_float=str`, so the decimal is still at hand: going
    through a double rounds twice, which can only go wrong when the double lands exactly
    on a float32 midpoint, and then the decimal says which side it was on.
    """
    d = _float(v, what)
    with np.errstate(over="ignore"):
        f = np.float32(d)
    if isinstance(v, str) and math.isfinite(float(f)) and float(f) != d:
        other = np.nextafter(f, np.float32(math.copysign(math.inf, d - float(f))))
        if math.isfinite(float(other)) and (float(f) + float(other)) / 2 == d:
            exact = Decimal(v.strip())
            if exact != Decimal(d):
                f = other if (exact > Decimal(d)) == (float(other) > float(f)) else f
    return float(f)


def load_xgboost_json(data: str | bytes | Mapping[str, Any]) -> TreeModel:
    """Parse XGBoost's JSON model (`save_model("m.json")`, `save_raw("json")`)."""
    what = "XGBoost JSON model"
    model = data if isinstance(data, Mapping) else _json(
        data, what, " (save it with save_model('m.json') or save_raw('json'); UBJSON is "
        "not accepted)", parse_float=str)
    return _guarded(what, lambda: _parse_xgboost_json(model, what))


def _parse_xgboost_json(model: Mapping[str, Any], what: str) -> TreeModel:
    learner = _get(model, "learner", what)
    params = _get(learner, "learner_model_param", f"{what} learner")
    n_features = _int(_get(params, "num_feature", f"{what} learner_model_param"),
                      f"{what} num_feature")
    if not 0 < n_features <= MAX_WIDTH:
        raise ValueError(f"{what} num_feature {n_features} is out of range")
    n_class = _int(params.get("num_class", "0"), f"{what} num_class")
    n_target = _int(params.get("num_target", "1"), f"{what} num_target")
    if n_class > 1 or n_target != 1:
        raise ValueError(f"{what} has {n_class} classes and {n_target} targets; payauth "
                         f"scores single-output models")
    names = _feature_names(learner.get("feature_names", []), n_features, what)
    objective = _get(_get(learner, "objective", f"{what} learner"), "name",
                     f"{what} objective")
    if objective not in _XGBOOST_OBJECTIVES:
        raise ValueError(f"{what}: objective {objective!r} is not supported; payauth scores "
                         f"{', '.join(sorted(_XGBOOST_OBJECTIVES))}")
    link, logit_base = _XGBOOST_OBJECTIVES[objective]
    raw_base = _get(params, "base_score", f"{what} learner_model_param")
    if isinstance(raw_base, str) and raw_base.strip().startswith("["):
        items = [s for s in raw_base.strip()[1:-1].split(",") if s.strip()] \
            if raw_base.strip().endswith("]") else None
        if not items or len(items) != 1:
            raise ValueError(f"{what} base_score {raw_base!r:.60} is not one number")
        raw_base = items[0]
    base = _float32(raw_base, f"{what} base_score")
    if not math.isfinite(base):
        raise ValueError(f"{what} base_score {base} is not finite")
    base_margin = xgboost_logit_base(base) if logit_base else base

    booster = _get(learner, "gradient_booster", f"{what} learner")
    kind = _get(booster, "name", f"{what} gradient_booster")
    if kind != "gbtree":
        raise ValueError(f"{what}: booster {kind!r} is not supported (gbtree only)")
    body = _get(booster, "model", f"{what} gradient_booster")
    trees = _list(_get(body, "trees", f"{what} model"), f"{what} trees")
    declared = _int(_get(_get(body, "gbtree_model_param", f"{what} model"), "num_trees",
                         f"{what} gbtree_model_param"), f"{what} num_trees")
    if declared != len(trees):
        raise ValueError(f"{what} declares {declared} trees and holds {len(trees)}")
    groups = body.get("tree_info", [0] * len(trees))
    if _list(groups, f"{what} tree_info") != [0] * len(trees):
        raise ValueError(f"{what} tree_info assigns trees to several outputs")
    builder = _Builder(what, n_features)
    for t, tree in enumerate(trees):
        _xgboost_tree(builder, t, tree, f"{what} tree {t}")
    return builder.build(source="xgboost", objective=objective, feature_names=names,
                         float32=True, base_margin=base_margin, divisor=1.0, link=link,
                         sigmoid_scale=1.0)


def _xgboost_tree(builder: _Builder, t: int, tree: Any, what: str) -> None:
    if not isinstance(tree, Mapping):
        raise ValueError(f"{what} is not an object")
    param = _get(tree, "tree_param", what)
    n = _int(_get(param, "num_nodes", f"{what} tree_param"), f"{what} num_nodes")
    if n < 1:
        raise ValueError(f"{what}: num_nodes {n} is below 1")
    if _int(param.get("size_leaf_vector", "1"), f"{what} size_leaf_vector") > 1:
        raise ValueError(f"{what} has vector leaves (multi-target); not supported")

    def array(key: str) -> list:
        items = _list(_get(tree, key, what), f"{what} {key}")
        if len(items) != n:
            raise ValueError(f"{what}: {key} has {len(items)} entries, num_nodes is {n}")
        return items

    left = [_int(v, f"{what} left_children") for v in array("left_children")]
    right = [_int(v, f"{what} right_children") for v in array("right_children")]
    index = [_int(v, f"{what} split_indices") for v in array("split_indices")]
    condition = [_float32(v, f"{what} split_conditions") for v in array("split_conditions")]
    default_left = [_int(v, f"{what} default_left") for v in array("default_left")]
    split_type = [_int(v, f"{what} split_type") for v in tree.get("split_type", [0] * n)]
    if len(split_type) != n:
        raise ValueError(f"{what}: split_type has {len(split_type)} entries, num_nodes is {n}")
    feature = []
    threshold = []
    value = []
    for i in range(n):
        if left[i] == -1:
            if right[i] != -1:
                raise ValueError(f"{what}: node {i} has a right child but no left one")
            feature.append(-1)
            threshold.append(0.0)
            value.append(condition[i])
            continue
        if split_type[i] != 0:
            raise ValueError(f"{what}: node {i} is a categorical split; XGBoost categorical "
                             f"splits are not supported")
        if default_left[i] not in (0, 1):
            raise ValueError(f"{what}: default_left {default_left[i]} of node {i} is not 0/1")
        if math.isnan(condition[i]) or condition[i] == -math.inf:
            raise ValueError(f"{what}: split condition {condition[i]} of node {i} is not "
                             f"a usable threshold")
        feature.append(index[i])
        threshold.append(condition[i])
        value.append(0.0)
    builder.add_tree(feature, threshold, [c if c >= 0 else -1 for c in left],
                     [c if c >= 0 else -1 for c in right], [bool(d) for d in default_left],
                     [MISSING_NAN] * n, [False] * n, value, allow_orphans=True)


# -- any of them ---------------------------------------------------------------------------

def load_model(data: str | bytes | Mapping[str, Any]) -> TreeModel:
    """Parse a model in any accepted format, recognised from its content."""
    if isinstance(data, Mapping):
        if "learner" in data:
            return load_xgboost_json(data)
        return load_lightgbm_json(data)
    text = _text(data, "model")
    head = text.lstrip()[:64]
    if head.startswith("tree"):
        return load_lightgbm_text(text)
    if head.startswith("{"):
        if '"learner"' in text[:4096]:
            return load_xgboost_json(text)
        return load_lightgbm_json(text)
    raise ValueError("model is neither a LightGBM text model nor a JSON model "
                     "(LightGBM dump_model or XGBoost save_model)")
