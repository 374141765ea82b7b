"""The e2e benchmark's empty handler, the yardstick of its targets: it answers `Authorize` with
the request's request_id and, as `empty_redis`, first waits for Redis as the design has every
Authorize wait (brief §4): a round trip, then a write that Redis answers once its AOF holds it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import redis

from payauth.v1 import authorizer_pb2_grpc
from tests.conftest import authorize_request, unique
from tests.servers import RedisProcess, free_port, wait_until

REPO_ROOT = Path(__file__).resolve().parents[1]
WRITES_KEY = "bench:empty_redis:writes"


def _calls(client: redis.Redis, command: str) -> int:
    return int(client.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


def test_empty_redis_answers_each_call_after_a_round_trip_and_one_write(
        redis_server: RedisProcess, redis_client: redis.Redis, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "empty_redis.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.e2e.empty_server", "--port", str(port),
             "--workers", "1", "--redis-url", redis_server.url, "--round-trips", "2"],
            cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: "empty handler serving on" in log.read_text(), 60,
                   "the empty handler serving")
        redis_client.delete(WRITES_KEY)
        pings = _calls(redis_client, "ping")
        request_ids = [unique("empty") for _ in range(5)]
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = authorizer_pb2_grpc.AuthorizerStub(channel)
            answers = [stub.Authorize(authorize_request(request_id=r), timeout=10)
                       for r in request_ids]
        assert [a.request_id for a in answers] == request_ids
        assert int(redis_client.get(WRITES_KEY)) == len(request_ids)  # one write per call
        assert _calls(redis_client, "ping") - pings >= len(request_ids)
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0, log.read_text()
