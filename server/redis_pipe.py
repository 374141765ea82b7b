"""One pipelined connection to one Redis: batches of commands go out as they come, replies
resolve them in order.

Redis answers a connection's commands in the order it received them, so a client needs no
connection per request in flight: it writes each batch as soon as it has one and keeps a
queue of the batches waiting for replies; the bytes that arrive are parsed by hiredis (C)
in the transport's callback and complete the batch at the head of the queue. Per round
trip that is one write and one read callback, with no task, no pool checkout and no
per-reply await, which is most of what a round trip cost a worker through redis-py's
connection (its StreamReader, a task per send, a timeout per reply). Redis, in turn, reads
many batches in one read of one socket.

Error replies are converted as redis-py converts them (`ResponseError` and its kin) and take
their command's place. A batch not answered within the timeout, or a connection that
drops, fails every batch in flight (their commands may or may not have run, as with any
client) and the next batch connects again.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Sequence
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis._parsers.base import BaseParser
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse
from redis.exceptions import TimeoutError as RedisTimeoutError

from payauth.core import pack_command

# A command as its arguments, or as bytes already encoded in RESP (`CommandTemplate.packed`).
Command = tuple[Any, ...] | bytes
# Told a batch's outcome: its replies in order, or the exception that failed it.
Done = Callable[[list[Any] | Exception], None]

# The connection settings this client honours; a pool configured with anything else
# (TLS, RESP3, credential providers ...) keeps redis-py's own connections.
_PLAIN_KWARGS = frozenset({
    "host", "port", "path", "db", "username", "password", "socket_timeout",
    "socket_connect_timeout", "himport_registry", "maint_notifications_pool_handler",
    "maint_notifications_config", "orig_host_address", "orig_socket_timeout",
    "orig_socket_connect_timeout", "client_name", "lib_name", "lib_version",
})


def plain_settings(pool: aioredis.ConnectionPool) -> dict[str, Any] | None:
    """Where and how to connect, from a redis-py pool; None when it asks for more than a
    plain TCP or unix socket connection with AUTH and SELECT."""
    connection_kwargs = pool.connection_kwargs
    if pool.connection_class not in (aioredis.Connection, aioredis.UnixDomainSocketConnection):
        return None
    if not set(connection_kwargs) <= _PLAIN_KWARGS or connection_kwargs.get("protocol"):
        return None
    if "path" not in connection_kwargs and "host" not in connection_kwargs:
        return None
    return {key: connection_kwargs.get(key) for key in
            ("host", "port", "path", "db", "username", "password", "socket_connect_timeout")}


def pack(commands: Sequence[Command]) -> bytes:
    """`commands` in RESP, as Redis reads them: tuples packed by `payauth.core.pack_command`
    (C, the bytes hiredis would write), bytes as they are."""
    return b"".join([c if c.__class__ is bytes else pack_command(c) for c in commands])


class CommandTemplate:
    """A command whose arguments are all fixed but its key (the second word), with the fixed
    ones encoded in RESP once: `packed(key)` formats one key into them, where hiredis packs
    every argument again (an HMGET of nine fields: about a quarter of the cost). The reads
    of an authorization are four such HMGETs."""

    __slots__ = ("name", "args", "_head", "_tail")

    def __init__(self, name: str, *args: str) -> None:
        self.name = name
        self.args = args
        self._head = b"*%d\r\n" % (len(args) + 2) + _bulk(name.encode())
        self._tail = b"".join([_bulk(arg.encode()) for arg in args])

    def command(self, key: str) -> tuple[str, ...]:
        """The command for `key`, as arguments (for any client)."""
        return (self.name, key, *self.args)

    def packed(self, key: str) -> bytes:
        """The command for `key` in RESP, for a connection that writes bytes (`pack`)."""
        encoded = key.encode()
        return b"%s$%d\r\n%s\r\n%s" % (self._head, len(encoded), encoded, self._tail)


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


class _Batch:
    """Commands written together: their count, the replies read so far, who is told, and
    when (loop time) they must have been answered."""

    __slots__ = ("size", "replies", "done", "deadline")

    def __init__(self, size: int, done: Done, deadline: float) -> None:
        self.size = size
        self.replies: list[Any] = []
        self.done = done
        self.deadline = deadline


class RedisPipe(asyncio.Protocol):
    """A pipelined connection (see the module); made by `RedisPipe.connect`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout_s: float | None) -> None:
        self._loop = loop
        self._timeout_s = timeout_s
        self._reader = hiredis.Reader(protocolError=InvalidResponse,
                                      replyError=BaseParser.parse_error)
        self._waiting: collections.deque[_Batch] = collections.deque()
        self._transport: asyncio.Transport | None = None
        self._lost: Exception | None = None
        # One timer watches the oldest batch in flight (the others are younger), instead
        # of a timer made and cancelled per batch.
        self._watchdog: asyncio.TimerHandle | None = None

    @classmethod
    async def connect(cls, settings: dict[str, Any], timeout_s: float | None) -> RedisPipe:
        """Open the connection, authenticate and select the database."""
        loop = asyncio.get_running_loop()
        pipe = cls(loop, timeout_s)
        connect_timeout = settings.get("socket_connect_timeout") or timeout_s
        try:
            async with asyncio.timeout(connect_timeout):
                if settings.get("path"):
                    await loop.create_unix_connection(lambda: pipe, settings["path"])
                else:
                    await loop.create_connection(lambda: pipe, settings["host"],
                                                 settings.get("port") or 6379)
        except TimeoutError as exc:
            raise RedisTimeoutError("Timeout connecting to Redis") from exc
        except OSError as exc:
            raise RedisConnectionError(f"Error connecting to Redis: {exc}") from exc
        hello: list[Command] = []
        if settings.get("password"):
            hello.append(("AUTH", settings["username"], settings["password"])
                         if settings.get("username") else ("AUTH", settings["password"]))
        if settings.get("db"):
            hello.append(("SELECT", settings["db"]))
        if hello:
            for reply in await pipe.request(hello):
                if isinstance(reply, Exception):
                    pipe.close()
                    raise reply
        return pipe

    @property
    def usable(self) -> bool:
        """Whether batches can still be sent (not closed, not lost)."""
        return self._transport is not None and self._lost is None

    def send(self, commands: Sequence[Command], done: Done) -> None:
        """Write `commands` now; `done` is called, from the transport's callback, with
        their replies in order (an error reply as its exception) or with what failed."""
        if not self.usable:
            done(self._lost or RedisConnectionError("connection closed"))
            return
        timeout_s = self._timeout_s
        batch = _Batch(len(commands), done,
                       self._loop.time() + timeout_s if timeout_s is not None else 0.0)
        if timeout_s is not None and self._watchdog is None:
            self._watchdog = self._loop.call_at(batch.deadline, self._watch)
        self._waiting.append(batch)
        assert self._transport is not None
        self._transport.write(pack(commands))

    async def request(self, commands: Sequence[Command]) -> list[Any]:
        """`send`, awaited."""
        future: asyncio.Future[list[Any]] = self._loop.create_future()

        def done(outcome: list[Any] | Exception) -> None:
            if future.done():
                return
            if isinstance(outcome, Exception):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

        self.send(commands, done)
        return await future

    def close(self) -> None:
        """Close the connection; batches still waiting fail."""
        self._fail(RedisConnectionError("connection closed"))

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio's classes; they implement them.
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        try:
            reader.feed(data)
            waiting = self._waiting
            while waiting:
                batch = waiting[0]
                replies = batch.replies
                while len(replies) < batch.size:
                    reply = reader.gets()
                    if reply is False:  # the rest has not arrived yet
                        return
                    replies.append(reply)
                waiting.popleft()
                batch.done(replies)
            if reader.gets() is not False:
                raise InvalidResponse("a reply nobody asked for")
        except InvalidResponse as exc:
            self._fail(RedisConnectionError(f"Redis protocol error: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._fail(RedisConnectionError(f"Connection to Redis lost: {exc}" if exc
                                        else "Connection to Redis closed"))

    # -- failure ----------------------------------------------------------------------

    def _watch(self) -> None:
        """At a batch's deadline: fail everything when the oldest batch in flight is past
        its own, else look again at its deadline."""
        self._watchdog = None
        if not self._waiting or self._lost is not None:
            return
        oldest = self._waiting[0]
        if self._loop.time() >= oldest.deadline:
            self._fail(RedisTimeoutError("Timeout talking to Redis"))
        else:
            self._watchdog = self._loop.call_at(oldest.deadline, self._watch)

    def _fail(self, exc: Exception) -> None:
        """Mark the connection lost, drop it, and fail every batch in flight."""
        if self._lost is None:
            self._lost = exc
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.abort()
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        waiting, self._waiting = self._waiting, collections.deque()
        for batch in waiting:
            batch.done(exc)
