"""The pipelined Redis connection under the shared pipeline (`server/redis_pipe.py`) on a
real redis-server: replies reach their batches in order however the bytes arrive, error
replies keep their place, and a timeout or a dropped connection fails what was in flight
and nothing after it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import hiredis
import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st
from redis.exceptions import AuthenticationError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from payauth.core import pack_command
from payauth.server.batching import PipelineBatcher
from payauth.server.redis_pipe import CommandTemplate, RedisPipe, plain_settings
from tests.conftest import unique
from tests.servers import RedisProcess


def _settings(redis_server: RedisProcess, **extra: object) -> dict:
    settings = plain_settings(aioredis.from_url(redis_server.url).connection_pool)
    assert settings is not None
    return {**settings, **extra}


def test_replies_reach_their_batches_in_order(redis_server: RedisProcess) -> None:
    key = unique("pipe-counter")
    big = unique("pipe-big")

    async def main() -> None:
        pipe = await RedisPipe.connect(_settings(redis_server), 2.0)
        try:
            # 300 batches written back to back before any reply is read.
            futures = [asyncio.ensure_future(pipe.request([("INCR", key), ("GET", key)]))
                       for _ in range(300)]
            replies = await asyncio.gather(*futures)
            assert [r[0] for r in replies] == list(range(1, 301))
            assert [int(r[1]) for r in replies] == list(range(1, 301))
            # A reply far larger than one read, between small ones; an error in its place.
            value = b"x" * 3_000_000
            got = await pipe.request([("SET", big, value), ("GET", big),
                                      ("HMGET", big, "a"), ("FCALL", "no_such_fn", 0),
                                      ("HMGET", unique("none"), "a", "b")])
            assert got[0] == b"OK" and got[1] == value
            assert isinstance(got[2], ResponseError) and "WRONGTYPE" in str(got[2])
            assert isinstance(got[3], ResponseError) and "Function not found" in str(got[3])
            assert got[4] == [None, None]
            assert pipe.usable
        finally:
            pipe.close()
        assert not pipe.usable
        with pytest.raises(RedisConnectionError):
            await pipe.request([("PING",)])

    asyncio.run(main())


@given(name=st.text(min_size=1), args=st.lists(st.text(), max_size=12), key=st.text())
def test_a_templates_packed_command_is_what_hiredis_packs(name: str, args: list[str],
                                                          key: str) -> None:
    template = CommandTemplate(name, *args)
    assert template.packed(key) == hiredis.pack_command(template.command(key))


_WORDS = st.one_of(
    st.text(),
    st.binary(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.integers(),  # beyond 64 bits too
    st.booleans(),
    st.floats(allow_nan=False),
)


def _packed(pack: Callable[[tuple], bytes], args: tuple) -> bytes | type[Exception]:
    try:
        return pack(args)
    except (TypeError, ValueError) as exc:  # hiredis refuses some words (a bool, say)
        return type(exc)


@given(args=st.lists(_WORDS, min_size=1, max_size=80))
def test_pack_command_writes_what_hiredis_writes(args: list) -> None:
    assert _packed(pack_command, tuple(args)) == _packed(hiredis.pack_command, tuple(args))


def test_pack_command_writes_the_commit_as_hiredis_does() -> None:
    commit = ("FCALL", "payauth_authorize_commit", 3, "acct:{p417}:a1", "idem:{p417}:r1",
              "claim:{p9}:r1", "{p417}", "r1", "0f" * 16, "hold", 12345, "0", 1764770000123,
              -1, "", b"\x00\xff" * 200, "žluťoučký kůň", 0, -(2**63), 2**63 - 1)
    assert pack_command(commit) == hiredis.pack_command(commit)


def test_packed_and_unpacked_commands_share_a_batch(redis_server: RedisProcess) -> None:
    key = unique("pipe-packed")
    fields = CommandTemplate("HMGET", "a", "b", "ü")

    async def main() -> None:
        client = aioredis.from_url(redis_server.url, socket_timeout=2)
        batcher = PipelineBatcher(client)
        try:
            assert batcher.writes_resp
            replies = await batcher.run([("HSET", key, "a", "1", "ü", "3"),
                                         fields.packed(key), fields.command(key)])
            assert replies == [2, [b"1", None, b"3"], [b"1", None, b"3"]]
        finally:
            await batcher.close()
            await client.aclose()

    asyncio.run(main())


def test_a_timeout_fails_what_is_in_flight_and_the_batcher_reconnects(
        redis_server: RedisProcess) -> None:
    key = unique("pipe-after")

    async def main() -> None:
        client = aioredis.from_url(redis_server.url, socket_timeout=0.3)
        batcher = PipelineBatcher(client)
        try:
            assert await batcher.run([("SET", key, "1")]) == [b"OK"]
            slow = asyncio.ensure_future(batcher.run([("DEBUG", "SLEEP", "0.8")]))
            await asyncio.sleep(0.05)
            behind = asyncio.ensure_future(batcher.run([("GET", key)]))
            with pytest.raises(RedisTimeoutError):
                await slow
            with pytest.raises(RedisTimeoutError):
                await behind  # written on the same connection, behind the slow one
            await asyncio.sleep(0.9)  # Redis wakes up
            assert await batcher.run([("GET", key)]) == [b"1"]
        finally:
            await batcher.close()
            await client.aclose()

    asyncio.run(main())


def test_a_dropped_connection_fails_in_flight_batches_and_the_next_reconnects(
        redis_server: RedisProcess) -> None:
    key = unique("pipe-drop")

    async def main() -> None:
        client = aioredis.from_url(redis_server.url, socket_timeout=2)
        batcher = PipelineBatcher(client)
        try:
            name = unique("pipe-conn")
            assert await batcher.run([("CLIENT", "SETNAME", name)]) == [b"OK"]
            # BLPOP holds this connection's replies (not Redis) while it is dropped.
            waiting = asyncio.ensure_future(batcher.run([("BLPOP", unique("empty"), "1"),
                                                         ("SET", key, "late")]))
            await asyncio.sleep(0.05)
            killer = aioredis.from_url(redis_server.url)
            clients = (await killer.execute_command("CLIENT", "LIST")).decode()
            ids = [line.split()[0].split("=")[1] for line in clients.splitlines()
                   if f"name={name}" in line]
            assert len(ids) == 1
            await killer.execute_command("CLIENT", "KILL", "ID", ids[0])
            await killer.aclose()
            with pytest.raises(RedisConnectionError):
                await waiting
            assert await batcher.run([("SET", key, "again"), ("GET", key)]) == [b"OK", b"again"]
        finally:
            await batcher.close()
            await client.aclose()

    asyncio.run(main())


def test_auth_and_database_and_what_it_leaves_to_redis_py(tmp_path: Path) -> None:
    server = RedisProcess(tmp_path / "redis").start()
    try:
        admin = server.client()
        admin.config_set("requirepass", "s3cret")
        admin.close()
        url = f"redis://:s3cret@127.0.0.1:{server.port}/3"

        async def main() -> None:
            settings = plain_settings(aioredis.from_url(url).connection_pool)
            assert settings is not None and settings["db"] == 3
            pipe = await RedisPipe.connect(settings, 1.0)
            assert await pipe.request([("SET", "k", "v"), ("CLIENT", "INFO")]) is not None
            info = (await pipe.request([("CLIENT", "INFO")]))[0].decode()
            assert " db=3 " in info
            pipe.close()
            with pytest.raises(AuthenticationError):
                await RedisPipe.connect({**settings, "password": "wrong"}, 1.0)
            with pytest.raises(RedisConnectionError):
                await RedisPipe.connect({**settings, "port": 1}, 1.0)

        asyncio.run(main())
    finally:
        server.stop()
    # TLS or RESP3 keep redis-py's own connections.
    assert plain_settings(aioredis.from_url("rediss://127.0.0.1:6379/0").connection_pool) is None
    assert plain_settings(aioredis.from_url("redis://127.0.0.1:6379/0", protocol=3)
                          .connection_pool) is None
    assert plain_settings(aioredis.from_url("unix:///tmp/r.sock?db=2").connection_pool) == {
        "host": None, "port": None, "path": "/tmp/r.sock", "db": 2, "username": None,
        "password": None, "socket_connect_timeout": None}


def test_a_pool_beyond_plain_keeps_redis_py_connections(redis_server: RedisProcess) -> None:
    """A RESP3 pool (like a TLS one) is not taken over: the batches go out on pooled
    redis-py connections, with the same replies and errors in place."""
    key = unique("pipe-resp3")

    async def main() -> None:
        client = aioredis.from_url(redis_server.url, socket_timeout=2, protocol=3)
        batcher = PipelineBatcher(client)
        try:
            assert batcher.writes_resp
            replies = await asyncio.gather(
                batcher.run([("SET", key, "1"), ("INCR", key)]),
                batcher.run([("FCALL", "no_such_fn", 0), ("HMGET", unique("none"), "a"),
                             CommandTemplate("HMGET", "a").packed(unique("none"))]))
            assert replies[0] == [b"OK", 2]
            assert isinstance(replies[1][0], ResponseError)
            assert replies[1][1] == replies[1][2] == [None]
            assert batcher._pipe is None  # noqa: SLF001 - no pipelined connection was made
        finally:
            await batcher.close()
            await client.aclose()

    asyncio.run(main())
