"""The empty handler: `payauth.v1.Authorizer` on the same stack as `payauth serve`, doing nothing.

It is the benchmark's yardstick. Everything a payauth worker pays for that is not the decision
is here too: N worker processes started with the `spawn` context and payauth's gRPC core
settings (`GRPC_ENVIRONMENT`), each a `grpc.aio` server on uvloop built with payauth's own
`SERVER_OPTIONS` (SO_REUSEPORT on one shared port, the same connection-age limits) and a health
service; the same proto messages are parsed and serialized. `Authorize` returns a fixed
AuthorizeResponse carrying the request's request_id, and `AuthorizeStream` answers every message
with the same. So `authorize / empty` throughput is the share of the stack's capacity that
payauth's own work leaves.

With `--redis-url` and `--round-trips N`, each `Authorize` first waits for N round trips to
that Redis, one after the other, through payauth's own shared pipeline (one `PipelineBatcher`
on one pipelined connection per worker, as a payauth worker has): PINGs, the last one an INCR,
a write that a Redis with `appendfsync always` answers only once its append-only file holds it,
as it answers payauth's commit. The benchmark's `empty_redis` mode: what the decided design
costs a handler that waits for Redis as often and as long as an Authorize does (a read, then a
synced write), before any of payauth's work.

Run as `python -m benchmarks.e2e.empty_server --port P --workers N` from the repository root;
it prints one "empty handler serving on ..." line once every worker serves, and stops its
workers on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import signal
import sys
from collections.abc import AsyncIterator
from multiprocessing.connection import wait

import grpc
import redis.asyncio as aioredis
import uvloop
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from payauth.server.app import SERVER_OPTIONS, GenericHandlersOnly, set_grpc_environment
from payauth.server.batching import PipelineBatcher
from payauth.v1 import authorizer_pb2, authorizer_pb2_grpc, common_pb2

# What every answer says: an approval as payauth would send it, minus the decision's work.
FIXED = authorizer_pb2.AuthorizeResponse(
    decision=common_pb2.DECISION_APPROVE,
    response_code=common_pb2.RESPONSE_CODE_00_APPROVED,
    iso_response_code="00",
    authorization_id="A0-0000000000000000",
    approved_amount_minor=1000,
    currency="USD",
)
FIXED.decided_at.FromMilliseconds(0)

PING = (("PING",),)
# The last round trip: a write, so that it waits for the AOF's fsync as a commit does.
WRITE = (("INCR", "bench:empty_redis:writes"),)
SERVICE_NAME = authorizer_pb2.DESCRIPTOR.services_by_name["Authorizer"].full_name


def fixed_answer(request: authorizer_pb2.AuthorizeRequest) -> authorizer_pb2.AuthorizeResponse:
    """The fixed response with the request's request_id, so stream clients can match it."""
    response = authorizer_pb2.AuthorizeResponse()
    response.CopyFrom(FIXED)
    response.request_id = request.request_id
    return response


class EmptyAuthorizer(authorizer_pb2_grpc.AuthorizerServicer):
    """Authorize and AuthorizeStream answered at once (Authorize after `round_trips` round
    trips through `batcher`, the last a write); the other RPCs stay UNIMPLEMENTED."""

    def __init__(self, batcher: PipelineBatcher | None = None, round_trips: int = 0) -> None:
        self._batcher = batcher
        self._round_trips = round_trips if batcher is not None else 0

    async def Authorize(  # noqa: N802 - gRPC method name
        self, request: authorizer_pb2.AuthorizeRequest, context: grpc.aio.ServicerContext
    ) -> authorizer_pb2.AuthorizeResponse:
        for trip in range(self._round_trips, 0, -1):
            await self._batcher.run(WRITE if trip == 1 else PING)  # type: ignore[union-attr]
        return fixed_answer(request)

    async def AuthorizeStream(  # noqa: N802
        self, request_iterator: AsyncIterator[authorizer_pb2.AuthorizeRequest],
        context: grpc.aio.ServicerContext,
    ) -> None:
        async for request in request_iterator:
            await context.write(fixed_answer(request))


async def serve_worker(host: str, port: int, on_ready: multiprocessing.Queue,
                       redis_url: str | None = None, round_trips: int = 0) -> None:
    """One worker: serve until SIGTERM/SIGINT or until the parent process is gone."""
    grpc_server = grpc.aio.server(options=SERVER_OPTIONS)
    server = GenericHandlersOnly(grpc_server)  # as payauth's workers register their services
    batcher = None
    if redis_url and round_trips:
        # As payauth's Store connects: the batcher takes its settings from this client.
        batcher = PipelineBatcher(aioredis.from_url(redis_url, socket_timeout=0.5,
                                                    socket_connect_timeout=0.5))
    authorizer_pb2_grpc.add_AuthorizerServicer_to_server(
        EmptyAuthorizer(batcher, round_trips), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    grpc_server.add_insecure_port(f"{host}:{port}")
    await grpc_server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    parent = os.getppid()
    on_ready.put(os.getpid())
    while not stopping.is_set() and os.getppid() == parent:
        try:
            await asyncio.wait_for(stopping.wait(), 1.0)
        except TimeoutError:
            pass
    await grpc_server.stop(1.0)
    if batcher is not None:
        await batcher.close()


def _worker_entry(host: str, port: int, on_ready: multiprocessing.Queue,
                  redis_url: str | None, round_trips: int) -> None:
    uvloop.run(serve_worker(host, port, on_ready, redis_url, round_trips))


def main(argv: list[str] | None = None) -> int:
    """Start the workers, say so on stdout, and stop them on SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--redis-url", default=None,
                        help="the Redis each Authorize waits for")
    parser.add_argument("--round-trips", type=int, default=0,
                        help="round trips to that Redis per Authorize, one after the other: "
                             "PINGs, the last a write (default 0)")
    args = parser.parse_args(argv)

    stop = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    set_grpc_environment()  # gRPC core's settings of a payauth worker, the same way
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Queue()
    workers = [ctx.Process(target=_worker_entry, args=(args.host, args.port, ready,
                                                       args.redis_url, args.round_trips),
                           name=f"empty-worker-{i}") for i in range(args.workers)]
    for process in workers:
        process.start()
    started = 0
    while started < len(workers) and not stop:
        if any(not p.is_alive() for p in workers):
            print("an empty-handler worker exited during start-up", file=sys.stderr)
            stop = True
            break
        try:
            ready.get(timeout=0.2)
            started += 1
        except Exception:  # noqa: BLE001 - queue.Empty: keep polling
            continue
    if not stop:
        print(f"empty handler serving on {args.host}:{args.port} with {args.workers} "
              "worker(s)", flush=True)
    while not stop and all(p.is_alive() for p in workers):
        wait([p.sentinel for p in workers], timeout=0.2)
    for process in workers:
        if process.is_alive() and process.pid is not None:
            os.kill(process.pid, signal.SIGTERM)
    for process in workers:
        process.join(5)
        if process.is_alive():
            process.kill()
            process.join()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
