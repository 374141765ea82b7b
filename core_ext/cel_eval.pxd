# The CEL evaluator's data as other modules of the core (policy_eval) cimport it: the tagged
# value, the flat instruction, the compiled program and the per-evaluation scratch space.

cimport cython
from cpython.ref cimport PyObject
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint64_t


cdef enum CelKind:
    K_ERROR = 0
    K_NULL = 1
    K_BOOL = 2
    K_INT = 3
    K_UINT = 4
    K_DOUBLE = 5
    K_STRING = 6
    K_BYTES = 7
    K_TIMESTAMP = 8
    K_DURATION = 9
    K_LIST = 10
    K_MAP = 11
    K_TYPE = 12

cdef enum:
    # A string whose pointer is the interned copy: two interned strings are equal exactly when
    # their pointers are, so equality against policy constants compares integers.
    F_INTERNED = 1


ctypedef union CelPayload:
    int64_t i
    uint64_t u
    double d
    const char *s
    const void *p


# One CEL value in 16 bytes. `n` is the byte length of a string or bytes, the element count of
# a list, the entry count of a map (its items hold key, value, key, value...), the nanoseconds
# of a timestamp or duration (whose `v.i` is the floor of its seconds), a type's code, or an
# error's code.
ctypedef struct CelValue:
    uint8_t kind
    uint8_t flags
    uint16_t spare
    int32_t n
    CelPayload v


# One instruction of the register machine: `dst` receives the result of `op` over registers
# `a` and `b`; `c` is a jump target, a regex or zone index, or a third register.
ctypedef struct Instr:
    int32_t op
    int32_t dst
    int32_t a
    int32_t b
    int32_t c


# UTC offsets of a time zone, precomputed at compile time: offsets[i] applies from starts[i]
# (UTC seconds) up to the next start; times before starts[0] or from `limit` on are outside the
# table. A fixed offset (`is_fixed`) applies everywhere, with nanoseconds.
ctypedef struct ZoneTable:
    const int64_t *starts
    const int32_t *offsets
    int32_t count
    int32_t is_fixed
    int64_t limit
    int64_t fixed_seconds
    int64_t fixed_nanos


ctypedef struct ProgramData:
    const Instr *code
    int32_t n_code
    int32_t n_inputs
    int32_t n_regs
    void **regexes
    const ZoneTable *zones


# Bump allocator for values made during one evaluation (concatenations, list and map
# literals over inputs, conversions to string); reset, never freed, between evaluations.
ctypedef struct Arena:
    CelValue *vals
    int64_t vcap
    int64_t vtop
    char *bytes
    int64_t bcap
    int64_t btop


cdef void cel_run(const ProgramData *prog, CelValue *regs, Arena *arena,
                  int32_t start, int32_t end) noexcept nogil


cdef class Program:
    cdef ProgramData data
    cdef Instr *_code
    cdef CelValue *_init
    cdef void **_regexes
    cdef int32_t _n_regexes
    cdef ZoneTable *_zones
    cdef int32_t _n_zones
    cdef int32_t *_entries
    cdef readonly int32_t n_entries
    cdef list _keep


cdef class Scratch:
    cdef CelValue *regs
    cdef int32_t n_regs
    cdef Arena arena
    cdef readonly Program program
    cdef bint busy


# Final: the gather calls its name lookup directly.
@cython.final
cdef class FillPlan:
    cdef int32_t *_target
    cdef uint8_t *_kind
    cdef readonly Py_ssize_t n
    cdef readonly Py_ssize_t n_slots
    cdef readonly Py_ssize_t width
    cdef readonly tuple targets
    cdef readonly tuple kinds
    # Gathering from a record (`sources`): each value's container (a group index, -1 for
    # the record itself) and key; each group's parent (-1: the record) and key.
    cdef int32_t *_source
    cdef int32_t *_group_parent
    cdef readonly Py_ssize_t n_groups
    cdef tuple _group_keys
    cdef tuple _value_keys
    cdef readonly tuple sources
    # Where each key was last found in its dict (an entry index for PyDict_Next), per value
    # and per group: -1 not known yet, -2 not to be looked for (the dict's key is another
    # object than the plan's); and how often a known place has missed.
    cdef Py_ssize_t *_value_at
    cdef Py_ssize_t *_group_at
    cdef Py_ssize_t _misses
    # Per string or name value, the last string object stored (a reference held, so its
    # address cannot be another string's) and its interned copy (NULL: none), valid while
    # no constant has been interned since (`_interned_count`).
    cdef PyObject **_str_seen
    cdef PyObject **_str_canonical
    cdef Py_ssize_t _interned_count

    cdef void _forget_strings(self) noexcept
    # Key paths read once for several values: per value, -1 (its own read), k >= 0 (the
    # first reader, keeping what it read in shared entry k) or -2 - k (taking entry k).
    cdef int32_t *_share
    cdef readonly Py_ssize_t n_shared
    # Per value, the tuple of names of a "name" value (indexed by its number), else None.
    cdef tuple _names
    cdef readonly object names

    cdef _set_sources(self, sources)
    cdef _set_names(self, names)
    cdef object _name(self, Py_ssize_t i, object number)


# Final: the fill's per-value helpers are called directly, not through a vtable.
@cython.final
cdef class Activation:
    cdef CelValue *slots
    cdef CelValue *_zero
    cdef readonly int32_t n_slots
    cdef list _keep
    cdef list _hints
    # The numeric vector a model reads: slot numbers, then model-only features.
    cdef double *vec
    cdef double *_zero_vec
    cdef readonly Py_ssize_t width

    cdef int _put_string(self, Py_ssize_t slot, object value) except -1
    cdef int _put_string_seen(self, Py_ssize_t slot, object value, FillPlan plan,
                              Py_ssize_t i) except -1
    cdef int _store_string(self, Py_ssize_t slot, object value, PyObject *canonical) except -1
    cdef int _put(self, Py_ssize_t slot, int kind, object v) except -1
    # Fill from a record by the plan's key paths (Activation.fill_from).
    cdef int _gather(self, FillPlan plan, object record) except -1
