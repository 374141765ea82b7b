"""Nothing approved is lost: not when the server restarts, not when redis-server is
killed with SIGKILL right after the approvals (AOF with appendfsync always)."""

from __future__ import annotations

import signal
from pathlib import Path

from payauth.clients import AcquirerClient, IssuerClient
from payauth.server import keys
from payauth.v1 import events_pb2
from tests.conftest import (
    authorize_request,
    issue_card,
    open_account,
    random_pan,
    reconcile_redis,
)
from tests.servers import PayauthProcess, RedisProcess


def _approve(target: str, count: int) -> tuple[str, list[str], list]:
    with IssuerClient(target, timeout=10) as issuer, AcquirerClient(target, timeout=10) as acq:
        account = open_account(issuer, 1_000_000)
        pan = random_pan()
        issue_card(issuer, account, pan=pan)
        requests = [authorize_request(pan=pan, amount_minor=100 + i) for i in range(count)]
        responses = [acq.authorize(r) for r in requests]
    assert all(r.iso_response_code == "00" for r in responses)
    return account, [r.authorization_id for r in responses], requests


def test_server_restart_keeps_every_hold(tmp_path: Path) -> None:
    server = PayauthProcess(tmp_path / "var", workers=2).start()
    account, authorizations, requests = _approve(server.target, 20)
    assert server.stop() == 0

    server.start()
    try:
        with IssuerClient(server.target, timeout=10) as issuer, \
                AcquirerClient(server.target, timeout=10) as acquirer:
            got = issuer.get_account(account_id=account)
            assert sorted(h.authorization_id for h in got.holds) == sorted(authorizations)
            assert got.account.held_minor == sum(100 + i for i in range(20))
            # The stored answers survived too: a retry after the restart is a replay.
            replay = acquirer.authorize(requests[0])
            assert replay.replayed and replay.authorization_id == authorizations[0]
    finally:
        assert server.stop() == 0


def test_redis_sigkill_after_approvals_keeps_holds_and_events(tmp_path: Path) -> None:
    redis_server = RedisProcess(tmp_path / "redis").start()
    server = PayauthProcess(tmp_path / "var", redis_url=redis_server.url).start()
    try:
        account, authorizations, _ = _approve(server.target, 30)
        redis_server.kill(signal.SIGKILL)
        redis_server.start()

        with IssuerClient(server.target, timeout=10) as issuer:
            got = issuer.get_account(account_id=account)
        assert sorted(h.authorization_id for h in got.holds) == sorted(authorizations)

        client = redis_server.client()
        entries = client.xrange(keys.events(keys.partition_of(account)))
        events = {}
        for _, fields in entries:
            event = events_pb2.DecisionEvent.FromString(fields[b"event"])
            if event.account_id == account:
                events[fields[b"auth_id"].decode()] = event
        assert sorted(events) == sorted(authorizations)
        client.close()
    finally:
        assert server.stop() == 0
        redis_server.stop()


def test_redis_sigkill_mid_capture_burst_loses_no_acknowledged_capture(tmp_path: Path) -> None:
    import asyncio

    from payauth.clients import AsyncAcquirerClient, PayauthError

    redis_server = RedisProcess(tmp_path / "redis").start()
    server = PayauthProcess(tmp_path / "var", redis_url=redis_server.url, workers=2).start()
    try:
        account, authorizations, _ = _approve(server.target, 80)

        async def burst() -> list[str]:
            acknowledged: list[str] = []
            async with AsyncAcquirerClient(server.target, timeout=5, max_attempts=1) as client:
                async def capture(auth_id: str) -> None:
                    try:
                        await client.capture(request_id=f"cap-{auth_id}",
                                             authorization_id=auth_id, amount_minor=50,
                                             currency="USD", final_capture=True)
                        acknowledged.append(auth_id)
                    except PayauthError:
                        pass

                tasks = []
                for i, auth_id in enumerate(authorizations):
                    tasks.append(asyncio.create_task(capture(auth_id)))
                    if i == 40:
                        await asyncio.sleep(0.02)
                        redis_server.kill(signal.SIGKILL)
                    await asyncio.sleep(0.001)
                await asyncio.gather(*tasks)
            return acknowledged

        acknowledged = asyncio.run(burst())
        assert acknowledged, "no capture was acknowledged before the kill"
        redis_server.start()

        client = redis_server.client()
        p = keys.partition_of(account)
        for auth_id in acknowledged:
            assert client.hget(keys.hold(p, auth_id), "captured") == b"50", auth_id
        captures = {f[b"auth_id"].decode() for _, f in client.xrange(keys.ledger(p, account))
                    if f[b"kind"] == b"capture"}
        assert set(acknowledged) <= captures
        client.close()

        assert reconcile_redis(redis_server.url)[1] == []
    finally:
        assert server.stop() == 0
        redis_server.stop()
