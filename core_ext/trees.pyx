"""Tree ensembles (LightGBM, XGBoost) evaluated in C over one vector of doubles.

`payauth.core.models` parses the libraries' own dumps into a `TreeModel`; binding it to
the decision vector's layout builds a `TreeEnsemble` here. The walk reads only C arrays,
allocates nothing and runs without the GIL, so policies and the server call
`TreeEnsemble.margin` from C (`cimport`) or from Python alike.

How the walk is made fast (see docs/models.md for the measurements):
- The ranked walk, taken by every model read through the row buffer with no categorical
  or zero-as-missing split and no tree deeper than RANK_DEPTH_MAX (all XGBoost models of
  the default depth, LightGBM models trained with `max_depth` <= 6): a split's test
  `v <= t` is the same as `rank(v) <= rank(t)`, a value's rank being how many of its
  feature's thresholds lie below it. So each feature the model reads is ranked once per
  row (a branch-free binary search over its sorted thresholds, eight features side by
  side), and every tree becomes a complete heap of 4-byte nodes (threshold rank, rank
  slot): a step is `i = 2i + (ranks[slot] > node)`, no child index stored. The model's
  nodes take a quarter of the node walk's bytes, so they stay in the cache beside the
  record the decision reads.
- Otherwise every tree is laid out breadth first in one array of 16-byte nodes, the two
  children of a split side by side, so a step is `right - (v <= threshold)`, with no
  branch on the outcome.
- Walks take the same number of steps: in the ranked walk a leaf above the deepest level
  fills every leaf slot below it; in the node walk a leaf goes "left" to itself. So
  several trees are walked side by side (RANK_LANES, TREE_LANES), each in a register:
  their loads overlap instead of waiting on each other.
- The features a model reads are first copied into a small row buffer on the C stack,
  twice: with NaN as -inf (read by splits whose NaN goes left) and as they are (NaN
  fails `v <= t`, so it goes right). One comparison decides a split, NaN included. The
  ranked walk keeps the two copies as ranks (NaN: 0, or above every threshold's rank).
- In the node walk a leaf keeps its value in its own node (its threshold; it reads the
  row buffer's trailing -inf, so its test always holds): the sum reads it from the node
  the walk just loaded, not from another array.

Semantics are the libraries' own, corners included: LightGBM treats |x| <= 1e-35f as
zero, NaN as zero unless the split learned a NaN direction, and sends NaN, negative and
too-large categories right; XGBoost compares float32(x) < float32 threshold and sums
float32 leaves onto its float32 base margin. Every numeric split becomes the one test
`v <= threshold` on doubles when the ensemble is built (`_xgboost_threshold`,
`_lightgbm_threshold`), so the walks are the same for both.
"""

cimport cython
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.math cimport INFINITY, exp, expf, logf, nextafter, nextafterf
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t
from libc.string cimport memset

from payauth.core.cel_eval cimport Activation

import numpy as np

# LightGBM's kZeroThreshold: its predictor drops |x| <= 1e-35f from a dense row, so
# those values reach the trees as exactly 0.0.
cdef double LIGHTGBM_ZERO = <double>(<float>1e-35)
cdef double FLOAT32_MAX = 3.4028234663852886e38
cdef double FLOAT32_HALF_TOP_ULP = 1.0141204801825835e31  # 2**103: half of FLT_MAX's ulp


cdef double _xgboost_threshold(float t) noexcept nogil:
    """The double d such that, for every double x: float32(x) < t  <=>  x <= d.

    x goes left when float32(x) <= p, p the float32 just below t: that holds for every x
    below the midpoint m of p and t, and at m itself when m rounds to p (ties to even).
    m is exact in double. t is finite or +inf (the loader rejects NaN and -inf).
    """
    cdef float p = nextafterf(t, -INFINITY)
    cdef double m
    if p == -INFINITY:  # t is -FLT_MAX: only values that round to -inf are below it
        m = -FLOAT32_MAX - FLOAT32_HALF_TOP_ULP
    elif t == INFINITY:
        m = FLOAT32_MAX + FLOAT32_HALF_TOP_ULP
    else:
        m = (<double>p + <double>t) * 0.5
    if <float>m == p:
        return m
    return nextafter(m, -INFINITY)


cdef double _lightgbm_threshold(double t) noexcept nogil:
    """The double d with x <= d  <=>  x' <= t, x' being x with |x| <= 1e-35f set to 0."""
    if 0.0 <= t < LIGHTGBM_ZERO:
        return LIGHTGBM_ZERO
    if -LIGHTGBM_ZERO <= t < 0.0:
        return nextafter(-LIGHTGBM_ZERO, -INFINITY)
    return t


cdef int32_t _special_step(const TreeNode *n, const SpecialSplit *s, const uint32_t *bits,
                           const double *x) noexcept nogil:
    """A categorical or zero-as-missing split (LightGBM): rare, so kept off the main path."""
    cdef double v = x[s.feature]
    cdef int32_t category
    if s.kind == SPLIT_CATEGORICAL:
        # LightGBM casts to int: NaN, x <= -1 and x >= 2**31 go right; -1 < x < 0 is 0.
        if not (v > -1.0 and v < 2147483648.0):
            return n.right
        category = <int32_t>v
        if (category >> 5) < s.cat_words and (bits[s.cat_begin + (category >> 5)]
                                              >> (category & 31)) & 1:
            return n.right - 1
        return n.right
    if v != v or (-LIGHTGBM_ZERO <= v <= LIGHTGBM_ZERO):
        return n.right - s.default_left
    return n.right - <int32_t>(v <= s.threshold)


cdef inline int32_t _step(const TreeNode *nodes, const SpecialSplit *special,
                          const uint32_t *bits, const double *x, const double *row,
                          int32_t i, bint has_special, bint direct) noexcept nogil:
    """One step of one walk. `has_special` and `direct` are constants where this is
    inlined, so a model without categorical splits (all XGBoost, most LightGBM) read
    through the row buffer walks with one load, one comparison and no branch."""
    cdef const TreeNode *n = nodes + i
    cdef uint32_t word = n.word
    cdef double v
    if has_special and word & NODE_SPECIAL:
        return _special_step(n, special + <int32_t>n.threshold, bits, x)
    if direct:
        # `v <= t` is false for NaN; the node's NaN bit says where NaN goes instead.
        v = x[word & NODE_INDEX_MASK]
        return n.right - (<int32_t>(v <= n.threshold)
                          | (<int32_t>(v != v) & <int32_t>(word >> NODE_NAN_LEFT_SHIFT)))
    return n.right - <int32_t>(row[word] <= n.threshold)


cdef inline void _fill_row(const int32_t *gather, Py_ssize_t k, const double *x,
                           double *row) noexcept nogil:
    """row = [x with NaN as -inf | x as it is | -inf], over the features the model reads.

    A split whose NaN goes left reads the first copy (-inf <= t for every threshold);
    the others read the second (NaN <= t is false). A stand-in for NaN on that side
    would be wrong: LightGBM writes threshold inf for "NaN apart from all the rest".
    """
    cdef Py_ssize_t j
    cdef double v
    for j in range(k):
        v = x[gather[j]]
        row[k + j] = v
        row[j] = v if v == v else -INFINITY
    row[2 * k] = -INFINITY  # what leaves read: -inf <= leaf value, so a walk stays


cdef inline double _leaf(const TreeNode *nodes, const double *leaf, int32_t i,
                        bint direct) noexcept nogil:
    """The value of leaf i: in its node through the row buffer, else in `_leaf_value`."""
    if direct:
        return leaf[i]
    return nodes[i].threshold


cdef inline Py_ssize_t _search_step(const double *cuts, Py_ssize_t p, Py_ssize_t h,
                                    double v) noexcept nogil:
    """One step of a branch-free binary search: p counts the cuts known to lie below v."""
    return p + h if cuts[p + h - 1] < v else p


cdef inline uint32_t _nan_rank(Py_ssize_t p, double v, bint nan_right) noexcept nogil:
    """A value's rank, shifted into the high half as the heaps compare it; NaN ranks 0
    where it goes left and RANK_NAN_RIGHT where it goes right."""
    if v != v:
        return <uint32_t>RANK_NAN_RIGHT << 16 if nan_right else 0
    return <uint32_t>p << 16


cdef inline void _fill_ranks(TreeEnsemble self, const double *x,
                             uint32_t *ranks) noexcept nogil:
    """ranks = [rank of x, NaN as 0 | rank of x, NaN as RANK_NAN_RIGHT] << 16, over the
    features the model reads; a value's rank is how many of its feature's thresholds lie
    below it.

    For every threshold t of rank r and every value v that is not NaN, `v <= t` holds
    exactly when rank(v) <= r, so the split's test on ranks is the test on doubles. NaN
    takes rank 0 on the side where it goes left (0 <= every r) and one above every r on
    the other, as the row buffer's -inf and NaN do.

    Every feature's cuts are padded with +inf to one power of two, so the searches all
    take the same steps, RANK_GROUP features side by side: their steps do not wait on
    each other, and each is one comparison and a conditional move. Padding features (up
    to a multiple of RANK_GROUP) read the first feature again, against cuts of +inf only.
    """
    cdef Py_ssize_t g, h, n = self._rank_features, width = 2 * self._rank_half
    cdef const double *cuts
    cdef const int32_t *gather = self._gather
    cdef Py_ssize_t p0, p1, p2, p3, p4, p5, p6, p7
    cdef double v0, v1, v2, v3, v4, v5, v6, v7
    g = 0
    while g < n:
        cuts = self._rank_cuts + g * width
        v0 = x[gather[g]]
        v1 = x[gather[g + 1]]
        v2 = x[gather[g + 2]]
        v3 = x[gather[g + 3]]
        v4 = x[gather[g + 4]]
        v5 = x[gather[g + 5]]
        v6 = x[gather[g + 6]]
        v7 = x[gather[g + 7]]
        p0 = 0
        p1 = width
        p2 = 2 * width
        p3 = 3 * width
        p4 = 4 * width
        p5 = 5 * width
        p6 = 6 * width
        p7 = 7 * width
        h = self._rank_half
        while h:
            p0 = _search_step(cuts, p0, h, v0)
            p1 = _search_step(cuts, p1, h, v1)
            p2 = _search_step(cuts, p2, h, v2)
            p3 = _search_step(cuts, p3, h, v3)
            p4 = _search_step(cuts, p4, h, v4)
            p5 = _search_step(cuts, p5, h, v5)
            p6 = _search_step(cuts, p6, h, v6)
            p7 = _search_step(cuts, p7, h, v7)
            h >>= 1
        p1 -= width
        p2 -= 2 * width
        p3 -= 3 * width
        p4 -= 4 * width
        p5 -= 5 * width
        p6 -= 6 * width
        p7 -= 7 * width
        ranks[g] = _nan_rank(p0, v0, False)
        ranks[g + 1] = _nan_rank(p1, v1, False)
        ranks[g + 2] = _nan_rank(p2, v2, False)
        ranks[g + 3] = _nan_rank(p3, v3, False)
        ranks[g + 4] = _nan_rank(p4, v4, False)
        ranks[g + 5] = _nan_rank(p5, v5, False)
        ranks[g + 6] = _nan_rank(p6, v6, False)
        ranks[g + 7] = _nan_rank(p7, v7, False)
        ranks[n + g] = _nan_rank(p0, v0, True)
        ranks[n + g + 1] = _nan_rank(p1, v1, True)
        ranks[n + g + 2] = _nan_rank(p2, v2, True)
        ranks[n + g + 3] = _nan_rank(p3, v3, True)
        ranks[n + g + 4] = _nan_rank(p4, v4, True)
        ranks[n + g + 5] = _nan_rank(p5, v5, True)
        ranks[n + g + 6] = _nan_rank(p6, v6, True)
        ranks[n + g + 7] = _nan_rank(p7, v7, True)
        g += RANK_GROUP


cdef inline Py_ssize_t _rank_step(const uint32_t *heap, const uint32_t *ranks,
                                  Py_ssize_t i) noexcept nogil:
    """One step down a complete heap, left child 2i, right 2i + 1. A node holds its
    threshold's rank r in its high half and its rank slot s in the low one, and ranks[s]
    is the value's rank v << 16: v > r exactly when ranks[s] > the node (s < 2**16)."""
    cdef uint32_t n = heap[i]
    return i + i + <Py_ssize_t>(n < ranks[n & 0xFFFF])


cdef inline double _sum_ranked(TreeEnsemble self, const uint32_t *ranks,
                               bint float32) noexcept nogil:
    """The ranked walk: RANK_LANES heaps side by side, every walk the same number of
    steps (a leaf above the deepest level is copied to every slot below it)."""
    cdef const uint32_t *heap = self._rank_nodes
    cdef const double *leaf = self._rank_leaf
    cdef Py_ssize_t c, d, depth = self._rank_depth
    cdef Py_ssize_t first = <Py_ssize_t>1 << depth
    cdef Py_ssize_t l0, l1, l2, l3, l4, l5, l6, l7, l8, l9
    cdef double total = 0.0
    cdef float total32 = <float>self._base_margin
    for c in range(self._rank_chunks):
        l0 = l1 = l2 = l3 = l4 = l5 = l6 = l7 = l8 = l9 = 1
        for d in range(depth):
            l0 = _rank_step(heap, ranks, l0)
            l1 = _rank_step(heap + RANK_STRIDE, ranks, l1)
            l2 = _rank_step(heap + 2 * RANK_STRIDE, ranks, l2)
            l3 = _rank_step(heap + 3 * RANK_STRIDE, ranks, l3)
            l4 = _rank_step(heap + 4 * RANK_STRIDE, ranks, l4)
            l5 = _rank_step(heap + 5 * RANK_STRIDE, ranks, l5)
            l6 = _rank_step(heap + 6 * RANK_STRIDE, ranks, l6)
            l7 = _rank_step(heap + 7 * RANK_STRIDE, ranks, l7)
            l8 = _rank_step(heap + 8 * RANK_STRIDE, ranks, l8)
            l9 = _rank_step(heap + 9 * RANK_STRIDE, ranks, l9)
        # Leaves in the trees' own order, rounded as the library rounds (see _sum_leaves).
        if float32:
            total32 = total32 + <float>leaf[l0 - first]
            total32 = total32 + <float>leaf[RANK_STRIDE + l1 - first]
            total32 = total32 + <float>leaf[2 * RANK_STRIDE + l2 - first]
            total32 = total32 + <float>leaf[3 * RANK_STRIDE + l3 - first]
            total32 = total32 + <float>leaf[4 * RANK_STRIDE + l4 - first]
            total32 = total32 + <float>leaf[5 * RANK_STRIDE + l5 - first]
            total32 = total32 + <float>leaf[6 * RANK_STRIDE + l6 - first]
            total32 = total32 + <float>leaf[7 * RANK_STRIDE + l7 - first]
            total32 = total32 + <float>leaf[8 * RANK_STRIDE + l8 - first]
            total32 = total32 + <float>leaf[9 * RANK_STRIDE + l9 - first]
        else:
            total = total + leaf[l0 - first]
            total = total + leaf[RANK_STRIDE + l1 - first]
            total = total + leaf[2 * RANK_STRIDE + l2 - first]
            total = total + leaf[3 * RANK_STRIDE + l3 - first]
            total = total + leaf[4 * RANK_STRIDE + l4 - first]
            total = total + leaf[5 * RANK_STRIDE + l5 - first]
            total = total + leaf[6 * RANK_STRIDE + l6 - first]
            total = total + leaf[7 * RANK_STRIDE + l7 - first]
            total = total + leaf[8 * RANK_STRIDE + l8 - first]
            total = total + leaf[9 * RANK_STRIDE + l9 - first]
        heap += RANK_LANES * RANK_STRIDE
        leaf += RANK_LANES * RANK_STRIDE
    if float32:
        return total32
    return total


cdef inline double _sum_leaves(TreeEnsemble self, const double *x, const double *row,
                               bint has_special, bint float32, bint direct) noexcept nogil:
    cdef const TreeNode *nodes = self._nodes
    cdef const SpecialSplit *sp = self._special
    cdef const uint32_t *bits = self._cat_bits
    cdef const double *leaf = self._leaf_value
    cdef const int32_t *roots = self._roots
    cdef Py_ssize_t c, d, depth
    cdef int32_t l0, l1, l2, l3, l4, l5, l6, l7, l8, l9, l10, l11
    cdef double total = 0.0
    cdef float total32 = <float>self._base_margin
    for c in range(self._n_chunks):
        l0 = roots[0]
        l1 = roots[1]
        l2 = roots[2]
        l3 = roots[3]
        l4 = roots[4]
        l5 = roots[5]
        l6 = roots[6]
        l7 = roots[7]
        l8 = roots[8]
        l9 = roots[9]
        l10 = roots[10]
        l11 = roots[11]
        depth = self._chunk_depth[c]
        for d in range(depth):
            l0 = _step(nodes, sp, bits, x, row, l0, has_special, direct)
            l1 = _step(nodes, sp, bits, x, row, l1, has_special, direct)
            l2 = _step(nodes, sp, bits, x, row, l2, has_special, direct)
            l3 = _step(nodes, sp, bits, x, row, l3, has_special, direct)
            l4 = _step(nodes, sp, bits, x, row, l4, has_special, direct)
            l5 = _step(nodes, sp, bits, x, row, l5, has_special, direct)
            l6 = _step(nodes, sp, bits, x, row, l6, has_special, direct)
            l7 = _step(nodes, sp, bits, x, row, l7, has_special, direct)
            l8 = _step(nodes, sp, bits, x, row, l8, has_special, direct)
            l9 = _step(nodes, sp, bits, x, row, l9, has_special, direct)
            l10 = _step(nodes, sp, bits, x, row, l10, has_special, direct)
            l11 = _step(nodes, sp, bits, x, row, l11, has_special, direct)
        # One leaf per tree, added in the trees' own order, so the sum rounds exactly as
        # the library's does: float32 for XGBoost, double for LightGBM. The padding
        # tree's leaf is 0, which changes neither.
        # Through the row buffer a leaf holds its value in its threshold (see _set_leaf).
        if float32:
            total32 = total32 + <float>_leaf(nodes, leaf, l0, direct)
            total32 = total32 + <float>_leaf(nodes, leaf, l1, direct)
            total32 = total32 + <float>_leaf(nodes, leaf, l2, direct)
            total32 = total32 + <float>_leaf(nodes, leaf, l3, direct)
            total32 = total32 + <float>_leaf(nodes, leaf, l4, direct)
            total32 = total32 + <float>_leaf(nodes, leaf, l5, direct)
            total32 = total32 + <float>_leaf(nodes, leaf, l6, direct)
            total32 = total32 + <float>_leaf(nodes, leaf, l7, direct)
            total32 = total32 + <float>_leaf(nodes, leaf, l8, direct)
            total32 = total32 + <float>_leaf(nodes, leaf, l9, direct)
            total32 = total32 + <float>_leaf(nodes, leaf, l10, direct)
            total32 = total32 + <float>_leaf(nodes, leaf, l11, direct)
        else:
            total = total + _leaf(nodes, leaf, l0, direct)
            total = total + _leaf(nodes, leaf, l1, direct)
            total = total + _leaf(nodes, leaf, l2, direct)
            total = total + _leaf(nodes, leaf, l3, direct)
            total = total + _leaf(nodes, leaf, l4, direct)
            total = total + _leaf(nodes, leaf, l5, direct)
            total = total + _leaf(nodes, leaf, l6, direct)
            total = total + _leaf(nodes, leaf, l7, direct)
            total = total + _leaf(nodes, leaf, l8, direct)
            total = total + _leaf(nodes, leaf, l9, direct)
            total = total + _leaf(nodes, leaf, l10, direct)
            total = total + _leaf(nodes, leaf, l11, direct)
        roots += TREE_LANES
    if float32:
        return total32
    return total


cdef float _xgboost_sigmoid(float x) noexcept nogil:
    # XGBoost's common::Sigmoid, every operation in float32 as it computes it.
    cdef float cap = 88.7
    cdef float one = 1.0
    cdef float eps = 1e-16
    cdef float e = -x
    if cap < e:  # std::min(-x, 88.7f), which keeps a NaN
        e = cap
    return one / (expf(e) + one + eps)


def xgboost_logit_base(float base_score) -> float:
    """XGBoost's base_score (a probability) as its float32 margin: -logf(1.0f / p - 1.0f)."""
    cdef float one = 1.0
    if not (0.0 < base_score < 1.0):
        raise ValueError(f"base_score {base_score} must lie in (0, 1) for a logistic objective")
    return -logf(one / base_score - one)


cdef int64_t _in_range(object value, int64_t bound, str what) except -1:
    cdef int64_t i = value
    if i < 0 or i >= bound:
        raise ValueError(f"{what} {i} is out of range [0, {bound})")
    return i


cdef inline const double *_vector(const double[::1] x, Py_ssize_t width) except NULL:
    if x.shape[0] < width:
        raise ValueError(f"the decision vector has {x.shape[0]} values, the model reads {width}")
    return &x[0]


cdef inline const double *_context_input(Activation ctx, Py_ssize_t width) except NULL:
    """An Activation's numeric vector, read in place."""
    if ctx.width < width:
        raise ValueError(f"the decision context's numeric vector has {ctx.width} values, "
                         f"the model reads {width}")
    return ctx.vec


cdef inline int _check_rows(const double[:, ::1] rows, Py_ssize_t width) except -1:
    if rows.shape[1] < width:
        raise ValueError(f"the rows have {rows.shape[1]} values, the model reads {width}")
    return 0


cdef void *_alloc(size_t n) except NULL:
    cdef void *p = PyMem_Malloc(n if n else 1)
    if p == NULL:
        raise MemoryError()
    return p


cdef int _set_leaf(TreeEnsemble self, Py_ssize_t i, double value) except -1:
    self._nodes[i].right = <int32_t>(i + 1)
    if self._n_gather < 0:
        # Reading directly, a leaf reads x[0] with NaN sent left: v <= +inf holds and the
        # walk stays on the leaf; the sum reads its value from `_leaf_value`.
        self._nodes[i].threshold = INFINITY
        self._nodes[i].word = <uint32_t>1 << NODE_NAN_LEFT_SHIFT
    else:
        # Through the row buffer, a leaf reads its trailing -inf, and -inf <= value holds
        # for every finite value: the leaf keeps its value in its own threshold, so the sum
        # reads it from the node the walk just loaded instead of another array (one cache
        # miss less per tree).
        if not (-INFINITY < value < INFINITY):
            raise ValueError(f"leaf value {value} is not finite")
        self._nodes[i].threshold = value
        self._nodes[i].word = <uint32_t>(2 * self._n_gather)
    self._leaf_value[i] = value
    return 0


@cython.final
cdef class TreeEnsemble:
    """A tree ensemble bound to a decision vector: raw margin and probability per row.

    Built by `TreeModel.bind(layout)`: `feature_index[i]` is where the model's i-th
    feature sits in the decision vector, whose length must be at least `width`.
    `direct=True` makes splits read the vector itself instead of the row buffer (what
    models reading more than TREE_GATHER_MAX features do), and `ranked=False` keeps a
    model the ranked walk could take on the node walk; both exist for the tests and the
    benchmarks, which hold the walks equal and measure them side by side.
    """

    def __cinit__(self):
        self._nodes = NULL
        self._leaf_value = NULL
        self._roots = NULL
        self._chunk_depth = NULL
        self._special = NULL
        self._cat_bits = NULL
        self._gather = NULL
        self._rank_nodes = NULL
        self._rank_leaf = NULL
        self._rank_cuts = NULL

    def __dealloc__(self):
        PyMem_Free(self._nodes)
        PyMem_Free(self._leaf_value)
        PyMem_Free(self._roots)
        PyMem_Free(self._chunk_depth)
        PyMem_Free(self._special)
        PyMem_Free(self._cat_bits)
        PyMem_Free(self._gather)
        PyMem_Free(self._rank_nodes)
        PyMem_Free(self._rank_leaf)
        PyMem_Free(self._rank_cuts)

    def __init__(self, model, feature_index, Py_ssize_t width, *, bint direct=False,
                 bint ranked=True):
        cdef const int64_t[::1] offsets = np.ascontiguousarray(model.tree_offsets, np.int64)
        cdef const int32_t[::1] feature = np.ascontiguousarray(model.split_feature, np.int32)
        cdef const double[::1] threshold = np.ascontiguousarray(model.threshold, np.float64)
        cdef const int32_t[::1] left = np.ascontiguousarray(model.left_child, np.int32)
        cdef const int32_t[::1] right = np.ascontiguousarray(model.right_child, np.int32)
        cdef const uint8_t[::1] default_left = np.ascontiguousarray(model.default_left,
                                                                     np.uint8)
        cdef const uint8_t[::1] missing = np.ascontiguousarray(model.missing_type, np.uint8)
        cdef const uint8_t[::1] categorical = np.ascontiguousarray(model.categorical, np.uint8)
        cdef const double[::1] value = np.ascontiguousarray(model.leaf_value, np.float64)
        cdef const int64_t[::1] cat_offsets = np.ascontiguousarray(model.cat_offsets, np.int64)
        cdef const uint32_t[::1] cat_bits = np.ascontiguousarray(model.cat_bits, np.uint32)
        cdef const int64_t[::1] index = np.ascontiguousarray(feature_index, np.int64)
        cdef Py_ssize_t n_trees = offsets.shape[0] - 1
        cdef Py_ssize_t n_model_nodes = feature.shape[0]
        cdef Py_ssize_t n_features = len(model.feature_names)
        cdef Py_ssize_t t, i, k, base, size, head, tail, src, depth, start, pos
        cdef Py_ssize_t n_special = 0, n_gather
        cdef int64_t f, cat, slot
        cdef double thr
        cdef bint float32 = model.float32
        cdef bint nan_left, special
        cdef TreeNode *node
        cdef SpecialSplit *sp

        if self._nodes != NULL:
            raise RuntimeError("a TreeEnsemble is initialised once")
        if n_trees < 1:
            raise ValueError("the model has no trees")
        if index.shape[0] != n_features:
            raise ValueError(f"feature_index has {index.shape[0]} entries for "
                             f"{n_features} features")
        if width < 1 or width > NODE_INDEX_MASK + 1:
            raise ValueError(f"width {width} is out of range [1, {NODE_INDEX_MASK + 1}]")
        for i in range(n_features):
            _in_range(index[i], width, "feature_index")
        if not (threshold.shape[0] == left.shape[0] == right.shape[0] == default_left.shape[0]
                == missing.shape[0] == categorical.shape[0] == value.shape[0] == n_model_nodes):
                raise ValueError("the model's node arrays differ in length")
        if offsets[0] != 0 or offsets[n_trees] != n_model_nodes:
            raise ValueError("tree_offsets do not cover the node arrays")
        for t in range(n_trees):
            if offsets[t + 1] <= offsets[t]:
                raise ValueError(f"tree {t} has no nodes")
        if cat_offsets.shape[0] < 1 or cat_offsets[0] != 0 \
                or cat_offsets[cat_offsets.shape[0] - 1] != cat_bits.shape[0]:
            raise ValueError("cat_offsets do not cover cat_bits")
        for i in range(cat_offsets.shape[0] - 1):
            if cat_offsets[i + 1] < cat_offsets[i]:
                raise ValueError("cat_offsets decrease")

        self.model = model
        self.feature_index = tuple(int(v) for v in index)
        self._width = width
        self._n_trees = n_trees
        self._n_chunks = (n_trees + TREE_LANES - 1) // TREE_LANES
        self._float32 = float32
        self._divisor = float(model.divisor)
        self._sigmoid_scale = float(model.sigmoid_scale)
        if not self._divisor > 0.0:
            raise ValueError(f"divisor {self._divisor} must be positive")
        if model.link == "identity":
            self._link = LINK_IDENTITY
        elif model.link == "sigmoid":
            self._link = LINK_SIGMOID_FLOAT32 if float32 else LINK_SIGMOID
        else:
            raise ValueError(f"unknown link {model.link!r}")
        self._base_margin = float(model.base_margin)
        if float32:
            self._base_margin = <float>self._base_margin
        elif self._base_margin != 0.0:
            raise ValueError("a LightGBM model carries its init score in its first tree")

        # Which splits are special, and which vector entries the others read.
        slot_of = {}
        for i in range(n_model_nodes):
            if feature[i] < 0:
                continue
            f = index[_in_range(feature[i], n_features, "split feature")]
            if not float32 and (categorical[i] or missing[i] == 1):
                n_special += 1
            elif f not in slot_of:
                slot_of[f] = len(slot_of)
        n_gather = len(slot_of)
        if direct or n_gather > TREE_GATHER_MAX:
            n_gather = -1
        self._n_gather = n_gather
        self._n_special = n_special
        # Rounded up to RANK_GROUP entries, the padding repeating the first, so the ranked
        # walk's searches read whole groups without a bound check.
        k = (max(n_gather, 0) + RANK_GROUP - 1) // RANK_GROUP * RANK_GROUP
        self._gather = <int32_t *>_alloc(k * sizeof(int32_t))
        for f, slot in slot_of.items():
            if n_gather >= 0:
                self._gather[slot] = <int32_t>f
        for i in range(max(n_gather, 0), k):
            self._gather[i] = self._gather[0]

        # Node 0 is an empty tree (a leaf of value 0) that pads the last chunk.
        self._nodes = <TreeNode *>_alloc((1 + n_model_nodes) * sizeof(TreeNode))
        self._leaf_value = <double *>_alloc((1 + n_model_nodes) * sizeof(double))
        self._roots = <int32_t *>_alloc(self._n_chunks * TREE_LANES * sizeof(int32_t))
        self._chunk_depth = <int32_t *>_alloc(self._n_chunks * sizeof(int32_t))
        self._special = <SpecialSplit *>_alloc(n_special * sizeof(SpecialSplit))
        self._cat_bits = <uint32_t *>_alloc(cat_bits.shape[0] * sizeof(uint32_t))
        for i in range(cat_bits.shape[0]):
            self._cat_bits[i] = cat_bits[i]
        for i in range(self._n_chunks):
            self._chunk_depth[i] = 0
        for i in range(self._n_chunks * TREE_LANES):
            self._roots[i] = 0
        _set_leaf(self, 0, 0.0)

        # Breadth first per tree: queue[j] is the model node placed at slot start + j.
        queue_array = np.empty(int(np.max(np.diff(offsets))), dtype=np.int64)
        depth_array = np.empty_like(queue_array)
        cdef int64_t[::1] queue = queue_array
        cdef int64_t[::1] level = depth_array
        pos = 1
        n_special = 0
        for t in range(n_trees):
            base = offsets[t]
            size = offsets[t + 1] - base
            start = pos
            queue[0] = 0
            level[0] = 0
            head = 0
            tail = 1
            depth = 0
            while head < tail:
                src = base + queue[head]
                if feature[src] < 0:
                    _set_leaf(self, start + head, value[src])
                    depth = max(depth, level[head])
                    head += 1
                    continue
                if tail + 2 > size:
                    raise ValueError(f"tree {t}: a node is reached twice")
                queue[tail] = _in_range(left[src], size, f"tree {t}: child")
                queue[tail + 1] = _in_range(right[src], size, f"tree {t}: child")
                level[tail] = level[tail + 1] = level[head] + 1
                node = &self._nodes[start + head]
                node.right = <int32_t>(start + tail + 1)
                self._leaf_value[start + head] = 0.0
                tail += 2
                f = index[feature[src]]
                thr = threshold[src]
                if thr != thr:
                    raise ValueError(f"tree {t}: a threshold is NaN")
                special = not float32 and (categorical[src] or missing[src] == 1)
                if special:
                    sp = &self._special[n_special]
                    sp.feature = <int32_t>f
                    sp.threshold = thr
                    sp.default_left = default_left[src] != 0
                    sp.kind = SPLIT_ZERO_MISSING
                    sp.cat_begin = sp.cat_words = 0
                    if categorical[src]:
                        if not (0.0 <= thr < cat_offsets.shape[0] - 1 and thr == <int64_t>thr):
                            raise ValueError(f"tree {t}: categorical split names bitset {thr}, "
                                             f"not one of the {cat_offsets.shape[0] - 1}")
                        cat = <int64_t>thr
                        sp.kind = SPLIT_CATEGORICAL
                        sp.cat_begin = <int32_t>cat_offsets[cat]
                        sp.cat_words = <int32_t>(cat_offsets[cat + 1] - cat_offsets[cat])
                    node.word = NODE_SPECIAL
                    node.threshold = <double>n_special
                    n_special += 1
                    head += 1
                    continue
                if float32:
                    if thr == -INFINITY:
                        raise ValueError(f"tree {t}: a threshold is -inf")
                    node.threshold = _xgboost_threshold(<float>thr)
                    nan_left = default_left[src] != 0
                else:
                    node.threshold = _lightgbm_threshold(thr)
                    # missing_type NaN: the learned direction; None: NaN counts as 0.0.
                    nan_left = (default_left[src] != 0) if missing[src] == 2 else (0.0 <= thr)
                if n_gather < 0:
                    node.word = <uint32_t>f | (<uint32_t>nan_left << NODE_NAN_LEFT_SHIFT)
                else:
                    node.word = <uint32_t>(slot_of[f] + (0 if nan_left else n_gather))
                head += 1
            pos = start + tail
            self._roots[t] = <int32_t>start
            k = t // TREE_LANES
            self._chunk_depth[k] = max(self._chunk_depth[k], <int32_t>depth)
        self._n_nodes = pos
        if ranked:
            self._build_ranked()

    cdef int _build_ranked(self) except -1:
        """Lay the trees out for the ranked walk where the model allows it: read through
        the row buffer, no categorical or zero-as-missing split, no tree deeper than
        RANK_DEPTH_MAX, at most RANK_CUTS_MAX distinct thresholds a feature and
        RANK_CUTS_BUDGET cuts in all.

        The node layout stays as it is (`nodes_visited` and the other walks read it); the
        heaps are built from it, so both walks take every split the same way.
        """
        cdef Py_ssize_t k = self._n_gather, a, t, j, i, d, n, width, first, span
        cdef Py_ssize_t chunks = (self._n_trees + RANK_LANES - 1) // RANK_LANES
        cdef Py_ssize_t n_heap = chunks * RANK_LANES * RANK_STRIDE
        cdef int32_t depth = 0
        cdef uint32_t word, slot
        if k < 0 or self._n_special:
            return 0
        for i in range(self._n_chunks):
            depth = max(depth, self._chunk_depth[i])
        if depth > RANK_DEPTH_MAX:
            return 0
        cut_sets = [set() for _ in range(k)]
        for a in range(self._n_nodes):
            word = self._nodes[a].word
            if word != 2 * k:  # not a leaf
                cut_sets[word % k].add(self._nodes[a].threshold)
        cuts = [sorted(c) for c in cut_sets]
        # One padded length for all: a power of two above every feature's number of cuts,
        # so the search's last position still counts them all.
        width = 2
        while width <= max((len(c) for c in cuts), default=0):
            width *= 2
        n = (k + RANK_GROUP - 1) // RANK_GROUP * RANK_GROUP
        if width - 1 > RANK_CUTS_MAX or n * width > RANK_CUTS_BUDGET:
            return 0
        rank = [{v: r for r, v in enumerate(c)} for c in cuts]
        self._rank_cuts = <double *>_alloc(n * width * sizeof(double))
        for j in range(n):
            for i in range(width):
                self._rank_cuts[j * width + i] = (cuts[j][i] if j < k and i < len(cuts[j])
                                                  else INFINITY)

        # Padding trees are all zeros: a walk through them ends on a leaf of value 0.
        self._rank_nodes = <uint32_t *>_alloc(n_heap * sizeof(uint32_t))
        self._rank_leaf = <double *>_alloc(n_heap * sizeof(double))
        memset(self._rank_nodes, 0, n_heap * sizeof(uint32_t))
        memset(self._rank_leaf, 0, n_heap * sizeof(double))
        first = 1 << depth
        for t in range(self._n_trees):
            stack = [(self._roots[t], 1, 0)]  # (node, heap index, its depth)
            while stack:
                a, i, d = stack.pop()
                word = self._nodes[a].word
                if word == 2 * k:
                    # A leaf above the deepest level fills every leaf slot below it.
                    span = 1 << (depth - d)
                    for j in range(i * span, (i + 1) * span):
                        self._rank_leaf[t * RANK_STRIDE + j - first] = self._leaf_value[a]
                    continue
                # Row slot j (NaN left) or k + j (NaN right) -> rank slot j or n + j.
                slot = word if word < k else n + word - k
                self._rank_nodes[t * RANK_STRIDE + i] = (
                    slot | (<uint32_t>rank[word % k][self._nodes[a].threshold] << 16))
                stack.append((self._nodes[a].right - 1, 2 * i, d + 1))
                stack.append((self._nodes[a].right, 2 * i + 1, d + 1))
        self._rank_features = n
        self._rank_chunks = chunks
        self._rank_half = <int32_t>(width // 2)
        self._rank_depth = depth
        return 0

    # -- the C entry points ----------------------------------------------------------

    cdef double margin(self, const double *x) noexcept nogil:
        cdef double row[2 * TREE_GATHER_MAX + 1]
        cdef uint32_t ranks[2 * TREE_GATHER_MAX]
        if self._rank_nodes != NULL:
            _fill_ranks(self, x, ranks)
            if self._float32:
                return _sum_ranked(self, ranks, True)
            return _sum_ranked(self, ranks, False)
        if self._n_gather < 0:
            if self._float32:
                return _sum_leaves(self, x, x, False, True, True)
            if self._n_special:
                return _sum_leaves(self, x, x, True, False, True)
            return _sum_leaves(self, x, x, False, False, True)
        _fill_row(self._gather, self._n_gather, x, row)
        if self._float32:
            return _sum_leaves(self, x, row, False, True, False)
        if self._n_special:
            return _sum_leaves(self, x, row, True, False, False)
        return _sum_leaves(self, x, row, False, False, False)

    cdef double probability(self, double margin) noexcept nogil:
        if self._link == LINK_SIGMOID_FLOAT32:
            return _xgboost_sigmoid(<float>margin)
        # LightGBM's random forest: raw_score is the sum, its output the average.
        margin = margin / self._divisor
        if self._link == LINK_SIGMOID:
            return 1.0 / (1.0 + exp(-self._sigmoid_scale * margin))
        return margin

    # -- Python API --------------------------------------------------------------------

    @property
    def width(self) -> int:
        """The least length of a decision vector: one past the highest index read."""
        return self._width

    @property
    def n_trees(self) -> int:
        return self._n_trees

    @property
    def n_nodes(self) -> int:
        """Nodes laid out: splits and leaves reachable from the roots."""
        return self._n_nodes - 1

    @property
    def feature_names(self) -> tuple:
        return self.model.feature_names

    @property
    def walks_ranked(self) -> bool:
        """True when the walk compares the ranks of values among each feature's thresholds
        (4-byte nodes in complete heaps), not the values themselves."""
        return self._rank_nodes != NULL

    @property
    def reads_directly(self) -> bool:
        """True when splits read the decision vector itself, not the row buffer."""
        return self._n_gather < 0

    cdef double _margin_of(self, object x) except? -1.0:
        """The raw margin of a decision vector or an Activation: the input resolved once
        (the memoryview held while the walk reads it), the walk without the GIL."""
        cdef const double[::1] hold
        cdef const double *p
        cdef double m
        if type(x) is Activation:
            p = _context_input(<Activation>x, self._width)
        else:
            if x is None:
                raise TypeError("the decision vector must not be None")
            hold = x
            p = _vector(hold, self._width)
        with nogil:
            m = self.margin(p)
        return m

    def margin_of(self, x) -> float:
        """The raw margin of one decision vector (float64, length >= width), or of an
        Activation's numeric vector (read in place)."""
        return self._margin_of(x)

    def probability_of(self, x) -> float:
        """The probability (the link applied to the margin) of one decision vector, or of
        an Activation's numeric vector (read in place, no copy)."""
        return self.probability(self._margin_of(x))

    def score(self, x) -> tuple:
        """(raw margin, probability) of one decision vector or Activation."""
        cdef double m = self._margin_of(x)
        return m, self.probability(m)

    def margins(self, const double[:, ::1] rows not None):
        """Raw margins of a C-contiguous float64 matrix, one decision vector per row."""
        _check_rows(rows, self._width)
        cdef Py_ssize_t i, n = rows.shape[0]
        out = np.empty(n, dtype=np.float64)
        cdef double[::1] o = out
        if n:
            with nogil:
                for i in range(n):
                    o[i] = self.margin(&rows[i, 0])
        return out

    def probabilities(self, const double[:, ::1] rows not None):
        """Probabilities of a C-contiguous float64 matrix, one decision vector per row."""
        out = self.margins(rows)
        cdef double[::1] o = out
        cdef Py_ssize_t i
        with nogil:
            for i in range(o.shape[0]):
                o[i] = self.probability(o[i])
        return out

    def nodes_visited(self, const double[:, ::1] rows not None):
        """Splits each row passes through on its way to the leaves, over all trees."""
        _check_rows(rows, self._width)
        cdef Py_ssize_t i, t, n = rows.shape[0]
        cdef int32_t node, nxt
        cdef const double *x
        cdef const double *r
        cdef int64_t count
        cdef double row[2 * TREE_GATHER_MAX + 1]
        out = np.empty(n, dtype=np.int64)
        cdef int64_t[::1] o = out
        with nogil:
            for i in range(n):
                x = &rows[i, 0]
                r = x
                if self._n_gather >= 0:
                    _fill_row(self._gather, self._n_gather, x, row)
                    r = row
                count = 0
                for t in range(self._n_trees):
                    node = self._roots[t]
                    while True:
                        nxt = _step(self._nodes, self._special, self._cat_bits, x, r, node,
                                    True, self._n_gather < 0)
                        if nxt == node:
                            break
                        node = nxt
                        count += 1
                o[i] = count
        return out
