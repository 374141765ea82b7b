# A tree ensemble (LightGBM or XGBoost) as other modules of the core cimport it:
# `from payauth.core.trees cimport TreeEnsemble`, then `ensemble.margin(x)` and
# `ensemble.probability(m)` without the GIL, x holding at least `width` doubles.

cimport cython
from libc.stdint cimport int32_t, uint32_t

cdef enum:
    # Trees walked side by side: independent walks hide each other's load latency (12
    # beat 8 and 16 on the benchmark model: 1.49 against 1.60 and 1.78 µs per row).
    TREE_LANES = 12
    # Distinct features a model may read through the row buffer on the C stack
    # (2 * 256 + 1 doubles); a wider model reads the decision vector directly.
    TREE_GATHER_MAX = 256

cdef enum:
    # The ranked walk (see trees.pyx): trees of depth up to RANK_DEPTH_MAX, each in a
    # complete binary heap of RANK_STRIDE 4-byte entries (the root at 1).
    RANK_DEPTH_MAX = 6
    RANK_STRIDE = 64
    RANK_NAN_RIGHT = 0xFFFF    # NaN's rank where it goes right: above every threshold's
    RANK_CUTS_MAX = 0xFFFE     # distinct thresholds one feature may have
    RANK_CUTS_BUDGET = 131072  # cuts of all features together (1 MiB of doubles)
    # Trees walked side by side: 10 keep every walk in a register (12 spill one; per row
    # on the benchmark model 10 lanes took 0.65-0.67 of the node walk's time, 12 took 0.83).
    RANK_LANES = 10
    RANK_GROUP = 8             # features ranked side by side

cdef enum:
    NODE_INDEX_MASK = 0x3FFFFFFF  # word bits 0-29: where the split reads its value
    NODE_SPECIAL = 0x40000000     # bit 30: categorical or zero-as-missing, see SpecialSplit
    NODE_NAN_LEFT_SHIFT = 31      # bit 31 (direct reads only): NaN goes to the left child

cdef enum:
    SPLIT_CATEGORICAL = 0
    SPLIT_ZERO_MISSING = 1

cdef enum:
    LINK_IDENTITY = 0
    LINK_SIGMOID = 1          # LightGBM: 1 / (1 + exp(-scale * margin)) in double
    LINK_SIGMOID_FLOAT32 = 2  # XGBoost: its own float32 sigmoid

# 16 bytes, four to a cache line. The two children of a split are adjacent, so a step
# is `right - (v <= threshold)`: no branch on the outcome. A leaf has right = itself + 1
# and a test that always holds, so it goes "left" to itself and a walk that got there
# stays: through the row buffer it reads -inf and its threshold is its value; reading the
# vector directly, its threshold is +inf and its value is in `_leaf_value`.
ctypedef struct TreeNode:
    double threshold  # go left when v <= threshold; leaf: see above; special: its SpecialSplit
    uint32_t word     # where v is read | NODE_SPECIAL | (direct reads) NaN-left bit
    int32_t right     # the right child (the left one is right - 1); a leaf: itself + 1

ctypedef struct SpecialSplit:
    double threshold      # SPLIT_ZERO_MISSING: go left when x <= threshold
    int32_t feature       # index in the decision vector, read as it is (NaN included)
    int32_t kind          # SPLIT_CATEGORICAL or SPLIT_ZERO_MISSING
    int32_t default_left  # SPLIT_ZERO_MISSING: where NaN and zero go
    int32_t cat_begin     # SPLIT_CATEGORICAL: first 32-bit word of the left-going bitset
    int32_t cat_words     # SPLIT_CATEGORICAL: its length in words


@cython.final
cdef class TreeEnsemble:
    cdef TreeNode *_nodes
    cdef double *_leaf_value      # parallel to _nodes; meaningful on leaves only
    cdef int32_t *_roots          # TREE_LANES roots per chunk, padded with the empty tree 0
    cdef int32_t *_chunk_depth    # steps that bring every lane of a chunk to its leaf
    cdef SpecialSplit *_special
    cdef uint32_t *_cat_bits
    cdef int32_t *_gather         # decision vector index of each distinct feature read
    cdef Py_ssize_t _n_gather     # their number, or -1: splits read the vector directly
    cdef uint32_t *_rank_nodes    # the ranked walk's heaps (rank << 16 | rank slot), or NULL
    cdef double *_rank_leaf       # RANK_STRIDE leaves per tree, heap order
    cdef double *_rank_cuts       # per read feature, _rank_half * 2 of them: its distinct
                                  # thresholds, ascending, padded with +inf
    cdef Py_ssize_t _rank_features  # read features rounded up to RANK_GROUP (NaN-right
                                    # slots start there)
    cdef Py_ssize_t _rank_chunks  # groups of RANK_LANES trees, the last padded
    cdef int32_t _rank_half       # half the cuts per feature: the search's first step
    cdef int32_t _rank_depth      # steps of every ranked walk: the deepest tree's depth
    cdef Py_ssize_t _n_nodes
    cdef Py_ssize_t _n_trees
    cdef Py_ssize_t _n_chunks
    cdef Py_ssize_t _n_special    # categorical or zero-as-missing splits
    cdef Py_ssize_t _width
    cdef bint _float32            # XGBoost: float32 sum of float32 leaves, from base margin
    cdef double _base_margin
    cdef double _divisor          # LightGBM average_output: the output is margin / divisor
    cdef int _link
    cdef double _sigmoid_scale
    cdef readonly object model
    cdef readonly tuple feature_index

    # The raw margin of one decision vector x (at least `width` doubles).
    cdef double margin(self, const double *x) noexcept nogil
    # The model's output transform (link) applied to a raw margin.
    cdef double probability(self, double margin) noexcept nogil
    # The raw margin of a decision vector or an Activation (what margin_of and its twins
    # share).
    cdef double _margin_of(self, object x) except? -1.0
    # The ranked walk's heaps and cuts, built from the node layout where the model allows.
    cdef int _build_ranked(self) except -1
