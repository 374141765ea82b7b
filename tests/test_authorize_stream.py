"""AuthorizeStream: every request answered once, by request_id, in any order; refusals
answered on the stream; the server stops reading when the client stops reading."""

from __future__ import annotations

import asyncio
from collections import Counter

import redis

from payauth.clients import AsyncAcquirerClient, IssuerClient
from payauth.server import keys
from payauth.v1 import authorizer_pb2
from tests.conftest import authorize_request, issue_card, open_account
from tests.servers import PayauthProcess


def test_stream_answers_every_request_once(payauth: PayauthProcess,
                                           issuer: IssuerClient) -> None:
    account = open_account(issuer, 100 * 1_000)
    card = issue_card(issuer, account)
    funded = [authorize_request(card_token=card, amount_minor=1_000) for _ in range(200)]
    invalid = [authorize_request(card_token=card, amount_minor=-1) for _ in range(5)]
    reused = authorize_request(card_token=card, amount_minor=7,
                               request_id=funded[0].request_id)
    requests = funded + invalid + [reused]

    async def run() -> list[authorizer_pb2.AuthorizeResponse]:
        async with AsyncAcquirerClient(payauth.target) as client:
            async def gen():
                for r in requests:
                    yield r
            return [a async for a in client.authorize_stream(gen(), timeout=60)]

    answers = asyncio.run(run())
    assert len(answers) == len(requests)
    by_id = Counter(a.request_id for a in answers)
    assert by_id[funded[0].request_id] == 2  # the original and the reuse
    codes = Counter(a.iso_response_code for a in answers)
    assert codes == {"00": 100, "51": 100, "30": 5, "94": 1}
    format_error = next(a for a in answers if a.iso_response_code == "30")
    assert "request.amount_minor" in [r.rule_id for r in format_error.reasons]
    assert issuer.get_account(account_id=account).account.available_minor == 0


def test_stream_respects_back_pressure(payauth: PayauthProcess, issuer: IssuerClient,
                                       redis_client: redis.Redis) -> None:
    account = open_account(issuer, 10**12)
    card = issue_card(issuer, account)

    def decided() -> int:  # every request approves 1 minor unit
        return int(redis_client.hget(keys.account(keys.partition_of(account), account), "held"))

    async def run() -> tuple[int, int]:
        # Without BDP probing the client keeps its HTTP/2 receive window at its initial size;
        # with it, the client's transport grows the window and buffers answers on its own.
        async with AsyncAcquirerClient(payauth.target,
                                       options=(("grpc.http2.bdp_probe", 0),)) as client:
            async def endless():
                while True:
                    yield authorize_request(card_token=card, amount_minor=1)
                    await asyncio.sleep(0)

            answers = client.authorize_stream(endless())
            await answers.__anext__()  # the stream is flowing, then the client stops reading
            previous, settled = -1, decided()
            for _ in range(60):
                if settled == previous:
                    break
                await asyncio.sleep(0.5)
                previous, settled = settled, decided()
            await asyncio.sleep(1.5)
            later = decided()
            await answers.aclose()
            return settled, later

    first, second = asyncio.run(run())
    # The server stopped deciding once its window of undelivered answers (plus what the
    # transport buffers) was full, though the client kept offering requests.
    assert first == second
    assert first < 10_000
