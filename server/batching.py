"""One Redis pipeline for all the requests in flight on an event-loop turn.

redis-py's client-side cost of a round trip (building the pipeline, packing,
parsing, taking a connection from the pool) is paid per pipeline, not per
command. The requests a worker is deciding at once each need their own small
pipeline at the same moment; this batcher collects the commands of every
request that asks during one turn of the event loop, sends them as one
pipeline, and hands each request its own replies. The requests' round trips
to Redis are unchanged (each still waits for one reply), only shared.

On a single Redis the batch goes out on one pooled connection, packed by
hiredis's C encoder (the same bytes as redis-py's pure-Python asyncio packer,
seven times faster), and its replies are read back raw under one timeout for
the whole batch: redis-py's Pipeline object adds its command stack, response
callbacks, retry bookkeeping and a timeout per reply, for nothing these
commands need (HMGET, GET and FCALL replies are used as they come). A Redis
Cluster keeps the Pipeline, which routes each command to its node.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

Command = tuple[Any, ...]


class PipelineBatcher:
    """Sends the commands of concurrent callers in one pipeline per loop turn."""

    def __init__(self, client: aioredis.Redis | aioredis.RedisCluster) -> None:
        self._client = client
        self._raw = isinstance(client, aioredis.Redis)
        self._loop: asyncio.AbstractEventLoop | None = None
        if self._raw:
            # Connections of its own without a socket timeout: one timeout covers each
            # batch's connection, send and replies (redis-py would start a task per send
            # and a timer per reply to apply its own).
            shared = client.connection_pool
            self._timeout_s = shared.connection_kwargs.get("socket_timeout") or None
            self._pool = aioredis.ConnectionPool(
                connection_class=shared.connection_class,
                max_connections=shared.max_connections,
                **{**shared.connection_kwargs, "socket_timeout": None})
        self._pending: list[tuple[Sequence[Command], asyncio.Future[list[Any]]]] = []
        self._flush_scheduled = False
        self._sending: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        """Close the batcher's own connections."""
        if self._raw:
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
        assert self._loop is not None
        task = self._loop.create_task(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[tuple[Sequence[Command], asyncio.Future[list[Any]]]]
                    ) -> None:
        try:
            if self._raw:
                replies = await self._send_raw([c for commands, _ in batch for c in commands])
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
        start = 0
        for commands, future in batch:
            end = start + len(commands)
            if not future.done():
                future.set_result(replies[start:end])
            start = end

    async def _send_raw(self, commands: list[Command]) -> list[Any]:
        """Send the commands packed on one connection and read their replies; an error
        reply takes its command's place. A connection that fails is dropped, not reused."""
        pool = self._pool
        connection = None
        try:
            async with asyncio.timeout(self._timeout_s):
                connection = await pool.get_connection()
                await connection.send_packed_command(
                    b"".join([hiredis.pack_command(command) for command in commands]),
                    check_health=False)
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
