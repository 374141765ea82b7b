"""Concurrent authorizations over several connections (both workers): the commit is
atomic, so funds are never over-drawn and a request_id is decided once."""

from __future__ import annotations

import asyncio
from collections import Counter

import redis

from payauth.clients import AlreadyExistsError, AsyncAcquirerClient, IssuerClient
from payauth.server import keys
from payauth.v1 import authorizer_pb2
from tests.conftest import authorize_request, issue_card, open_account
from tests.servers import PayauthProcess

CHANNELS = 4
# Separate TCP connections, so SO_REUSEPORT spreads them over the workers.
OWN_CONNECTION = (("grpc.use_local_subchannel_pool", 1),)
# Pairs of requests sharing a request_id: enough that some pair meets between read and commit.
PAIRS = 150


async def _authorize_all(target: str, requests: list[authorizer_pb2.AuthorizeRequest],
                         return_exceptions: bool = False) -> list:
    clients = [AsyncAcquirerClient(target, timeout=30, options=OWN_CONNECTION)
               for _ in range(CHANNELS)]
    try:
        return await asyncio.gather(*(clients[i % CHANNELS].authorize(request)
                                      for i, request in enumerate(requests)),
                                    return_exceptions=return_exceptions)
    finally:
        for client in clients:
            await client.close()


def _events(client: redis.Redis, account_id: str) -> int:
    return client.xlen(keys.events(keys.partition_of(account_id)))


def test_200_concurrent_authorizations_on_funds_for_100(
        payauth: PayauthProcess, issuer: IssuerClient, redis_client: redis.Redis) -> None:
    account = open_account(issuer, 100 * 1_000)
    card = issue_card(issuer, account)
    events_before = _events(redis_client, account)
    requests = [authorize_request(card_token=card, amount_minor=1_000) for _ in range(200)]

    responses = asyncio.run(_authorize_all(payauth.target, requests))

    assert Counter(r.iso_response_code for r in responses) == {"00": 100, "51": 100}
    approved = [r for r in responses if r.iso_response_code == "00"]
    assert len({r.authorization_id for r in approved}) == 100
    got = issuer.get_account(account_id=account)
    assert got.account.balance_minor == 100_000
    assert got.account.held_minor == 100_000
    assert got.account.available_minor == 0
    assert sorted(h.authorization_id for h in got.holds) == sorted(
        r.authorization_id for r in approved)
    assert _events(redis_client, account) - events_before == 200


def test_50_concurrent_duplicates_make_one_hold(
        payauth: PayauthProcess, issuer: IssuerClient, redis_client: redis.Redis) -> None:
    account = open_account(issuer, 10_000)
    card = issue_card(issuer, account)
    events_before = _events(redis_client, account)
    request = authorize_request(card_token=card, amount_minor=2_500)

    responses = asyncio.run(_authorize_all(payauth.target, [request] * 50))

    assert Counter(r.replayed for r in responses) == {False: 1, True: 49}
    assert {(r.iso_response_code, r.authorization_id, r.approved_amount_minor)
            for r in responses} == {("00", responses[0].authorization_id, 2_500)}
    got = issuer.get_account(account_id=account)
    assert (got.account.held_minor, len(got.holds)) == (2_500, 1)
    assert _events(redis_client, account) - events_before == 1


def test_one_request_id_sent_concurrently_with_two_bodies_is_decided_once(
        payauth: PayauthProcess, issuer: IssuerClient) -> None:
    # Two cards of two accounts (two partitions): both requests can pass the read before
    # either is bound, and whichever binds the request_id first is decided; the other is
    # refused, whether at its read or at its commit, and holds nothing.
    first, second = open_account(issuer, 100_000), open_account(issuer, 100_000)
    first_card, second_card = issue_card(issuer, first), issue_card(issuer, second)
    requests = []
    for _ in range(PAIRS):
        request = authorize_request(card_token=first_card, amount_minor=100)
        requests.append(request)
        requests.append(authorize_request(card_token=second_card, amount_minor=100,
                                          request_id=request.request_id,
                                          timestamp=request.timestamp))

    outcomes = asyncio.run(_authorize_all(payauth.target, requests, return_exceptions=True))

    for a, b in zip(outcomes[::2], outcomes[1::2], strict=True):
        assert sorted(type(o).__name__ for o in (a, b)) == [
            "AlreadyExistsError", "AuthorizeResponse"], (a, b)
        decided = a if isinstance(b, AlreadyExistsError) else b
        assert (decided.iso_response_code, decided.approved_amount_minor) == ("00", 100)
    held = [issuer.get_account(account_id=a).account.held_minor for a in (first, second)]
    assert sum(held) == PAIRS * 100
