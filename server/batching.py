"""One Redis pipeline for all the requests in flight on an event-loop turn.

redis-py's client-side cost of a round trip (building the pipeline, packing,
parsing, taking a connection from the pool) is paid per pipeline, not per
command. The requests a worker is deciding at once each need their own small
pipeline at the same moment; this batcher collects the commands of every
request that asks during one turn of the event loop, sends them as one
pipeline, and hands each request its own replies. The requests' round trips
to Redis are unchanged (each still waits for one reply), only shared.

On a single Redis the batches go out on one pipelined connection of the worker's
own (`redis_pipe.RedisPipe`): each batch is written as soon as the turn ends,
without waiting for the batches before it, and the replies, parsed by hiredis in
the transport's callback, complete the batches in order. redis-py's Pipeline
object adds its command stack, response callbacks, retry bookkeeping and a
timeout per reply, and its connections a task per send and an await per reply,
for nothing these commands need (HMGET, GET and FCALL replies are used as they
come). A pool configured beyond a plain connection (TLS, RESP3 ...) sends each
batch on a pooled redis-py connection, packed by hiredis and read raw under one
timeout; a Redis Cluster keeps the Pipeline, which routes each command to its
node.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from payauth.server.redis_pipe import Command, RedisPipe, pack, plain_settings


class PipelineBatcher:
    """Sends the commands of concurrent callers in one pipeline per loop turn."""

    def __init__(self, client: aioredis.Redis | aioredis.RedisCluster) -> None:
        self._client = client
        self._loop: asyncio.AbstractEventLoop | None = None
        # Which way batches go: the pipelined connection (settings), pooled raw connections
        # (pool), or, on a cluster, redis-py's Pipeline (neither).
        self._pipe_settings: dict[str, Any] | None = None
        self._pool: aioredis.ConnectionPool | None = None
        self._timeout_s: float | None = None
        if isinstance(client, aioredis.Redis):
            shared = client.connection_pool
            self._timeout_s = shared.connection_kwargs.get("socket_timeout") or None
            self._pipe_settings = plain_settings(shared)
            if self._pipe_settings is None:
                # Connections of its own without a socket timeout: one timeout covers each
                # batch's connection, send and replies (redis-py would start a task per
                # send and a timer per reply to apply its own).
                self._pool = aioredis.ConnectionPool(
                    connection_class=shared.connection_class,
                    max_connections=shared.max_connections,
                    **{**shared.connection_kwargs, "socket_timeout": None})
        self._pipe: RedisPipe | None = None
        self._connecting: asyncio.Task[RedisPipe] | None = None
        self._pending: list[tuple[Sequence[Command], asyncio.Future[list[Any]]]] = []
        self._flush_scheduled = False
        self._sending: set[asyncio.Task[None]] = set()

    @property
    def writes_resp(self) -> bool:
        """Whether batches go out as RESP bytes (a single Redis), so that a command may be
        given already packed (`redis_pipe.CommandTemplate.packed`); a cluster's pipeline
        takes commands as arguments only."""
        return self._pipe_settings is not None or self._pool is not None

    async def close(self) -> None:
        """Close the batcher's own connections."""
        if self._pipe is not None:
            self._pipe.close()
            self._pipe = None
        if self._pool is not None:
            await self._pool.disconnect()

    async def run(self, commands: Sequence[Command]) -> list[Any]:
        """Send `commands` (with other callers') and return their replies in order; a
        command that failed has its exception in its place."""
        loop = self._loop
        if loop is None:  # the worker's one loop; asking for it costs a getpid() on 3.11
            loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        self._pending.append((commands, future))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        self._flush_scheduled = False
        pipe = self._pipe
        if pipe is not None and pipe.usable:
            # The common case: written now, answered from the transport's callback.
            pipe.send([c for commands, _ in batch for c in commands],
                      lambda outcome: _hand_out(batch, outcome))
            return
        assert self._loop is not None
        task = self._loop.create_task(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[tuple[Sequence[Command], asyncio.Future[list[Any]]]]
                    ) -> None:
        try:
            if self._pipe_settings is not None:
                pipe = await self._connected_pipe()
                replies = await pipe.request([c for commands, _ in batch for c in commands])
            elif self._pool is not None:
                replies = await self._send_raw(self._pool,
                                               [c for commands, _ in batch for c in commands])
            else:
                pipe = self._client.pipeline(transaction=False)
                for commands, _ in batch:
                    for command in commands:
                        pipe.execute_command(*command)
                replies = await pipe.execute(raise_on_error=False)
        except BaseException as exc:  # the connection failed: every caller learns it
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc if isinstance(exc, Exception)
                                         else ConnectionError(str(exc)))
            if not isinstance(exc, Exception):
                raise
            return
        _hand_out(batch, replies)

    async def _connected_pipe(self) -> RedisPipe:
        """The pipelined connection, (re)opened by one caller while the others wait."""
        if self._pipe is not None and self._pipe.usable:
            return self._pipe
        if self._connecting is None:
            assert self._pipe_settings is not None
            self._connecting = asyncio.ensure_future(
                RedisPipe.connect(self._pipe_settings, self._timeout_s))
        connecting = self._connecting
        try:
            pipe = await asyncio.shield(connecting)
        finally:
            if self._connecting is connecting and connecting.done():
                self._connecting = None
        self._pipe = pipe
        return pipe

    async def _send_raw(self, pool: aioredis.ConnectionPool,
                        commands: list[Command]) -> list[Any]:
        """Send the commands packed on one connection and read their replies; an error
        reply takes its command's place. A connection that fails is dropped, not reused."""
        connection = None
        try:
            async with asyncio.timeout(self._timeout_s):
                connection = await pool.get_connection()
                await connection.send_packed_command(pack(commands), check_health=False)
                replies: list[Any] = []
                for _ in commands:
                    try:
                        replies.append(await connection.read_response(timeout=math.inf))
                    except ResponseError as exc:
                        replies.append(exc)
            return replies
        except TimeoutError as exc:
            if connection is not None:
                await connection.disconnect()
            raise RedisTimeoutError("Timeout talking to Redis") from exc
        except BaseException:
            if connection is not None:
                await connection.disconnect()
            raise
        finally:
            if connection is not None:
                await pool.release(connection)


def _hand_out(batch: list[tuple[Sequence[Command], asyncio.Future[list[Any]]]],
              outcome: list[Any] | BaseException) -> None:
    """Give each caller of a batch its own replies, or the exception that failed the
    batch."""
    if isinstance(outcome, BaseException):
        for _, future in batch:
            if not future.done():
                future.set_exception(outcome)
        return
    start = 0
    for commands, future in batch:
        end = start + len(commands)
        if not future.done():
            future.set_result(outcome[start:end])
        start = end
