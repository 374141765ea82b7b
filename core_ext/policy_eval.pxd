# A compiled policy's rule table as the core evaluates it.

from cpython.ref cimport PyObject
from libc.stdint cimport int32_t, uint8_t

from payauth.core.cel_eval cimport Activation, Program, Scratch
from payauth.core.trees cimport TreeEnsemble


cdef enum RuleAction:
    ACTION_DECLINE = 1
    ACTION_STEP_UP = 2
    ACTION_APPROVE = 3
    ACTION_ADD_TO_SCORE = 4
    ACTION_TAG = 5

cdef enum RuleStatus:
    # The rule was not evaluated: FIRST_MATCH had already decided by an earlier active rule.
    STATUS_SKIPPED = 0
    STATUS_NO_MATCH = 1
    STATUS_MATCH = 2
    # The condition evaluated to an error (or, through dyn, to a non-bool): not matched.
    STATUS_ERROR = 3


# One rule, in evaluation order (priority, then list order): its condition is the program's
# instructions [start, end), leaving its value in register `result`.
ctypedef struct RuleRow:
    int32_t start
    int32_t end
    int32_t result
    int32_t action
    int32_t shadow
    double score_delta


cdef class PolicyCore:
    cdef RuleRow *rows
    cdef readonly int32_t n_rules
    cdef readonly bint first_match
    cdef readonly Program program
    cdef Scratch scratch
    cdef int32_t score_slot
    cdef bint has_step_up_threshold
    cdef double step_up_threshold
    cdef bint has_decline_threshold
    cdef double decline_threshold
    # The rules' statuses of the last evaluation through `scratch`.
    cdef uint8_t *_status
    # What `decide` returns, by deciding rule index + 3 (-3, -2, -1, 0, 1 ...).
    cdef tuple _answers

    cdef int32_t _evaluate(self, Activation ctx, TreeEnsemble model, uint8_t *status,
                           double *score, PyObject **status_copy) except -9
