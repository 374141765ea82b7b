# distutils: language = c++
"""The policy loop of the decision core: every rule of a compiled policy, in C, GIL released.

A policy's rule conditions share one `cel_eval.Program` (one register file, one constant
pool); `PolicyCore.run` walks the rule table, runs each condition with `cel_run`, records
each rule's status in a byte array and folds matches into a decision and a score delta. It
calls no allocator and touches no Python object; `payauth.core.policy` builds the Python
result from the status bytes afterwards, only as far as a caller reads it.
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.ref cimport Py_INCREF, Py_XDECREF, PyObject
from libc.stdint cimport int32_t, uint8_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy, memset

from payauth.core.cel_eval cimport (
    K_BOOL,
    K_DOUBLE,
    Activation,
    CelValue,
    FillPlan,
    ProgramData,
    Scratch,
    cel_run,
)
from payauth.core.trees cimport TreeEnsemble


cdef inline int severity(int action) noexcept nogil:
    if action == ACTION_DECLINE:
        return 3
    if action == ACTION_STEP_UP:
        return 2
    if action == ACTION_APPROVE:
        return 1
    return 0


cdef int32_t run_rules(PolicyCore core, Scratch scratch, uint8_t *status,
                       double *score) noexcept nogil:
    """Evaluate the rules; the index of the deciding rule (-1: none, -2: the decline score
    threshold, -3: the step-up score threshold). `score` receives the final score."""
    cdef const ProgramData *prog = &core.program.data
    cdef CelValue *regs = scratch.regs
    cdef int32_t i, decided = -1
    cdef int best = 0, sev
    cdef double delta = 0.0, base = 0.0
    cdef const CelValue *v
    cdef RuleRow *row
    if core.score_slot >= 0 and regs[core.score_slot].kind == K_DOUBLE:
        base = regs[core.score_slot].v.d
    for i in range(core.n_rules):
        row = &core.rows[i]
        if core.first_match and decided >= 0 and not row.shadow:
            status[i] = STATUS_SKIPPED
            continue
        # Each condition is a bool: nothing it made in the arena outlives it.
        scratch.arena.vtop = 0
        scratch.arena.btop = 0
        cel_run(prog, regs, &scratch.arena, row.start, row.end)
        v = &regs[row.result]
        if v.kind != K_BOOL:
            status[i] = STATUS_ERROR
            continue
        if v.v.i == 0:
            status[i] = STATUS_NO_MATCH
            continue
        status[i] = STATUS_MATCH
        if row.shadow:
            continue
        if row.action == ACTION_ADD_TO_SCORE:
            delta += row.score_delta
        elif row.action != ACTION_TAG:
            sev = severity(row.action)
            if core.first_match:
                if decided < 0:
                    decided = i
            elif sev > best:
                best = sev
                decided = i
    base += delta
    if base < 0.0 or base != base:
        base = 0.0
    elif base > 1.0:
        base = 1.0
    score[0] = base
    if decided < 0:
        if core.has_decline_threshold and base >= core.decline_threshold:
            decided = -2
        elif core.has_step_up_threshold and base >= core.step_up_threshold:
            decided = -3
    return decided


cdef class PolicyCore:
    """The rule table of one compiled policy, and its scratch space."""

    def __cinit__(self, Program program, rows, bint first_match, int score_slot,
                  step_up_threshold=None, decline_threshold=None):
        cdef Py_ssize_t i
        self.program = program
        self.scratch = Scratch(program)
        self.first_match = first_match
        self.score_slot = score_slot
        self.n_rules = len(rows)
        self.rows = <RuleRow *>calloc(self.n_rules + 1, sizeof(RuleRow))
        self._status = <uint8_t *>calloc(self.n_rules + 1, sizeof(uint8_t))
        if self.rows == NULL or self._status == NULL:
            raise MemoryError()
        self._answers = None
        for i, (entry, action, shadow, score_delta) in enumerate(rows):
            start, end, result = program.entry(entry)
            self.rows[i].start = start
            self.rows[i].end = end
            self.rows[i].result = result
            self.rows[i].action = action
            self.rows[i].shadow = 1 if shadow else 0
            self.rows[i].score_delta = score_delta
        self.has_step_up_threshold = step_up_threshold is not None
        self.step_up_threshold = step_up_threshold if step_up_threshold is not None else 0.0
        self.has_decline_threshold = decline_threshold is not None
        self.decline_threshold = decline_threshold if decline_threshold is not None else 0.0

    def __dealloc__(self):
        free(self.rows)
        free(self._status)

    cdef int32_t _evaluate(self, Activation ctx, TreeEnsemble model, uint8_t *status,
                           double *score, PyObject **status_copy) except -9:
        """Optionally score `model` on ctx's numeric vector into the `score` slot (clamped to
        [0, 1]), then run the rules over ctx; statuses go to `status` (NULL: this core's own
        buffer, copied into `status_copy` when that is not NULL)."""
        cdef Scratch scratch = self.scratch
        cdef int32_t decided
        cdef double p
        cdef bint own = status == NULL
        cdef CelValue *slot
        cdef object copy
        if ctx is None:
            raise TypeError("the decision context must not be None")
        if ctx.n_slots != self.program.data.n_inputs:
            raise ValueError(f"the program reads {self.program.data.n_inputs} inputs, "
                             f"the activation has {ctx.n_slots}")
        if model is not None:
            if ctx.width < model._width:
                raise ValueError(f"the decision context's numeric vector has {ctx.width} "
                                 f"values, the model reads {model._width}")
            if self.score_slot < 0:
                raise ValueError("the policy has no score slot to receive the model's score")
        if scratch.busy:
            # Another thread is inside this policy (the GIL is released while it runs).
            scratch = Scratch(self.program)
            if own:
                status = <uint8_t *>calloc(self.n_rules + 1, sizeof(uint8_t))
                if status == NULL:
                    raise MemoryError()
        elif own:
            status = self._status
        scratch.busy = True
        try:
            with nogil:
                if model is not None:
                    # A regression or raw-margin model may leave 0..1; the score never does.
                    p = model.probability(model.margin(ctx.vec))
                    if p < 0.0:
                        p = 0.0
                    elif p > 1.0:
                        p = 1.0
                    slot = &ctx.slots[self.score_slot]
                    memset(slot, 0, sizeof(CelValue))
                    slot.kind = K_DOUBLE
                    slot.v.d = p
                    ctx.vec[self.score_slot] = p
                if ctx.n_slots:
                    memcpy(scratch.regs, ctx.slots, sizeof(CelValue) * ctx.n_slots)
                scratch.arena.vtop = 0
                scratch.arena.btop = 0
                decided = run_rules(self, scratch, status, score)
            if status_copy != NULL:
                copy = PyBytes_FromStringAndSize(<char *>status, self.n_rules)
                Py_INCREF(copy)
                status_copy[0] = <PyObject *>copy
        finally:
            scratch.busy = False
            if own and status != self._status:
                free(status)
        return decided

    def set_answers(self, tuple answers not None):
        """What `decide` returns for each outcome: answers[decided + 3], decided being the
        deciding rule's index, -1 (none), -2 (decline threshold) or -3 (step-up
        threshold)."""
        if len(answers) != self.n_rules + 3:
            raise ValueError(f"need {self.n_rules + 3} answers")
        self._answers = answers

    def decide(self, Activation ctx, TreeEnsemble model=None, FillPlan plan=None,
               record=None):
        """Score `model` (if given) on ctx's numeric vector into its `score` slot, run the
        rules, and return the answer set for the outcome (`set_answers`), or the deciding
        index when none are set. Allocates nothing.

        With `plan` (a FillPlan with sources), ctx is first filled from `record` as
        `ctx.fill_from(plan, record)` would: the whole decision, from the request's own
        record to the answer, is one call into the core."""
        cdef double score = 0.0
        cdef int32_t decided
        if plan is not None:
            if ctx is None:
                raise TypeError("the decision context must not be None")
            ctx._gather(plan, record)
        decided = self._evaluate(ctx, model, NULL, &score, NULL)
        if self._answers is None:
            return decided
        return self._answers[decided + 3]

    def evaluate(self, Activation ctx, TreeEnsemble model=None):
        """Like `decide`: (deciding index, final score, status bytes of every rule)."""
        cdef double score = 0.0
        cdef PyObject *raw = NULL
        cdef int32_t decided
        cdef object status
        try:
            decided = self._evaluate(ctx, model, NULL, &score, &raw)
            status = <object>raw
        finally:
            Py_XDECREF(raw)
        return decided, score, status

    def run(self, Activation inputs, bytearray status not None):
        """Evaluate over an Activation: (deciding rule index or -1/-2/-3, final score). The
        status of rule i is written to status[i]."""
        cdef double score = 0.0
        cdef int32_t decided
        if len(status) < self.n_rules:
            raise ValueError("status buffer too short")
        decided = self._evaluate(inputs, None, <uint8_t *><char *>status, &score, NULL)
        return decided, score
