# distutils: language = c++
"""A set of boolean conditions evaluated together in C, GIL released.

Loyalty programs hold many independent conditions (earning rules, challenges) over one
input vector, and need to know which hold. `ConditionSet.match` runs every entry of one
compiled `cel_eval.Program` and returns one status byte per condition: 1 when it holds,
0 when it does not, 2 when it did not evaluate to a bool (an error: never a match).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport int32_t, uint8_t

from payauth.core.cel_eval cimport K_BOOL, Activation, CelValue, Program, Scratch, cel_run

MATCH = 1
NO_MATCH = 0
ERROR = 2


cdef class ConditionSet:
    """Every entry of `program` as one condition; evaluate from one thread at a time."""

    cdef readonly Program program
    cdef Scratch _scratch
    cdef readonly int32_t n_conditions

    def __cinit__(self, Program program):
        self.program = program
        self._scratch = Scratch(program)
        self.n_conditions = program.n_entries

    def match(self, Activation inputs) -> bytes:
        """One status byte per condition, in entry order."""
        cdef bytes out = PyBytes_FromStringAndSize(NULL, self.n_conditions)
        cdef uint8_t *status = <uint8_t *>PyBytes_AS_STRING(out)
        cdef Scratch scratch = self._scratch
        cdef Program program = self.program
        cdef int32_t i, start, end, result
        cdef const CelValue *v
        scratch.load(inputs)
        with nogil:
            for i in range(self.n_conditions):
                start = program._entries[3 * i]
                end = program._entries[3 * i + 1]
                result = program._entries[3 * i + 2]
                scratch.arena.vtop = 0
                scratch.arena.btop = 0
                cel_run(&program.data, scratch.regs, &scratch.arena, start, end)
                v = &scratch.regs[result]
                if v.kind != K_BOOL:
                    status[i] = 2
                elif v.v.i:
                    status[i] = 1
                else:
                    status[i] = 0
        return out
