"""Type stubs of payauth.core.conditions (boolean condition sets)."""

from payauth.core.cel_eval import Activation, Program

MATCH: int
NO_MATCH: int
ERROR: int

class ConditionSet:
    program: Program
    n_conditions: int
    def __init__(self, program: Program) -> None: ...
    def match(self, inputs: Activation) -> bytes: ...
