"""AuthorizeStream: many authorizations over one bidirectional stream.

High-volume gateways keep one stream open instead of a call per purchase.
Requests are decided concurrently, up to WINDOW at a time, and answered as
they complete (each answer carries its request_id; the order is not kept).
Back-pressure: a request is read only when fewer than WINDOW answers are
pending, and an answer counts as pending until the transport took it, so a
gateway that stops reading stops the server reading, and HTTP/2 flow control
pushes back on it.

A request that cannot be decided gets an answer on the stream instead of an
error that would end the stream for every other request: 30 (format error,
with the field violations as reasons), 94 (request_id reused with another
body), 91 (the state store did not answer; retry with the same request_id).
The first two touched no state. After a 91 the commit may or may not have run
(its reply is what did not come): the retry with the same request_id returns
the decision taken, replayed, or takes it now.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import grpc
from redis.exceptions import RedisError

from payauth.server.authorize import AuthorizePipeline
from payauth.server.errors import (
    AlreadyExistsError,
    InvalidArgumentError,
    PayauthError,
)
from payauth.server.metrics import RPC_LATENCY, RPC_REQUESTS, child, count_decision
from payauth.server.responses import decline
from payauth.v1 import authorizer_pb2, common_pb2

log = logging.getLogger(__name__)

WINDOW = 256
METHOD = "AuthorizeStream"
LATENCY = RPC_LATENCY.labels(METHOD)


def refusal_answer(request: authorizer_pb2.AuthorizeRequest,
                   error: Exception) -> authorizer_pb2.AuthorizeResponse:
    """The stream's answer to a request that could not be decided."""
    response = authorizer_pb2.AuthorizeResponse(request_id=request.request_id,
                                                currency=request.currency)
    if isinstance(error, InvalidArgumentError):
        decline(response, common_pb2.RESPONSE_CODE_30_FORMAT_ERROR, "request.invalid",
                error.message)
        for field, description in error.violations:
            response.reasons.add(rule_id=f"request.{field}", text=description)
    elif isinstance(error, AlreadyExistsError):
        decline(response, common_pb2.RESPONSE_CODE_94_DUPLICATE_TRANSMISSION,
                "request.duplicate", error.message)
    else:
        decline(response, common_pb2.RESPONSE_CODE_91_ISSUER_UNAVAILABLE, "issuer.unavailable",
                "no decision could be taken in time; retry with the same request_id")
    return response


async def authorize_stream(pipeline: AuthorizePipeline,
                           requests: AsyncIterator[authorizer_pb2.AuthorizeRequest],
                           context: grpc.aio.ServicerContext) -> None:
    """Decide every request of the stream; return when all are answered."""
    answers: asyncio.Queue[authorizer_pb2.AuthorizeResponse | None] = asyncio.Queue()
    window = asyncio.Semaphore(WINDOW)
    deciding: set[asyncio.Task[None]] = set()

    async def decide(request: authorizer_pb2.AuthorizeRequest) -> None:
        started = time.perf_counter()
        code = "OK"
        try:
            answer = await pipeline.authorize(request)
        except PayauthError as exc:
            code = exc.code.name
            answer = refusal_answer(request, exc)
        except RedisError as exc:
            code = "UNAVAILABLE"
            answer = refusal_answer(request, exc)
        except Exception as exc:  # noqa: BLE001 - one bad request must not end the stream
            code = "INTERNAL"
            log.exception("AuthorizeStream request failed")
            answer = refusal_answer(request, exc)
        LATENCY.observe(time.perf_counter() - started)
        child(RPC_REQUESTS, METHOD, code).inc()
        answers.put_nowait(count_decision(answer, METHOD))

    async def read() -> None:
        try:
            async for request in requests:
                await window.acquire()
                task = asyncio.create_task(decide(request))
                deciding.add(task)
                task.add_done_callback(deciding.discard)
            if deciding:
                await asyncio.gather(*deciding)
        finally:
            answers.put_nowait(None)

    reader = asyncio.create_task(read())
    try:
        while (answer := await answers.get()) is not None:
            await context.write(answer)
            window.release()
        await reader
    finally:
        reader.cancel()
        for task in list(deciding):
            task.cancel()
