"""The two client bases: each owns a channel and adds deadlines, retries and typed errors.

`ServiceClient` (blocking, `grpc`) and `AsyncServiceClient` (`grpc.aio`) are twins: they share the
method table (`rpc.Rpc`), the retry bookkeeping (`retry.Attempts`) and the error mapping
(`errors.error_from_rpc`), and differ only where one blocks and the other awaits.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, ClassVar, Self

import grpc
import grpc.aio
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2

from .errors import DeadlineExceededError, error_from_rpc
from .retry import RetryPolicy
from .rpc import Rpc

HEALTH_CHECK = Rpc(health_pb2.DESCRIPTOR.services_by_name["Health"], "Check")

# How often wait_until_serving asks again while the service reports NOT_SERVING.
_HEALTH_POLL_INTERVAL = 0.05

_SERVING = health_pb2.HealthCheckResponse.SERVING


class _ClientSettings:
    """What both twins keep from their constructor: deadline, retry policy, channel arguments."""

    # Full name of the service, e.g. "payauth.v1.Authorizer"; the health check asks about it.
    service_name: ClassVar[str]

    def __init__(
        self,
        timeout: float,
        max_attempts: int,
        options: Sequence[tuple[str, Any]],
    ) -> None:
        self._timeout = _checked_timeout(timeout)
        self._retry = RetryPolicy(max_attempts=max_attempts)
        self._options = list(options)
        self._bound: dict[str, Any] = {}

    def _deadline(self, timeout: float | None) -> float:
        return self._timeout if timeout is None else _checked_timeout(timeout)

    def _health_request(self) -> health_pb2.HealthCheckRequest:
        return health_pb2.HealthCheckRequest(service=self.service_name)

    def _not_serving(self, timeout: float, last: str) -> DeadlineExceededError:
        return DeadlineExceededError(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f"{self.service_name} not SERVING after {timeout:g}s (last answer: {last})",
        )


class ServiceClient(_ClientSettings):
    """Base of the blocking clients; one instance owns one `grpc.Channel`."""

    def __init__(
        self,
        target: str,
        *,
        timeout: float = 2.0,
        max_attempts: int = 3,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        super().__init__(timeout, max_attempts, options)
        if credentials is None:
            self._channel = grpc.insecure_channel(target, options=self._options)
        else:
            self._channel = grpc.secure_channel(target, credentials, options=self._options)

    def close(self) -> None:
        """Closes the channel, cancelling the calls still in flight on it."""
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def wait_until_serving(self, timeout: float) -> None:
        """Blocks until the server's health service reports this service SERVING.

        Startup scripts and tests call it so their first real request does not race the
        server's start. Raises DeadlineExceededError when `timeout` seconds pass first, and
        UnimplementedError at once when the server has no health service to ask.
        """
        check = self._call(HEALTH_CHECK)
        request = self._health_request()
        end = time.monotonic() + timeout
        last = "none"
        while (remaining := end - time.monotonic()) > 0:
            try:
                # wait_for_ready: a server still starting is waited for, not counted as an answer.
                reply = check(request, timeout=remaining, wait_for_ready=True)
            except grpc.RpcError as exc:
                error = error_from_rpc(exc)
                if error.code == grpc.StatusCode.UNIMPLEMENTED:
                    raise error from exc
                last = error.code.name  # NOT_FOUND until the server registers the service
            else:
                if reply.status == _SERVING:
                    return
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            time.sleep(max(0.0, min(_HEALTH_POLL_INTERVAL, end - time.monotonic())))
        raise self._not_serving(timeout, last)

    def _call(self, rpc: Rpc) -> Any:
        if (bound := self._bound.get(rpc.path)) is None:
            bound = self._bound[rpc.path] = rpc.bind(self._channel)
        return bound

    def _unary(
        self,
        rpc: Rpc,
        request: Message | None,
        fields: Mapping[str, Any],
        timeout: float | None,
    ) -> Any:
        message = rpc.build(request, fields)
        attempts = self._retry.attempts(self._deadline(timeout), rpc.is_idempotent(message))
        call = self._call(rpc)
        while True:
            try:
                return call(message, timeout=attempts.next_timeout())
            except grpc.RpcError as exc:
                error = error_from_rpc(exc)
                delay = attempts.retry_delay(error.code)
                if delay is None:
                    raise error from exc
            time.sleep(delay)

    def _stream(self, rpc: Rpc, request: Any, timeout: float | None) -> Iterator[Any]:
        call = self._call(rpc)(request, timeout=_stream_timeout(timeout))
        return _typed_responses(call)


class AsyncServiceClient(_ClientSettings):
    """Base of the asyncio clients; one instance owns one `grpc.aio.Channel`."""

    def __init__(
        self,
        target: str,
        *,
        timeout: float = 2.0,
        max_attempts: int = 3,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        super().__init__(timeout, max_attempts, options)
        if credentials is None:
            self._channel = grpc.aio.insecure_channel(target, options=self._options)
        else:
            self._channel = grpc.aio.secure_channel(target, credentials, options=self._options)

    async def close(self) -> None:
        """Closes the channel, cancelling the calls still in flight on it."""
        await self._channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def wait_until_serving(self, timeout: float) -> None:
        """Waits until the server's health service reports this service SERVING.

        Startup code and tests await it so their first real request does not race the server's
        start. Raises DeadlineExceededError when `timeout` seconds pass first, and
        UnimplementedError at once when the server has no health service to ask.
        """
        check = self._call(HEALTH_CHECK)
        request = self._health_request()
        end = time.monotonic() + timeout
        last = "none"
        while (remaining := end - time.monotonic()) > 0:
            try:
                # wait_for_ready: a server still starting is waited for, not counted as an answer.
                reply = await check(request, timeout=remaining, wait_for_ready=True)
            except grpc.RpcError as exc:
                error = error_from_rpc(exc)
                if error.code == grpc.StatusCode.UNIMPLEMENTED:
                    raise error from exc
                last = error.code.name  # NOT_FOUND until the server registers the service
            else:
                if reply.status == _SERVING:
                    return
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            await asyncio.sleep(max(0.0, min(_HEALTH_POLL_INTERVAL, end - time.monotonic())))
        raise self._not_serving(timeout, last)

    def _call(self, rpc: Rpc) -> Any:
        if (bound := self._bound.get(rpc.path)) is None:
            bound = self._bound[rpc.path] = rpc.bind(self._channel)
        return bound

    async def _unary(
        self,
        rpc: Rpc,
        request: Message | None,
        fields: Mapping[str, Any],
        timeout: float | None,
    ) -> Any:
        message = rpc.build(request, fields)
        attempts = self._retry.attempts(self._deadline(timeout), rpc.is_idempotent(message))
        call = self._call(rpc)
        while True:
            try:
                return await call(message, timeout=attempts.next_timeout())
            except grpc.RpcError as exc:
                error = error_from_rpc(exc)
                delay = attempts.retry_delay(error.code)
                if delay is None:
                    raise error from exc
            await asyncio.sleep(delay)

    def _stream(self, rpc: Rpc, request: Any, timeout: float | None) -> AsyncIterator[Any]:
        call = self._call(rpc)(request, timeout=_stream_timeout(timeout))
        return _async_typed_responses(call)


def _checked_timeout(timeout: float) -> float:
    if not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    return float(timeout)


def _stream_timeout(timeout: float | None) -> float | None:
    # Streams live as long as their consumer (a watch, a policy session, a gateway's feed), so
    # they get no deadline unless the caller asks for one.
    return None if timeout is None else _checked_timeout(timeout)


def _typed_responses(call: Any) -> Iterator[Any]:
    try:
        yield from call
    except grpc.RpcError as exc:
        raise error_from_rpc(exc) from exc
    finally:
        call.cancel()  # a consumer that stops early must not leave the stream open


async def _async_typed_responses(call: Any) -> AsyncIterator[Any]:
    try:
        async for response in call:
            yield response
    except grpc.RpcError as exc:
        raise error_from_rpc(exc) from exc
    finally:
        call.cancel()  # a consumer that stops early must not leave the stream open
