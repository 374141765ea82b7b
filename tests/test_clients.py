"""The thin clients against real gRPC servers with scripted servicers, sync and asyncio.

No gRPC mocks: each test starts a `grpc.server` or `grpc.aio.server` on 127.0.0.1:0 whose
servicers fail, stall or answer as scripted, and talks to it through a real client and channel,
so deadlines, retries and the rich error model are exercised over the wire.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from payauth.clients import (
    AcquirerClient,
    AsyncAcquirerClient,
    AsyncIssuerClient,
    DeadlineExceededError,
    FieldViolation,
    InternalError,
    InvalidArgumentError,
    IssuerClient,
    LoyaltyClient,
    PayauthError,
    UnavailableError,
    UnimplementedError,
)
from payauth.clients.retry import RetryPolicy
from payauth.v1 import (
    authorizer_pb2,
    authorizer_pb2_grpc,
    common_pb2,
    issuer_pb2,
    issuer_pb2_grpc,
    lifecycle_pb2,
    loyalty_pb2,
    loyalty_pb2_grpc,
    policy_pb2,
)

AUTHORIZER = authorizer_pb2.DESCRIPTOR.services_by_name["Authorizer"].full_name

VIOLATIONS = [
    FieldViolation("amount_minor", "must be positive"),
    FieldViolation("currency", "not an ISO 4217 code"),
]


def rich_status(code: int, message: str, violations: Sequence[FieldViolation] = ()) -> grpc.Status:
    """A grpc.Status carrying a google.rpc.Status, with a BadRequest detail when given."""
    status = status_pb2.Status(code=code, message=message)
    if violations:
        bad_request = error_details_pb2.BadRequest()
        for v in violations:
            bad_request.field_violations.add(field=v.field, description=v.description)
        detail = any_pb2.Any()
        detail.Pack(bad_request)
        status.details.append(detail)
    return rpc_status.to_status(status)


UNAVAILABLE = rich_status(code_pb2.UNAVAILABLE, "warming up")
BAD_CAPTURE = rich_status(code_pb2.INVALID_ARGUMENT, "bad capture", VIOLATIONS)
ABORTED = rich_status(code_pb2.ABORTED, "lost a race")


def approve(request: authorizer_pb2.AuthorizeRequest) -> authorizer_pb2.AuthorizeResponse:
    return authorizer_pb2.AuthorizeResponse(
        request_id=request.request_id,
        decision=common_pb2.DECISION_APPROVE,
        approved_amount_minor=request.amount_minor,
    )


class Script:
    """What a scripted servicer does: fail the first `failures` calls UNAVAILABLE, then stall."""

    def __init__(self, *, failures: int = 0, stall: float = 0.0) -> None:
        self.failures = failures
        self.stall = stall
        self.requests: list[Any] = []
        self.time_remaining: list[float | None] = []

    def arrive(self, request: Any, context: Any) -> grpc.Status | None:
        """Records a call; returns the status to fail it with, or None to answer."""
        self.requests.append(request)
        self.time_remaining.append(context.time_remaining())
        return UNAVAILABLE if len(self.requests) <= self.failures else None


class Authorizer(authorizer_pb2_grpc.AuthorizerServicer):
    """Blocking Authorizer: Authorize per its script, Capture always rejected with violations."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.captures = 0

    def Authorize(self, request, context):  # noqa: N802 - named like the RPC
        if (status := self.script.arrive(request, context)) is not None:
            context.abort_with_status(status)
        end = time.monotonic() + self.script.stall
        # Poll rather than sleep so the worker thread is freed as soon as the client gives up.
        while context.is_active() and time.monotonic() < end:
            time.sleep(0.005)
        return approve(request)

    def AuthorizeStream(self, request_iterator, context):  # noqa: N802
        for request in request_iterator:
            if request.request_id == "bad":
                context.abort_with_status(BAD_CAPTURE)
            yield approve(request)

    def Capture(self, request, context):  # noqa: N802
        self.captures += 1
        context.abort_with_status(BAD_CAPTURE)


class AsyncAuthorizer(authorizer_pb2_grpc.AuthorizerServicer):
    """Asyncio twin of Authorizer, plus Refund failing with ABORTED (no class of its own)."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.captures = 0

    async def Authorize(self, request, context):  # noqa: N802
        if (status := self.script.arrive(request, context)) is not None:
            await context.abort_with_status(status)
        await asyncio.sleep(self.script.stall)  # cancelled when the client's deadline passes
        return approve(request)

    async def AuthorizeStream(self, request_iterator, context):  # noqa: N802
        async for request in request_iterator:
            yield approve(request)

    async def Capture(self, request, context):  # noqa: N802
        self.captures += 1
        await context.abort_with_status(BAD_CAPTURE)

    async def Refund(self, request, context):  # noqa: N802
        await context.abort_with_status(ABORTED)


class DownIssuer(issuer_pb2_grpc.IssuerControlServicer):
    """An issuer whose UpsertCard is always UNAVAILABLE, counting the attempts."""

    def __init__(self) -> None:
        self.upsert_cards = 0

    def UpsertCard(self, request, context):  # noqa: N802
        self.upsert_cards += 1
        context.abort_with_status(UNAVAILABLE)


ADD_TO_SERVER = {
    authorizer_pb2_grpc.AuthorizerServicer: authorizer_pb2_grpc.add_AuthorizerServicer_to_server,
    issuer_pb2_grpc.IssuerControlServicer: issuer_pb2_grpc.add_IssuerControlServicer_to_server,
    loyalty_pb2_grpc.LoyaltyServicer: loyalty_pb2_grpc.add_LoyaltyServicer_to_server,
    health_pb2_grpc.HealthServicer: health_pb2_grpc.add_HealthServicer_to_server,
}


def register(server: grpc.Server | grpc.aio.Server, servicers: tuple[Any, ...]) -> None:
    """Adds each servicer to `server` with the generated add_*_to_server of its service."""
    for servicer in servicers:
        add = next(add for kind, add in ADD_TO_SERVER.items() if isinstance(servicer, kind))
        add(servicer, server)


@contextmanager
def serving(*servicers: Any) -> Iterator[str]:
    """A blocking grpc.server on a free loopback port with `servicers`; yields its target."""
    server = grpc.server(ThreadPoolExecutor(max_workers=8))
    register(server, servicers)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(None)


@asynccontextmanager
async def aio_serving(*servicers: Any) -> AsyncIterator[str]:
    """A grpc.aio server on a free loopback port with `servicers`; yields its target."""
    server = grpc.aio.server()
    register(server, servicers)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


def authorize_fields(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = dict(
        request_id="r1",
        card_token="tok-1",
        merchant_id="m-1",
        mcc="5411",
        merchant_country="BR",
        amount_minor=1234,
        currency="BRL",
        channel=common_pb2.CHANNEL_ECOM,
        payment_method=common_pb2.PAYMENT_METHOD_CARD,
        three_ds=common_pb2.THREE_DS_RESULT_NOT_ATTEMPTED,
    )
    fields.update(overrides)
    return fields


# --- retries ---------------------------------------------------------------------------------


def test_authorize_is_retried_on_unavailable_until_it_succeeds() -> None:
    script = Script(failures=2)
    with serving(Authorizer(script)) as target, AcquirerClient(target, max_attempts=3) as client:
        response = client.authorize(authorizer_pb2.AuthorizeRequest(**authorize_fields()))
    assert response.request_id == "r1"
    assert response.decision == common_pb2.DECISION_APPROVE
    assert [r.request_id for r in script.requests] == ["r1"] * 3  # same idempotency key


def test_async_authorize_is_retried_on_unavailable_until_it_succeeds() -> None:
    async def main() -> tuple[authorizer_pb2.AuthorizeResponse, Script]:
        script = Script(failures=2)
        async with aio_serving(AsyncAuthorizer(script)) as target:
            async with AsyncAcquirerClient(target, max_attempts=3) as client:
                return await client.authorize(**authorize_fields()), script

    response, script = asyncio.run(main())
    assert response.request_id == "r1"
    assert len(script.requests) == 3


def test_unavailable_past_max_attempts_raises_unavailable_error() -> None:
    script = Script(failures=5)
    with serving(Authorizer(script)) as target, AcquirerClient(target, max_attempts=2) as client:
        with pytest.raises(UnavailableError) as caught:
            client.authorize(**authorize_fields())
    assert len(script.requests) == 2
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert caught.value.message == "warming up"
    assert isinstance(caught.value.__cause__, grpc.RpcError)


def test_upsert_card_without_token_is_not_retried() -> None:
    issuer = DownIssuer()
    with serving(issuer) as target, IssuerClient(target, max_attempts=3) as client:
        with pytest.raises(UnavailableError):
            client.upsert_card(pan="4111111111111111", account_id="a-1")
        assert issuer.upsert_cards == 1  # the server would have minted a new token each time

        with pytest.raises(UnavailableError):
            client.upsert_card(card_token="card-1", account_id="a-1")
        assert issuer.upsert_cards == 1 + 3  # with a token it is idempotent, so retried


# --- typed errors ----------------------------------------------------------------------------


def test_invalid_argument_carries_field_violations() -> None:
    servicer = Authorizer(Script())
    with serving(servicer) as target, AcquirerClient(target) as client:
        with pytest.raises(InvalidArgumentError) as caught:
            client.capture(request_id="c1", authorization_id="auth-1", amount_minor=-5)
    error = caught.value
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.message == "bad capture"
    assert error.field_violations == VIOLATIONS
    assert error.details is not None and error.details.code == code_pb2.INVALID_ARGUMENT
    assert "amount_minor: must be positive" in str(error)
    assert servicer.captures == 1  # a rejected request is never retried


def test_async_invalid_argument_carries_field_violations() -> None:
    async def main() -> tuple[PayauthError, PayauthError, int]:
        servicer = AsyncAuthorizer(Script())
        async with aio_serving(servicer) as target, AsyncAcquirerClient(target) as client:
            with pytest.raises(InvalidArgumentError) as invalid:
                await client.capture(lifecycle_pb2.CaptureRequest(request_id="c1"))
            with pytest.raises(InternalError) as aborted:
                await client.refund(request_id="rf1")
        return invalid.value, aborted.value, servicer.captures

    invalid, aborted, captures = asyncio.run(main())
    assert invalid.field_violations == VIOLATIONS
    assert invalid.details is not None and invalid.details.message == "bad capture"
    assert isinstance(invalid.__cause__, grpc.aio.AioRpcError)
    assert captures == 1
    # Codes without a class of their own fall back to InternalError but keep their exact code.
    assert aborted.code == grpc.StatusCode.ABORTED
    assert aborted.field_violations == []


def test_unimplemented_rpc_raises_unimplemented_error() -> None:
    with serving(loyalty_pb2_grpc.LoyaltyServicer()) as target, LoyaltyClient(target) as client:
        with pytest.raises(UnimplementedError):
            client.get_balance(program_id="p-1", member_id="mem-1")


# --- deadlines -------------------------------------------------------------------------------


def test_every_call_gets_the_default_deadline() -> None:
    script = Script()
    with serving(Authorizer(script)) as target, AcquirerClient(target, timeout=1.5) as client:
        client.authorize(**authorize_fields())
    (remaining,) = script.time_remaining
    # The server sees the client's deadline (give or take clock rounding), not none at all.
    assert remaining is not None and 1.0 < remaining < 1.6


def test_stalled_idempotent_call_exceeds_its_deadline_after_max_attempts() -> None:
    script = Script(stall=5.0)
    with serving(Authorizer(script)) as target:
        with AcquirerClient(target, timeout=0.2, max_attempts=3) as client:
            started = time.monotonic()
            with pytest.raises(DeadlineExceededError):
                client.authorize(**authorize_fields())
            elapsed = time.monotonic() - started
    assert len(script.requests) == 3
    assert elapsed < 0.2 * 3 + 0.3  # never past the call's budget of timeout x attempts


def test_async_stalled_call_exceeds_its_deadline_after_max_attempts() -> None:
    async def main() -> float:
        async with aio_serving(AsyncAuthorizer(script)) as target:
            async with AsyncAcquirerClient(target, timeout=0.2, max_attempts=3) as client:
                started = time.monotonic()
                with pytest.raises(DeadlineExceededError):
                    await client.authorize(**authorize_fields())
                return time.monotonic() - started

    script = Script(stall=5.0)
    elapsed = asyncio.run(main())
    assert len(script.requests) == 3
    assert elapsed < 0.2 * 3 + 0.3


def test_timeout_argument_overrides_the_default_deadline() -> None:
    script = Script(stall=5.0)
    with serving(Authorizer(script)) as target:
        with AcquirerClient(target, timeout=5.0, max_attempts=1) as client:
            started = time.monotonic()
            with pytest.raises(DeadlineExceededError):
                client.authorize(timeout=0.1, **authorize_fields())
            assert time.monotonic() - started < 1.0


# --- request building ------------------------------------------------------------------------


def test_keyword_fields_build_the_request_with_a_datetime_timestamp() -> None:
    script = Script()
    sao_paulo = timezone(timedelta(hours=-3))
    with serving(Authorizer(script)) as target, AcquirerClient(target) as client:
        purchased = datetime(2024, 5, 1, 9, 30, tzinfo=sao_paulo)
        client.authorize(**authorize_fields(timestamp=purchased))
    (request,) = script.requests
    assert request.card_token == "tok-1"
    assert request.amount_minor == 1234
    assert request.channel == common_pb2.CHANNEL_ECOM
    assert request.timestamp.ToDatetime(tzinfo=UTC) == datetime(2024, 5, 1, 12, 30, tzinfo=UTC)


def test_request_and_fields_are_not_mixed() -> None:
    client = AcquirerClient("127.0.0.1:1")  # never dialled: building fails first
    try:
        with pytest.raises(TypeError, match="not both"):
            client.authorize(authorizer_pb2.AuthorizeRequest(), request_id="r1")
        with pytest.raises(TypeError, match="payauth.v1.AuthorizeRequest"):
            client.authorize(lifecycle_pb2.CaptureRequest())
        with pytest.raises(ValueError):
            AcquirerClient("127.0.0.1:1", timeout=0)
    finally:
        client.close()


# --- streams ---------------------------------------------------------------------------------


def test_authorize_stream_answers_each_request_and_maps_errors() -> None:
    with serving(Authorizer(Script())) as target, AcquirerClient(target) as client:
        requests = [authorizer_pb2.AuthorizeRequest(request_id=f"s{i}") for i in range(3)]
        answers = {r.request_id for r in client.authorize_stream(requests)}
        assert answers == {"s0", "s1", "s2"}

        bad = [authorizer_pb2.AuthorizeRequest(request_id="bad")]
        with pytest.raises(InvalidArgumentError) as caught:
            list(client.authorize_stream(bad))
        assert caught.value.field_violations == VIOLATIONS


def test_async_streams() -> None:
    async def requests() -> AsyncIterator[authorizer_pb2.AuthorizeRequest]:
        for i in range(3):
            yield authorizer_pb2.AuthorizeRequest(request_id=f"s{i}")

    async def main() -> set[str]:
        servicers = (AsyncAuthorizer(Script()), issuer_pb2_grpc.IssuerControlServicer())
        async with aio_serving(*servicers) as target:
            async with AsyncAcquirerClient(target) as acquirer:
                answers = {r.request_id async for r in acquirer.authorize_stream(requests())}
            async with AsyncIssuerClient(target) as issuer:
                watch = issuer.watch_decisions(policy_pb2.WatchDecisionsRequest())
                with pytest.raises(UnimplementedError):
                    await anext(watch)
        return answers

    assert asyncio.run(main()) == {"s0", "s1", "s2"}


# --- health ----------------------------------------------------------------------------------


def test_wait_until_serving_returns_once_the_service_is_serving() -> None:
    health_servicer = health.HealthServicer()
    health_servicer.set(AUTHORIZER, health_pb2.HealthCheckResponse.NOT_SERVING)
    timer = threading.Timer(
        0.2, health_servicer.set, (AUTHORIZER, health_pb2.HealthCheckResponse.SERVING)
    )
    with serving(health_servicer) as target, AcquirerClient(target) as client:
        started = time.monotonic()
        timer.start()
        client.wait_until_serving(3.0)
        assert 0.15 < time.monotonic() - started < 2.0


def test_wait_until_serving_times_out_with_a_typed_error() -> None:
    health_servicer = health.HealthServicer()  # knows nothing of the Authorizer: NOT_FOUND
    with serving(health_servicer) as target, AcquirerClient(target) as client:
        started = time.monotonic()
        with pytest.raises(DeadlineExceededError, match="payauth.v1.Authorizer not SERVING"):
            client.wait_until_serving(0.3)
        assert time.monotonic() - started < 1.0


def test_async_wait_until_serving_waits_for_a_server_still_starting() -> None:
    async def main() -> float:
        health_servicer = health.aio.HealthServicer()
        server = grpc.aio.server()
        register(server, (health_servicer,))
        port = server.add_insecure_port("127.0.0.1:0")

        async def start_later() -> None:
            await asyncio.sleep(0.2)
            await server.start()
            await asyncio.sleep(0.1)
            await health_servicer.set(AUTHORIZER, health_pb2.HealthCheckResponse.SERVING)

        # A short reconnect backoff so the client notices the late listener quickly.
        options = [
            ("grpc.initial_reconnect_backoff_ms", 50),
            ("grpc.max_reconnect_backoff_ms", 100),
        ]
        starting = asyncio.create_task(start_later())
        try:
            async with AsyncAcquirerClient(f"127.0.0.1:{port}", options=options) as client:
                started = time.monotonic()
                await client.wait_until_serving(3.0)
                return time.monotonic() - started
        finally:
            await starting
            await server.stop(None)

    assert 0.25 < asyncio.run(main()) < 2.5


# --- the retry rule itself -------------------------------------------------------------------


def test_backoff_is_full_jitter_below_the_capped_exponential() -> None:
    policy = RetryPolicy()
    for retry in range(1, 12):
        ceiling = min(1.0, 0.025 * 2 ** (retry - 1))
        delays = [policy.backoff(retry) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling / 2  # spread over the whole range, not pinned to it


def test_attempts_stop_at_the_budget_and_for_final_codes() -> None:
    now = [0.0]
    attempts = RetryPolicy(max_attempts=5).attempts(1.0, idempotent=True, clock=lambda: now[0])
    assert attempts.next_timeout() == 1.0
    assert attempts.retry_delay(grpc.StatusCode.INVALID_ARGUMENT) is None
    now[0] = 4.9  # almost all of the 5 s budget spent: the last attempt gets what is left
    assert attempts.next_timeout() == pytest.approx(0.1)
    now[0] = 5.0
    assert attempts.retry_delay(grpc.StatusCode.UNAVAILABLE) is None

    once = RetryPolicy(max_attempts=5).attempts(1.0, idempotent=False)
    once.next_timeout()
    assert once.retry_delay(grpc.StatusCode.UNAVAILABLE) is None


def test_loyalty_and_issuer_method_tables_mark_the_idempotent_calls() -> None:
    from payauth.clients import issuer, loyalty

    assert issuer.UPSERT_CARD.is_idempotent(issuer_pb2.UpsertCardRequest(card_token="c"))
    assert not issuer.UPSERT_CARD.is_idempotent(issuer_pb2.UpsertCardRequest(pan="4111"))
    assert not issuer.STREAM_POLICIES.is_idempotent(policy_pb2.PolicyUpdate())
    assert loyalty.EARN.is_idempotent(loyalty_pb2.EarnRequest(request_id="e1"))
