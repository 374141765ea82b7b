"""Typed errors raised by the payauth clients.

Callers branch on what went wrong (a bad field, an unknown card, a server that is down), so every
failed RPC surfaces as one `PayauthError` subclass per status code, carrying the rich
`google.rpc.Status` the server sent and its `BadRequest` field violations already unpacked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

# Trailing-metadata key of the serialized google.rpc.Status (the gRPC rich error model).
_STATUS_DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One invalid request field, as named by the server's `BadRequest` detail."""

    field: str
    description: str


class PayauthError(Exception):
    """A failed payauth RPC; the subclass says which status code it failed with."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        field_violations: list[FieldViolation] | None = None,
        details: status_pb2.Status | None = None,
    ) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.field_violations = list(field_violations or ())
        # The raw rich status, for details beyond BadRequest (ErrorInfo, RetryInfo ...).
        self.details = details

    def __str__(self) -> str:
        text = f"{self.code.name}: {self.message}"
        if self.field_violations:
            text += " (" + "; ".join(f"{v.field}: {v.description}" for v in self.field_violations)
            text += ")"
        return text


class InvalidArgumentError(PayauthError):
    """The request was malformed; `field_violations` names the offending fields."""


class NotFoundError(PayauthError):
    """The account, card, program or member named by the request does not exist."""


class AlreadyExistsError(PayauthError):
    """The idempotency key was already used with a different request body."""


class FailedPreconditionError(PayauthError):
    """The request is valid but the state forbids it (insufficient points, captured hold ...)."""


class PermissionDeniedError(PayauthError):
    """The caller may not act on this resource (another issuer's card, another program)."""


class UnauthenticatedError(PayauthError):
    """The caller's credentials were missing or rejected."""


class ResourceExhaustedError(PayauthError):
    """A rate limit or quota was hit; back off before calling again."""


class UnavailableError(PayauthError):
    """The server could not be reached or is shutting down; idempotent calls were retried."""


class DeadlineExceededError(PayauthError):
    """The call did not finish within its deadline (or the server never became ready)."""


class UnimplementedError(PayauthError):
    """The server does not implement this RPC (an older server, or the wrong service)."""


class InternalError(PayauthError):
    """Any other failure (INTERNAL, UNKNOWN, ABORTED, DATA_LOSS ...); `code` has the exact one."""


_ERROR_BY_CODE: dict[grpc.StatusCode, type[PayauthError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.UNIMPLEMENTED: UnimplementedError,
}


def error_class(code: grpc.StatusCode) -> type[PayauthError]:
    """Returns the error class for a status code, InternalError for the codes without their own."""
    return _ERROR_BY_CODE.get(code, InternalError)


def error_from_rpc(exc: grpc.RpcError) -> PayauthError:
    """Turns a failed gRPC call (sync or grpc.aio) into its typed error, unpacking BadRequest."""
    code = _call_attr(exc, "code") or grpc.StatusCode.UNKNOWN
    message = _call_attr(exc, "details") or ""
    details = _rich_status(exc)
    return error_class(code)(code, message, _field_violations(details), details)


def _call_attr(exc: grpc.RpcError, name: str) -> Any:
    # A bare grpc.RpcError need not be a grpc.Call (e.g. raised by an interceptor).
    method = getattr(exc, name, None)
    return method() if callable(method) else None


def _rich_status(exc: grpc.RpcError) -> status_pb2.Status | None:
    if isinstance(exc, grpc.aio.AioRpcError):
        # grpc_status.rpc_status.from_call only reads sync calls; an AioRpcError holds its
        # trailing metadata already, so the status is parsed from there directly.
        for key, value in exc.trailing_metadata() or ():
            if key == _STATUS_DETAILS_KEY:
                return status_pb2.Status.FromString(value)
        return None
    if not isinstance(exc, grpc.Call):
        return None
    try:
        return rpc_status.from_call(exc)
    except ValueError:
        # The rich status disagrees with the call's own code or message: trust neither detail.
        return None


def _field_violations(details: status_pb2.Status | None) -> list[FieldViolation]:
    if details is None:
        return []
    violations: list[FieldViolation] = []
    for detail in details.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            violations.extend(
                FieldViolation(v.field, v.description) for v in bad_request.field_violations
            )
    return violations
