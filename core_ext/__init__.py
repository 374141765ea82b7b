"""The compiled decision core of payauth, and the compiled helpers a worker calls for every
request (the PAN's keyed hash, a Redis command's RESP encoding).

Only the names below are public; the server imports them from here, never
from the extension modules themselves.
"""

from payauth.core.cel_compiler import (
    CelCompileError,
    CelCompiler,
    ProgramBuilder,
    compile_expression,
    message_layout,
)
from payauth.core.conditions import ConditionSet
from payauth.core.keyed_hash import KeyedHash
from payauth.core.models import (
    TreeModel,
    load_lightgbm_json,
    load_lightgbm_text,
    load_model,
    load_xgboost_json,
)
from payauth.core.policy import (
    CompiledPolicy,
    DecisionContextBuilder,
    PolicyCompileError,
    PolicyResult,
    compile_policy,
)
from payauth.core.resp import pack_command
from payauth.core.trees import TreeEnsemble

__all__ = [
    "CelCompileError",
    "CelCompiler",
    "ConditionSet",
    "CompiledPolicy",
    "DecisionContextBuilder",
    "KeyedHash",
    "PolicyCompileError",
    "PolicyResult",
    "ProgramBuilder",
    "TreeEnsemble",
    "TreeModel",
    "compile_expression",
    "compile_policy",
    "load_lightgbm_json",
    "load_lightgbm_text",
    "load_model",
    "load_xgboost_json",
    "message_layout",
    "pack_command",
]
