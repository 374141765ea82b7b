"""Thin clients of the payauth gRPC API: deadlines, retries of idempotent calls, typed errors.

One class per service, each owning its channel, with an asyncio twin. The retry rule is in
`payauth.clients.retry`.
"""

from .acquirer import AcquirerClient, AsyncAcquirerClient
from .errors import (
    AlreadyExistsError,
    DeadlineExceededError,
    FailedPreconditionError,
    FieldViolation,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    PayauthError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
    error_from_rpc,
)
from .issuer import AsyncIssuerClient, IssuerClient
from .loyalty import AsyncLoyaltyClient, LoyaltyClient

__all__ = [
    "AcquirerClient",
    "AlreadyExistsError",
    "AsyncAcquirerClient",
    "AsyncIssuerClient",
    "AsyncLoyaltyClient",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "FieldViolation",
    "InternalError",
    "InvalidArgumentError",
    "IssuerClient",
    "LoyaltyClient",
    "NotFoundError",
    "PayauthError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "error_from_rpc",
]
