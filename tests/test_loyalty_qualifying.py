"""Tier qualification kept as a running sum: the Functions' sum over any window equals the
sum of the day buckets a model keeps, on generated sequences of credits on past, present and
future days and reads at any day (the Functions called directly on a real redis-server)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from payauth.server import keys
from payauth.server.store import LIBRARY_CODE
from tests.conftest import unique
from tests.servers import RedisProcess

PARTITION = 5
TAG = keys.tag(PARTITION)


@pytest.fixture(scope="module")
def rclient(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redis.Redis]:
    server = RedisProcess(tmp_path_factory.mktemp("qualifying-redis")).start()
    client = server.client()
    client.function_load(LIBRARY_CODE, replace=True)
    yield client
    client.close()
    server.stop()


def credit(client: redis.Redis, program: str, member: str, day: int, points: int,
           window: int) -> None:
    """An adjustment that counts toward tiers, on `day`."""
    client.fcall("payauth_loyalty_adjust", 1, keys.member(PARTITION, program, member), TAG,
                 program, member, unique("adj"), "fp", points, "test", "1", "0", "", "",
                 day, window, 0, 1, 1_700_000_000_000, 60_000, 0)


def read_sum(client: redis.Redis, program: str, member: str, day: int, window: int) -> int:
    raw = client.fcall("payauth_loyalty_read", 1, keys.member(PARTITION, program, member),
                       TAG, program, member, "", day, window)
    return int(raw[-1])


operations = st.lists(
    st.one_of(
        st.tuples(st.just("credit"), st.integers(0, 80), st.integers(1, 500)),
        st.tuples(st.just("read"), st.integers(0, 120), st.just(0)),
    ),
    min_size=1, max_size=40)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(ops=operations, window=st.sampled_from([1, 7, 30]))
def test_the_running_sum_equals_the_buckets(rclient: redis.Redis, ops: list,
                                            window: int) -> None:
    program, member = "q", unique("m")
    rclient.fcall("payauth_loyalty_enroll", 1, keys.member(PARTITION, program, member), TAG,
                  program, member, "", 0, 1, "")
    buckets: dict[int, int] = {}
    for op, day, points in ops:
        if op == "credit":
            credit(rclient, program, member, day, points, window)
            buckets[day] = buckets.get(day, 0) + points
            if len(buckets) > window + 8:  # the Function drops days no window reaches
                for d in [d for d in buckets if d <= day - window - 2]:
                    del buckets[d]
        else:
            want = sum(p for d, p in buckets.items() if day - window < d <= day)
            assert read_sum(rclient, program, member, day, window) == want, (day, buckets)
