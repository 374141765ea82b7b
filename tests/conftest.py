"""Shared fixtures: a real redis-server and a real `payauth serve` (two workers)
for the session, real clients over real channels, and builders of valid requests."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import redis
from google.protobuf.timestamp_pb2 import Timestamp

from payauth.clients import AcquirerClient, IssuerClient
from payauth.server.reconcile import Discrepancy, reconcile
from payauth.server.store import Store
from payauth.v1 import authorizer_pb2, common_pb2, issuer_pb2
from tests.servers import PayauthProcess, RedisProcess

# Luhn-valid test PANs (the networks' public test numbers).
TEST_PANS = ("4111111111111111", "5555555555554444", "4012888888881881", "378282246310005",
             "6011111111111117", "5105105105105100", "4000056655665556", "2223003122003222")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def payauth(redis_server: RedisProcess,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[PayauthProcess]:
    server = PayauthProcess(tmp_path_factory.mktemp("payauth"), redis_url=redis_server.url,
                            workers=2).start()
    yield server
    assert server.stop() == 0, server.output()


@pytest.fixture
def redis_client(redis_server: RedisProcess) -> Iterator[redis.Redis]:
    client = redis_server.client()
    yield client
    client.close()


@pytest.fixture
def issuer(payauth: PayauthProcess) -> Iterator[IssuerClient]:
    with IssuerClient(payauth.target, timeout=5) as client:
        yield client


@pytest.fixture
def acquirer(payauth: PayauthProcess) -> Iterator[AcquirerClient]:
    with AcquirerClient(payauth.target, timeout=5) as client:
        yield client


def unique(prefix: str) -> str:
    """An identifier no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def now_timestamp() -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(datetime.now(UTC))
    return ts


def authorize_request(**fields: object) -> authorizer_pb2.AuthorizeRequest:
    """A valid AuthorizeRequest with a fresh request_id; `fields` override."""
    values: dict[str, object] = dict(
        request_id=unique("req"),
        merchant_id="merchant-1",
        mcc="5411",
        merchant_country="US",
        amount_minor=1000,
        currency="USD",
        channel=common_pb2.CHANNEL_POS,
        payment_method=common_pb2.PAYMENT_METHOD_CARD,
        three_ds=common_pb2.THREE_DS_RESULT_NOT_ATTEMPTED,
        timestamp=now_timestamp(),
    )
    values.update(fields)
    return authorizer_pb2.AuthorizeRequest(**values)


def open_account(issuer: IssuerClient, balance: int, currency: str = "USD",
                 kind: int = common_pb2.ACCOUNT_KIND_DEBIT, limit: int = 0,
                 status: int = common_pb2.ACCOUNT_STATUS_ACTIVE) -> str:
    """Create an account through the API; return its id."""
    account_id = unique("acct")
    issuer.upsert_account(issuer_pb2.UpsertAccountRequest(
        account_id=account_id, kind=kind, status=status, currency=currency,
        balance_minor=balance, credit_limit_minor=limit))
    return account_id


def issue_card(issuer: IssuerClient, account_id: str, pan: str = "",
               status: int = common_pb2.CARD_STATUS_ACTIVE, expiry: tuple[int, int] = (2099, 12),
               ) -> str:
    """Create a card (by token, or by PAN when given) through the API; return its token."""
    response = issuer.upsert_card(issuer_pb2.UpsertCardRequest(
        card_token="" if pan else unique("card"), pan=pan, account_id=account_id,
        status=status, expiry_year=expiry[0], expiry_month=expiry[1]))
    return response.card.card_token


def random_pan() -> str:
    """A Luhn-valid 16-digit PAN in the 4000-00 test range, unique per call."""
    from stdnum import luhn

    body = "400000" + f"{uuid.uuid4().int % 10**9:09d}"
    return body + luhn.calc_check_digit(body)


def reconcile_redis(url: str) -> tuple[int, list[Discrepancy]]:
    """`payauth reconcile` on the Redis at `url`: what it checked and what does not balance."""

    async def run() -> tuple[int, list[Discrepancy]]:
        store = Store.connect(url, cluster=False, timeout_s=10)
        try:
            return await reconcile(store)
        finally:
            await store.close()

    return asyncio.run(run())
