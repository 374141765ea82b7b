"""Domain errors and how each becomes a gRPC status.

Pipeline code raises these; the servicers' `@translate_errors` turns them into
rich statuses (google.rpc.Status with BadRequest field violations where a field
is at fault), so every refusal a client sees is typed and names its field.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from payauth.server.metrics import RPC_LATENCY, RPC_REQUESTS, child

log = logging.getLogger(__name__)

FieldViolation = tuple[str, str]


class PayauthError(Exception):
    """A refusal with its gRPC code and, when fields are at fault, their violations."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, violations: Sequence[FieldViolation] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.violations = list(violations)

    def to_status(self) -> grpc.Status:
        """The rich gRPC status of this error."""
        status = status_pb2.Status(code=getattr(code_pb2, self.code.name), message=self.message)
        if self.violations:
            detail = error_details_pb2.BadRequest(field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                for f, d in self.violations
            ])
            status.details.add().Pack(detail)
        return rpc_status.to_status(status)


class InvalidArgumentError(PayauthError):
    """The request is malformed; nothing was touched."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, violations: Sequence[FieldViolation]) -> None:
        fields = ", ".join(f for f, _ in violations)
        super().__init__(f"invalid request: {fields}", violations)


class NotFoundError(PayauthError):
    """The named entity does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExistsError(PayauthError):
    """The identifier is already bound to something else (for example a request_id
    to another request body)."""

    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPreconditionError(PayauthError):
    """The request is well formed but the state does not allow it."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class AbortedError(PayauthError):
    """A concurrent change kept the call from completing; retrying it is safe."""

    code = grpc.StatusCode.ABORTED


class UnimplementedError(PayauthError):
    """The RPC or option is part of the API but not served yet."""

    code = grpc.StatusCode.UNIMPLEMENTED


Handler = TypeVar("Handler", bound=Callable[..., Awaitable[Any]])


class _EverySecond:
    """A logger that writes at most one line a second and counts what it left out: an
    outage fails every request, and one line per request would bury the log."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._next = 0.0
        self._skipped = 0

    def error(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now < self._next:
            self._skipped += 1
            return
        if self._skipped:
            message += f" (and {self._skipped} more like it in the last second)"
            self._skipped = 0
        self._next = now + 1.0
        self._logger.error(message, *args)


_unavailable_log = _EverySecond(log)


def translate_errors(method: Handler) -> Handler:
    """Turn PayauthError and Redis unavailability into gRPC statuses for a unary handler,
    and count the call and its latency."""

    name = method.__name__
    latency = RPC_LATENCY.labels(name)

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        started = time.perf_counter()
        code = "OK"
        try:
            return await method(self, request, context)
        except PayauthError as exc:
            code = exc.code.name
            await context.abort_with_status(exc.to_status())
        except (RedisConnectionError, RedisTimeoutError) as exc:
            code = "UNAVAILABLE"
            _unavailable_log.error("state store unavailable in %s: %s", name, exc)
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                "the state store did not answer in time; retry the request")
        except RedisError as exc:
            # Out of memory, a read-only replica, a script error: nothing a retry fixes.
            code = "INTERNAL"
            log.error("state store refused %s: %s", name, exc)
            await context.abort(grpc.StatusCode.INTERNAL,
                                f"the state store refused the operation: {exc}")
        finally:
            latency.observe(time.perf_counter() - started)
            child(RPC_REQUESTS, name, code).inc()

    return wrapper  # type: ignore[return-value]


def unimplemented(what: str) -> UnimplementedError:
    """The error for an RPC that a later part of payauth serves."""
    return UnimplementedError(f"{what} is not served by this version of payauth yet")
