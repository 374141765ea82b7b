"""How issuers load policies (StreamPolicies) and scoring models (LoadModel).

An update is compiled (a policy) or parsed and bound (a model) before it is
stored, so what reaches Redis always runs; a bad one is refused with every
problem named. A stored update becomes active only if its version is newer
than the active one (the Function `config_put` decides, atomically) and every
worker swaps it in on the announcement that follows; this worker reloads at
once, so the issuer's next request here already sees it.
"""

from __future__ import annotations

import asyncio
import hashlib

from payauth.core import PolicyCompileError, compile_policy
from payauth.server import keys
from payauth.server.clock import Clock, system_clock
from payauth.server.decision_core import CoreRegistry, build_model
from payauth.server.errors import FailedPreconditionError, InvalidArgumentError
from payauth.server.store import Store
from payauth.server.validation import IDENTIFIER, IDENTIFIER_RULE
from payauth.v1 import policy_pb2

MAX_POLICY_BYTES = 1 << 20
MAX_MODEL_BYTES = 64 << 20


def _check_update(update: policy_pb2.PolicyUpdate) -> list[policy_pb2.RuleCompileError]:
    problems = []
    if not IDENTIFIER.fullmatch(update.policy_id):
        problems.append(policy_pb2.RuleCompileError(field="policy_id",
                                                    message=f"must be {IDENTIFIER_RULE}"))
    if update.version <= 0:
        problems.append(policy_pb2.RuleCompileError(field="version",
                                                    message="must be greater than zero"))
    return problems


class IssuerPolicies:
    """Accepts policy updates and models, stores them, and swaps them in."""

    def __init__(self, store: Store, registry: CoreRegistry,
                 clock: Clock = system_clock) -> None:
        self._store = store
        self._registry = registry
        self._clock = clock

    async def apply(self, update: policy_pb2.PolicyUpdate) -> policy_pb2.PolicyAck:
        """Compile, store and activate one policy update; the ack says what happened."""
        ack = policy_pb2.PolicyAck(update_id=update.update_id, policy_id=update.policy_id,
                                   version=update.version)
        problems = _check_update(update)
        if problems:
            ack.reject_reason = policy_pb2.POLICY_REJECT_REASON_INVALID_UPDATE
            ack.errors.extend(problems)
            return ack
        payload = update.SerializeToString(deterministic=True)
        if len(payload) > MAX_POLICY_BYTES:
            ack.reject_reason = policy_pb2.POLICY_REJECT_REASON_TOO_LARGE
            return ack
        try:
            compiled = await asyncio.to_thread(compile_policy, update)
        except PolicyCompileError as exc:
            ack.reject_reason = exc.reason
            ack.errors.extend(exc.ack_errors())
            return ack
        if update.validate_only:
            active = await self._store.active_policy_version()
            ack.active_version = active
            if update.version <= active:
                ack.reject_reason = policy_pb2.POLICY_REJECT_REASON_STALE_VERSION
                return ack
            ack.accepted = True
            return ack
        stored = policy_pb2.PolicyUpdate()
        stored.CopyFrom(update)
        stored.update_id = ""
        outcome, version = await self._store.put_config(
            keys.ACTIVE_POLICY, "policy", update.version, compiled.content_hash,
            stored.SerializeToString(deterministic=True), int(self._clock() * 1000))
        if outcome == "stale":
            ack.reject_reason = policy_pb2.POLICY_REJECT_REASON_STALE_VERSION
            ack.active_version = version
            return ack
        await self._registry.reload()
        ack.accepted = True
        ack.replayed = outcome == "replayed"
        ack.active_version = update.version
        ack.applied_at.FromMilliseconds(int(self._clock() * 1000))
        return ack

    async def load_model(
        self, request: policy_pb2.LoadModelRequest
    ) -> policy_pb2.LoadModelResponse:
        """Validate a model dump, store it and (when asked) make it the active model."""
        violations = []
        if not IDENTIFIER.fullmatch(request.model_id):
            violations.append(("model_id", f"must be {IDENTIFIER_RULE}"))
        if request.version <= 0:
            violations.append(("version", "must be greater than zero"))
        if not request.model:
            violations.append(("model", "is required"))
        elif len(request.model) > MAX_MODEL_BYTES:
            violations.append(("model", f"must be at most {MAX_MODEL_BYTES} bytes"))
        if request.shadow:
            violations.append(("shadow", "shadow models are not served yet; load it inactive"))
        sha256 = hashlib.sha256(request.model).hexdigest()
        if request.sha256 and request.sha256.lower() != sha256:
            violations.append(("sha256", "does not match the model bytes"))
        if violations:
            raise InvalidArgumentError(violations)
        try:
            ensemble = await asyncio.to_thread(build_model, request)
        except ValueError as exc:
            raise InvalidArgumentError([("model", str(exc))]) from exc
        response = policy_pb2.LoadModelResponse(
            model_id=request.model_id, version=request.version, active=False,
            num_trees=ensemble.n_trees, num_features=len(ensemble.feature_names),
            objective=ensemble.model.objective, sha256=sha256)
        payload = request.SerializeToString(deterministic=True)
        now_ms = int(self._clock() * 1000)
        if request.activate:
            outcome, version = await self._store.put_config(
                keys.ACTIVE_MODEL, "model", request.version, sha256, payload, now_ms)
            if outcome == "stale":
                text = f"must be newer than the active model's version {version}"
                raise FailedPreconditionError(f"version {text}", [("version", text)])
            await self._registry.reload()
            response.active = True
            response.replayed = outcome == "replayed"
            response.previous_active_version = version if outcome == "stored" else 0
        else:
            await self._store.put_stored_model(request.model_id, request.version, payload)
        response.loaded_at.FromMilliseconds(now_ms)
        return response
