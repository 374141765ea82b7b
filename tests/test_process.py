"""`payauth serve` as an operator runs it: one owner per data folder, health and
reflection, a SIGTERM that drains, and UNIMPLEMENTED answers that say what is missing."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from payauth.clients import (
    AcquirerClient,
    AsyncAcquirerClient,
    IssuerClient,
    PayauthError,
    UnimplementedError,
)
from payauth.server.app import GRPC_ENVIRONMENT, set_grpc_environment
from tests.conftest import authorize_request, issue_card, open_account
from tests.servers import PayauthProcess, wait_until


def test_second_server_on_the_same_data_folder_refuses(tmp_path: Path) -> None:
    first = PayauthProcess(tmp_path / "var").start()
    try:
        second = PayauthProcess(tmp_path / "var")
        assert second.spawn().wait(30) == 2
        assert "is in use by another payauth serve" in second.output()
        # The first one is unharmed.
        with IssuerClient(first.target) as issuer:
            open_account(issuer, 1)
    finally:
        assert first.stop() == 0


def test_health_and_reflection(payauth: PayauthProcess) -> None:
    with grpc.insecure_channel(payauth.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "payauth.v1.Authorizer", "payauth.v1.IssuerControl",
                        "payauth.v1.Loyalty"):
            answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING

        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        requests = [reflection_pb2.ServerReflectionRequest(list_services=""),
                    reflection_pb2.ServerReflectionRequest(
                        file_containing_symbol="payauth.v1.Authorizer")]
        answers = list(reflection.ServerReflectionInfo(iter(requests), timeout=5))
        services = {s.name for s in answers[0].list_services_response.service}
        assert {"payauth.v1.Authorizer", "payauth.v1.IssuerControl", "payauth.v1.Loyalty",
                "grpc.health.v1.Health"} <= services
        files = [descriptor_pb2.FileDescriptorProto.FromString(raw) for raw in
                 answers[1].file_descriptor_response.file_descriptor_proto]
        methods = {m.name for f in files for s in f.service if s.name == "Authorizer"
                   for m in s.method}
        assert {"Authorize", "AuthorizeStream", "Capture", "Reverse", "Refund"} <= methods


def _environment(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(entry.split("=", 1) for entry in raw.decode().split("\0") if "=" in entry)


def _worker_pids(supervisor_pid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue  # not a process, or gone
        if int(stat.rsplit(")", 1)[1].split()[1]) == supervisor_pid and b"spawn_main" in cmdline:
            pids.append(int(entry.name))
    return pids


def test_workers_start_with_payauths_grpc_core_settings(payauth: PayauthProcess) -> None:
    """gRPC reads its core settings from the environment as it starts in a process, so the
    supervisor spawns its workers with them."""
    assert payauth.process is not None
    workers = _worker_pids(payauth.process.pid)
    assert len(workers) == 2
    for pid in workers:
        environment = _environment(pid)
        for name, value in GRPC_ENVIRONMENT.items():
            assert environment.get(name) == value


def test_an_operators_own_grpc_setting_is_kept() -> None:
    environ = {"GRPC_EXPERIMENTS": "event_engine_listener", "HOME": "/root"}
    set_grpc_environment(environ)
    assert environ == {"GRPC_EXPERIMENTS": "event_engine_listener", "HOME": "/root"}
    environ = {"HOME": "/root"}
    set_grpc_environment(environ)
    assert environ == {**GRPC_ENVIRONMENT, "HOME": "/root"}


def test_rpcs_of_later_parts_say_what_is_missing(acquirer: AcquirerClient,
                                                 payauth: PayauthProcess) -> None:
    with pytest.raises(UnimplementedError, match="merchant collaboration"):
        acquirer.upsert_merchant_policy()
    with IssuerClient(payauth.target) as issuer, pytest.raises(UnimplementedError,
                                                               match="Backtest"):
        issuer.backtest()


def test_sigterm_drains_in_flight_calls_and_exits_0(tmp_path: Path) -> None:
    server = PayauthProcess(tmp_path / "var", workers=2, extra=("--grace", "5")).start()
    with IssuerClient(server.target) as issuer:
        account = open_account(issuer, 10**12)
        card = issue_card(issuer, account)

    statuses: list[grpc.StatusCode] = []
    watch_statuses: list[int] = []

    def watch_health() -> None:
        with grpc.insecure_channel(server.target) as channel:
            stream = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service="payauth.v1.Authorizer"), timeout=30)
            try:
                for answer in stream:
                    watch_statuses.append(answer.status)
            except grpc.RpcError:
                pass

    watcher = threading.Thread(target=watch_health)
    watcher.start()
    wait_until(lambda: bool(watch_statuses), 10, "the health watch")

    async def load() -> int:
        approved = 0
        async with AsyncAcquirerClient(server.target, timeout=10, max_attempts=1) as client:
            async def one() -> None:
                nonlocal approved
                try:
                    response = await client.authorize(
                        authorize_request(card_token=card, amount_minor=1))
                    approved += response.iso_response_code == "00"
                    statuses.append(grpc.StatusCode.OK)
                except PayauthError as exc:
                    statuses.append(exc.code)

            tasks = []
            for i in range(400):
                tasks.append(asyncio.create_task(one()))
                if i == 100:
                    await asyncio.sleep(0.05)
                    server.process.send_signal(15)
                await asyncio.sleep(0.001)
            await asyncio.gather(*tasks)
        return approved

    approved = asyncio.run(load())
    assert server.process.wait(30) == 0
    watcher.join(30)
    # Every call either completed or was refused before it was handled: UNAVAILABLE once the
    # port closed, CANCELLED for calls still queued when the drain began. Neither touched
    # any state (the hold count below proves it), so both are safe to retry.
    assert set(statuses) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE,
                             grpc.StatusCode.CANCELLED}
    assert statuses.count(grpc.StatusCode.OK) > 0
    assert watch_statuses[0] == health_pb2.HealthCheckResponse.SERVING
    assert health_pb2.HealthCheckResponse.NOT_SERVING in watch_statuses

    server.start()
    try:
        with IssuerClient(server.target) as issuer:
            got = issuer.get_account(account_id=account)
        assert got.hold_count == approved == statuses.count(grpc.StatusCode.OK)
    finally:
        assert server.stop() == 0


def test_ctrl_c_drains_the_server_before_its_redis_stops(tmp_path: Path) -> None:
    """A terminal's Ctrl-C signals the whole foreground process group. The embedded Redis
    runs in a session of its own, so the SIGINT reaches the server, which drains and then
    stops Redis with SIGTERM, never Redis directly under calls still draining."""
    import os
    import signal

    server = PayauthProcess(tmp_path / "var", workers=2).start(process_group=True)
    redis_dir = tmp_path / "var" / "redis"
    redis_pid = int((redis_dir / "redis.pid").read_text())
    assert os.getsid(redis_pid) == redis_pid  # a session of its own
    assert os.getpgid(redis_pid) != server.process.pid
    with IssuerClient(server.target) as issuer:
        open_account(issuer, 1)
    os.killpg(server.process.pid, signal.SIGINT)
    assert server.process.wait(30) == 0, server.output()
    redis_log = (redis_dir / "redis.log").read_text()
    assert "Received SIGTERM scheduling shutdown" in redis_log
    assert "SIGINT" not in redis_log


def test_a_killed_server_leaves_no_orphans(tmp_path: Path) -> None:
    import os
    import signal
    import socket

    server = PayauthProcess(tmp_path / "var", workers=2).start()
    redis_pid = int((tmp_path / "var" / "redis" / "redis.pid").read_text())
    server.stop(signal.SIGKILL)

    def port_closed() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", server.port)) != 0

    wait_until(port_closed, 20, "the workers to exit with their supervisor")
    wait_until(lambda: not os.path.exists(f"/proc/{redis_pid}"), 20,
               "the embedded redis-server to exit with its supervisor")
    server.start()  # the data folder is free again, and nothing was lost on the way
    assert server.stop() == 0
