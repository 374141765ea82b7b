"""Clients of `payauth.v1.Authorizer`, the service acquirer gateways call.

Every unary call takes its request message, or keyword fields that build it (a `datetime` is
accepted for `timestamp`), plus `timeout=` to override the client's deadline. All of them are
idempotent by their `request_id` (or, for UpsertMerchantPolicy, by replacing the whole policy),
so all are retried on UNAVAILABLE and DEADLINE_EXCEEDED; see `payauth.clients.retry` for the rule.
`authorize_stream` is never retried.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import Any

from payauth.v1 import authorizer_pb2, lifecycle_pb2

from .channel import AsyncServiceClient, ServiceClient
from .rpc import Rpc

_SERVICE = authorizer_pb2.DESCRIPTOR.services_by_name["Authorizer"]

# The method table both twins call through.
AUTHORIZE = Rpc(_SERVICE, "Authorize", idempotent=True)  # the server replays by request_id
AUTHORIZE_STREAM = Rpc(_SERVICE, "AuthorizeStream")
CAPTURE = Rpc(_SERVICE, "Capture", idempotent=True)
REVERSE = Rpc(_SERVICE, "Reverse", idempotent=True)
REFUND = Rpc(_SERVICE, "Refund", idempotent=True)
EXTEND_HOLD = Rpc(_SERVICE, "ExtendHold", idempotent=True)
UPSERT_MERCHANT_POLICY = Rpc(_SERVICE, "UpsertMerchantPolicy", idempotent=True)


class AcquirerClient(ServiceClient):
    """Blocking client of the Authorizer service; owns its channel."""

    service_name = _SERVICE.full_name

    def authorize(
        self,
        request: authorizer_pb2.AuthorizeRequest | None = None,
        /,
        *,
        timeout: float | None = None,
        **fields: Any,
    ) -> authorizer_pb2.AuthorizeResponse:
        """Decides one purchase; a retry reuses the request_id, so it is never decided twice."""
        return self._unary(AUTHORIZE, request, fields, timeout)

    def capture(
        self,
        request: lifecycle_pb2.CaptureRequest | None = None,
        /,
        *,
        timeout: float | None = None,
        **fields: Any,
    ) -> lifecycle_pb2.CaptureResponse:
        """Captures all or part of an approved authorization's hold."""
        return self._unary(CAPTURE, request, fields, timeout)

    def reverse(
        self,
        request: lifecycle_pb2.ReverseRequest | None = None,
        /,
        *,
        timeout: float | None = None,
        **fields: Any,
    ) -> lifecycle_pb2.ReverseResponse:
        """Reverses (voids) all or part of an uncaptured hold, e.g. after a gateway timeout."""
        return self._unary(REVERSE, request, fields, timeout)

    def refund(
        self,
        request: lifecycle_pb2.RefundRequest | None = None,
        /,
        *,
        timeout: float | None = None,
        **fields: Any,
    ) -> lifecycle_pb2.RefundResponse:
        """Refunds all or part of a captured sale to the account."""
        return self._unary(REFUND, request, fields, timeout)

    def extend_hold(
        self,
        request: lifecycle_pb2.ExtendHoldRequest | None = None,
        /,
        *,
        timeout: float | None = None,
        **fields: Any,
    ) -> lifecycle_pb2.ExtendHoldResponse:
        """Moves an authorization's hold expiry later, within its maximum lifetime."""
        return self._unary(EXTEND_HOLD, request, fields, timeout)

    def upsert_merchant_policy(
        self,
        request: lifecycle_pb2.UpsertMerchantPolicyRequest | None = None,
        /,
        *,
        timeout: float | None = None,
        **fields: Any,
    ) -> lifecycle_pb2.UpsertMerchantPolicyResponse:
        """Creates or replaces a merchant's collaboration (liability sharing) policy."""
        return self._unary(UPSERT_MERCHANT_POLICY, request, fields, timeout)

    def authorize_stream(
        self,
        requests: Iterable[authorizer_pb2.AuthorizeRequest],
        *,
        timeout: float | None = None,
    ) -> Iterator[authorizer_pb2.AuthorizeResponse]:
        """Decides a stream of purchases; answers carry their request_id and may come in any order.

        No deadline unless `timeout` is given, since a gateway's stream lives as long as it does.
        """
        return self._stream(AUTHORIZE_STREAM, iter(requests), timeout)


class AsyncAcquirerClient(AsyncServiceClient):
    """Asyncio client of the Authorizer service; owns its channel."""

    service_name = _SERVICE.full_name

    async def authorize(
        self,
        request: authorizer_pb2.AuthorizeRequest | None = None,
        /,
        *,
        timeout: float | None = None,
        **fields: Any,
    ) -> authorizer_pb2.AuthorizeResponse:
        """Decides one purchase; a retry reuses the request_id, so it is never decided twice."""
        return await self._unary(AUTHORIZE, request, fields, timeout)

    async def capture(
        self,
        request: lifecycle_pb2.CaptureRequest | None = None,
        /,
        *,
        timeout: float | None = None,
        **fields: Any,
    ) -> lifecycle_pb2.CaptureResponse:
        """Captures all or part of an approved authorization's hold."""
        return await self._unary(CAPTURE, request, fields, timeout)

    async def reverse(
        self,
        request: lifecycle_pb2.ReverseRequest | None = None,
        /,
        *,
        timeout: float | None = None,
        **fields: Any,
    ) -> lifecycle_pb2.ReverseResponse:
        """Reverses (voids) all or part of an uncaptured hold, e.g. after a gateway timeout."""
        return await self._unary(REVERSE, request, fields, timeout)

    async def refund(
        self,
        request: lifecycle_pb2.RefundRequest | None = None,
        /,
        *,
        timeout: float | None = None,
        **fields: Any,
    ) -> lifecycle_pb2.RefundResponse:
        """Refunds all or part of a captured sale to the account."""
        return await self._unary(REFUND, request, fields, timeout)

    async def extend_hold(
        self,
        request: lifecycle_pb2.ExtendHoldRequest | None = None,
        /,
        *,
        timeout: float | None = None,
        **fields: Any,
    ) -> lifecycle_pb2.ExtendHoldResponse:
        """Moves an authorization's hold expiry later, within its maximum lifetime."""
        return await self._unary(EXTEND_HOLD, request, fields, timeout)

    async def upsert_merchant_policy(
        self,
        request: lifecycle_pb2.UpsertMerchantPolicyRequest | None = None,
        /,
        *,
        timeout: float | None = None,
        **fields: Any,
    ) -> lifecycle_pb2.UpsertMerchantPolicyResponse:
        """Creates or replaces a merchant's collaboration (liability sharing) policy."""
        return await self._unary(UPSERT_MERCHANT_POLICY, request, fields, timeout)

    def authorize_stream(
        self,
        requests: AsyncIterable[authorizer_pb2.AuthorizeRequest]
        | Iterable[authorizer_pb2.AuthorizeRequest],
        *,
        timeout: float | None = None,
    ) -> AsyncIterator[authorizer_pb2.AuthorizeResponse]:
        """Decides a stream of purchases; answers carry their request_id and may come in any order.

        No deadline unless `timeout` is given, since a gateway's stream lives as long as it does.
        """
        return self._stream(AUTHORIZE_STREAM, requests, timeout)
