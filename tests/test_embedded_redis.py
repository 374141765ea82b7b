"""The private redis-server of `payauth serve`: durable as decided, and telling what held it."""

from __future__ import annotations

from pathlib import Path

import redis

from payauth.server.embedded_redis import LATENCY_MONITOR_THRESHOLD_MS, EmbeddedRedis

# A script that keeps Redis's main thread busy for about 150 ms.
_BUSY_150_MS = """
local started = redis.call('TIME')
local start_us = started[1] * 1000000 + started[2]
while true do
  local now = redis.call('TIME')
  if now[1] * 1000000 + now[2] - start_us >= 150000 then return 1 end
end
"""


def test_embedded_redis_syncs_every_write_and_records_what_held_it(tmp_path: Path) -> None:
    embedded = EmbeddedRedis(tmp_path / "redis")
    embedded.start()
    try:
        client = redis.Redis.from_url(embedded.url, socket_timeout=5)
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("appendfsync") == {"appendfsync": "always"}
        assert client.config_get("latency-monitor-threshold") == {
            "latency-monitor-threshold": str(LATENCY_MONITOR_THRESHOLD_MS)}
        client.eval(_BUSY_150_MS, 0)
        events = {e[0].decode(): e[3] for e in client.execute_command("LATENCY", "LATEST")}
        assert events["command"] >= 150
        client.close()
    finally:
        embedded.stop()
