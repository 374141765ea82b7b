"""A PAN is hashed on arrival and found nowhere afterwards: not in Redis, not in the
server's log, not in any answer."""

from __future__ import annotations

import hmac

import pytest
import redis
from hypothesis import example, given
from hypothesis import strategies as st
from stdnum import luhn

from payauth.clients import AcquirerClient, InvalidArgumentError, IssuerClient
from payauth.core import KeyedHash
from payauth.server.pan import PanHasher, load_or_create_key, luhn_valid, pan_problem
from tests.conftest import authorize_request, issue_card, open_account, random_pan
from tests.servers import PayauthProcess


@given(key=st.binary(min_size=32, max_size=256), message=st.binary(max_size=64))
def test_keyed_hash_is_hmac_sha256(key: bytes, message: bytes) -> None:
    assert KeyedHash(key).digest(message) == hmac.digest(key, message, "sha256")


def test_keyed_hash_refuses_short_keys() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        KeyedHash(b"short")


@given(digits=st.text(alphabet="0123456789", min_size=1, max_size=25))
@example(digits="4111111111111111")
@example(digits="79927398713")
@example(digits="0")
def test_luhn_check_agrees_with_python_stdnum(digits: str) -> None:
    assert luhn_valid(digits) == luhn.is_valid(digits)


@given(body=st.text(alphabet="0123456789", min_size=11, max_size=18))
def test_a_pan_with_its_check_digit_passes_and_every_other_digit_fails(body: str) -> None:
    check = luhn.calc_check_digit(body)
    for digit in "0123456789":
        assert luhn_valid(body + digit) == (digit == check)


def test_pan_problems_do_not_quote_the_pan() -> None:
    for pan in ("4111111111111112", "41111111", "4111-1111-1111-1111"):
        problem = pan_problem(pan)
        assert problem and pan not in problem
    assert pan_problem("4111111111111111") is None


def test_generated_key_is_persisted_private(tmp_path) -> None:
    path = tmp_path / "pan.key"
    key = load_or_create_key(path)
    assert load_or_create_key(path) == key
    assert path.stat().st_mode & 0o777 == 0o600
    assert "secret" in repr(PanHasher(key)) and key.hex() not in repr(PanHasher(key))


def test_no_pan_in_redis_or_logs(payauth: PayauthProcess, issuer: IssuerClient,
                                 acquirer: AcquirerClient, redis_client: redis.Redis) -> None:
    account = open_account(issuer, 10_000)
    pans = [random_pan() for _ in range(3)]
    for pan in pans:
        issue_card(issuer, account, pan=pan)
        acquirer.authorize(authorize_request(pan=pan, amount_minor=10))
        acquirer.authorize(authorize_request(pan=pan, amount_minor=10**6))
    unknown = random_pan()
    acquirer.authorize(authorize_request(pan=unknown))
    with pytest.raises(InvalidArgumentError):
        acquirer.authorize(authorize_request(pan=unknown, amount_minor=-1))
    pans.append(unknown)

    dump = bytearray()
    for key in redis_client.scan_iter(count=1000):
        dump += key
        kind = redis_client.type(key)
        if kind == b"hash":
            for field, value in redis_client.hgetall(key).items():
                dump += field + value
        elif kind == b"string":
            dump += redis_client.get(key) or b""
        elif kind == b"stream":
            for _, fields in redis_client.xrange(key):
                for field, value in fields.items():
                    dump += field + value
        elif kind == b"zset":
            for member in redis_client.zrange(key, 0, -1):
                dump += member
    log = payauth.output()
    for pan in pans:
        assert pan.encode() not in dump
        assert pan not in log
