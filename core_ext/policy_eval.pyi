"""Type stubs of payauth.core.policy_eval (the policy rule loop)."""

from collections.abc import Sequence
from typing import Any

from payauth.core.cel_eval import Activation, FillPlan, Program
from payauth.core.trees import TreeEnsemble

class PolicyCore:
    n_rules: int
    first_match: bool
    program: Program
    def __init__(self, program: Program, rows: Sequence[tuple[int, int, bool, float]],
                 first_match: bool, score_slot: int, step_up_threshold: float | None = ...,
                 decline_threshold: float | None = ...) -> None: ...
    def run(self, inputs: Activation, status: bytearray) -> tuple[int, float]: ...
    def set_answers(self, answers: tuple[Any, ...]) -> None: ...
    def decide(self, ctx: Activation, model: TreeEnsemble | None = ...,
               plan: FillPlan | None = ..., record: Any = ...) -> Any: ...
    def evaluate(self, ctx: Activation,
                 model: TreeEnsemble | None = ...) -> tuple[int, float, bytes]: ...
