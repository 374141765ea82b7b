"""The issuer's policy and scoring model as this worker runs them, and how they are
swapped when the issuer loads new ones.

The active policy and model live in Redis (`keys.ACTIVE_POLICY`, `keys.ACTIVE_MODEL`);
each worker compiles them once into a `DecisionCore` and replaces its reference
whole when they change, so a request sees either the old pair or the new one,
never a mix. Changes are announced on a pub/sub channel; a worker reloads on
every announcement and whenever its subscription (re)starts, so an
announcement missed during a reconnect costs nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from payauth.core import CompiledPolicy, TreeEnsemble, compile_policy
from payauth.core.models import load_lightgbm_json, load_lightgbm_text, load_xgboost_json
from payauth.server import keys
from payauth.server.decision_context import (
    MODEL_LAYOUT,
    DecisionContextFiller,
    model_layout,
    model_width,
)
from payauth.server.store import AccountRecord, CardRecord, Store
from payauth.v1 import authorizer_pb2, policy_pb2

log = logging.getLogger(__name__)

LOADERS = {
    policy_pb2.MODEL_FORMAT_LIGHTGBM_TEXT: load_lightgbm_text,
    policy_pb2.MODEL_FORMAT_LIGHTGBM_JSON: load_lightgbm_json,
    policy_pb2.MODEL_FORMAT_XGBOOST_JSON: load_xgboost_json,
}


def build_model(request: policy_pb2.LoadModelRequest) -> TreeEnsemble:
    """Parse a model dump and bind its named features to the decision context; raise
    ValueError saying what is wrong."""
    loader = LOADERS.get(request.format)
    if loader is None:
        raise ValueError("format must be LIGHTGBM_TEXT, LIGHTGBM_JSON or XGBOOST_JSON")
    model = loader(request.model)
    if request.feature_names and tuple(request.feature_names) != model.feature_names:
        raise ValueError(f"feature_names {list(request.feature_names)} differ from the "
                         f"model's own {list(model.feature_names)}")
    unknown = [name for name in model.feature_names if name not in MODEL_LAYOUT]
    if unknown:
        raise ValueError(f"features {unknown} are not decision-context fields; a model may "
                         f"read {sorted(MODEL_LAYOUT)}")
    # The model reads its features in place from the decision context's numeric vector.
    return model.bind(model_layout(), width=model_width())


class RiskOutcome(NamedTuple):
    """What the model and the policy said about one authorization (made per authorization:
    a named tuple, which costs half what a frozen dataclass does to build)."""

    score: float
    decision: int  # payauth.v1.Decision; DECISION_UNSPECIFIED when nothing decided
    response_code: int
    # Shared by every outcome with the same matching rules: copy them (extend), never change.
    reasons: tuple[authorizer_pb2.Reason, ...]


NO_RISK = RiskOutcome(0.0, 0, 0, ())


# Reason lists kept per policy (by the rules' statuses) before the cache starts over.
_DESCRIBED_MAX = 4096


@dataclass(frozen=True)
class DecisionCore:
    """One consistent pair of policy and model (either may be absent).

    The reasons of an outcome depend only on which rules matched, so they are built once
    per pattern of rule statuses and kept (`_described`); an authorization then costs two
    calls into the core (fill, then score and rules) and a dict lookup."""

    policy: CompiledPolicy | None = None
    model: TreeEnsemble | None = None
    model_version: int = 0
    # status bytes -> (reasons but a score threshold's, ids of the rules that errored)
    _described: dict[bytes, tuple[tuple[authorizer_pb2.Reason, ...], tuple[str, ...]]] = \
        field(default_factory=dict, init=False, repr=False, compare=False)
    #: This pair's decision context: it fills only what the policy and the model read.
    filler: DecisionContextFiller = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "filler", DecisionContextFiller(
            self.policy.inputs_read if self.policy is not None else (),
            self.model.feature_names if self.model is not None else ()))

    def assess(self, request: authorizer_pb2.AuthorizeRequest, card: CardRecord,
               account: AccountRecord) -> RiskOutcome:
        """Score the authorization and run the policy over it, in the core, synchronously."""
        policy, model, filler = self.policy, self.model, self.filler
        if policy is None:
            if model is None:
                return NO_RISK
            filler.gather((request, card, account))
            # A regression or raw-margin model may leave 0..1; the score never does.
            score = min(max(model.probability_of(filler.context), 0.0), 1.0)
            return RiskOutcome(score, 0, 0, ())
        filler.gather((request, card, account))
        if model is None:
            filler.set_score(0.0)
        # One call into the core: the model scored on the context in place, its score
        # (clamped to 0..1) put in the `score` slot, and the policy's rules run.
        decided, score, status = policy.run(filler.context, model)
        described = self._described.get(status)
        if described is None:
            described = self._describe(decided, score, status)
        reasons, errored = described
        if decided < -1:  # a score threshold decided: its reason names the score
            result = policy.result(decided, score, status)
            reasons = (authorizer_pb2.Reason(rule_id=f"policy.{result.threshold}",
                                             text=result.reason), *reasons)
        for rule_id in errored:
            log.debug("rule %s of policy %s v%d evaluated to an error", rule_id,
                      policy.policy_id, policy.version)
        decision, response_code = policy.answers[decided + 3]
        return RiskOutcome(score, decision, response_code, reasons)

    def _describe(self, decided: int, score: float, status: bytes
                  ) -> tuple[tuple[authorizer_pb2.Reason, ...], tuple[str, ...]]:
        """The reasons of one pattern of rule statuses (the deciding rule's first, then the
        other matching active rules, then the matching shadow rules) and the rules that
        errored; kept for the next authorization with the same pattern."""
        assert self.policy is not None
        result = self.policy.result(decided, score, status)
        reasons = []
        if result.rule is not None:
            reasons.append(authorizer_pb2.Reason(rule_id=result.rule.id, text=result.reason))
        reasons.extend(authorizer_pb2.Reason(rule_id=r.id, text=r.reason)
                       for r in result.matched if r is not result.rule)
        reasons.extend(authorizer_pb2.Reason(rule_id=r.id, text=r.reason, shadow=True)
                       for r in result.shadow_matched)
        described = (tuple(reasons), tuple(rule.id for rule in result.errored))
        if len(self._described) >= _DESCRIBED_MAX:
            self._described.clear()
        self._described[status] = described
        return described


class CoreRegistry:
    """This worker's current DecisionCore, kept in step with Redis."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._reloading = asyncio.Lock()
        self.current = DecisionCore()
        # Told of loyalty program announcements ("program:<id>" -> the id; None when the
        # subscription (re)starts and any announcement may have been missed).
        self.on_program_change: Callable[[str | None], None] = lambda program_id: None

    async def reload(self) -> None:
        """Compile the active policy and model from Redis and swap them in together.

        Reloads run one at a time, each reading Redis when its turn comes, so the last
        one to finish installed the newest pair."""
        async with self._reloading:
            await self._reload()

    async def _reload(self) -> None:
        policy_bytes, model_bytes = await self._store.active_config()
        policy = model = None
        model_version = 0
        if policy_bytes is not None:
            update = policy_pb2.PolicyUpdate.FromString(policy_bytes)
            policy = await asyncio.to_thread(compile_policy, update)
        if model_bytes is not None:
            request = policy_pb2.LoadModelRequest.FromString(model_bytes)
            model = await asyncio.to_thread(build_model, request)
            model_version = request.version
        self.current = DecisionCore(policy, model, model_version)
        log.info("decision core: policy %s, model %s",
                 f"{policy.policy_id} v{policy.version}" if policy else "none",
                 f"v{model_version}" if model is not None else "none")

    async def watch(self, stopping: asyncio.Event) -> None:
        """Reload on every announcement until `stopping` is set; reconnect on failure."""
        while not stopping.is_set():
            client = self._store.notification_client()
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(keys.CONFIG_CHANNEL)
                self.on_program_change(None)
                await self.reload()
                while not stopping.is_set():
                    message = await pubsub.get_message(timeout=0.5)
                    if message is None:
                        continue
                    data = message.get("data") or b""
                    if isinstance(data, bytes) and data.startswith(b"program:"):
                        self.on_program_change(data[len(b"program:"):].decode())
                    else:
                        await self.reload()
            except Exception:  # noqa: BLE001 - keep serving with the last good core
                log.exception("policy/model watch failed; reconnecting")
                await asyncio.sleep(1.0)
            finally:
                await pubsub.aclose()
                await client.aclose()
