"""The traffic mix: what a gateway's authorization requests look like, one request at a time.

Every request has a unique request_id except replays, which re-send an earlier request
unchanged (a gateway's retry after a lost answer): the server must answer them from the stored
first answer. The shares are chosen so every branch of the pipeline the benchmark reaches is
exercised at realistic rates, under the demo policy and model the data set loads:

- about 2 % for cards the issuer never registered (declined 14 without touching an account);
- about 5 % replays of requests already answered;
- about 3 % amounts far above any balance, 3-D Secure authenticated so the policy lets them
  through (declined 51 for funds on any account);
- about 2 % purchases above 500.00 without 3-D Secure (stepped up, 1A, by the policy's
  `sca-above-500` rule before funds are looked at);
- the rest small purchases (1 to 150 in major units) on random registered cards: approved on
  well-funded accounts, declined 51 on the tenth of accounts with a low balance once their
  first purchases have used it up. Cards registered with a PAN are sent by PAN.

Every request is scored by the model and runs the policy's rules. Merchants, MCCs (one in nine
a gambling merchant, which the policy's shadow rule tags), channels, 3-D Secure results,
devices and IPs vary like a real acquirer's traffic so nothing in the request is constant; the
merchant's country matches the card's currency.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Sequence

from google.protobuf.timestamp_pb2 import Timestamp

from benchmarks.e2e.dataset import Card
from payauth.v1 import authorizer_pb2, common_pb2

UNKNOWN_CARD_SHARE = 0.02
REPLAY_SHARE = 0.05
LARGE_AMOUNT_SHARE = 0.03
LARGE_AMOUNT_MINOR = 10**10  # above every account's balance or credit line
STEP_UP_SHARE = 0.02
STEP_UP_AMOUNT_MINOR = (50_001, 150_000)  # above the demo policy's 500.00 without 3-D Secure
SMALL_AMOUNT_MINOR = (100, 15_000)
MCCS = ("5411", "5812", "5999", "5732", "5541", "4111", "5912", "7011", "7995")
AUTHENTICATED_SHARE = 0.3  # small purchases with a 3-D Secure result of AUTHENTICATED
COUNTRY_OF = {"USD": "US", "EUR": "DE", "BRL": "BR", "GBP": "GB"}
CHANNELS = (common_pb2.CHANNEL_POS, common_pb2.CHANNEL_CONTACTLESS, common_pb2.CHANNEL_ECOM)
ANSWERED_KEPT = 20_000  # how many answered requests a replay may pick from


class Mix:
    """Builds the requests of one client process (deterministic for a seed)."""

    def __init__(self, cards: Sequence[Card], run_id: str, process_index: int, seed: int,
                 replay_share: float = REPLAY_SHARE,
                 unknown_share: float = UNKNOWN_CARD_SHARE) -> None:
        self._cards = cards
        self._rng = random.Random(seed * 1000 + process_index)
        self._prefix = f"r{run_id}p{process_index}-"
        self._seq = 0
        self._replay_share = replay_share
        self._unknown_share = unknown_share
        # Per server, requests that got an answer: the pool replays are drawn from (a retry
        # of a request still in flight would be another thing to measure).
        self._answered: dict[str, deque[authorizer_pb2.AuthorizeRequest]] = {}

    def fresh(self, now_s: float) -> authorizer_pb2.AuthorizeRequest:
        """A new purchase with a new request_id, timestamped `now_s`."""
        rng = self._rng
        self._seq += 1
        request = authorizer_pb2.AuthorizeRequest(
            request_id=f"{self._prefix}{self._seq}",
            merchant_id=f"m{rng.randrange(5000)}",
            mcc=rng.choice(MCCS),
            channel=rng.choice(CHANNELS),
            payment_method=common_pb2.PAYMENT_METHOD_CARD,
            device_id=f"dev{rng.randrange(200_000)}",
            ip=f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}",
            terminal_id=f"t{rng.randrange(20_000)}",
        )
        if rng.random() < self._unknown_share:
            request.card_token = f"{self._prefix}unknown{self._seq}"
            request.currency = "USD"
        else:
            card = self._cards[rng.randrange(len(self._cards))]
            if card.pan:
                request.pan = card.pan
            else:
                request.card_token = card.token
            request.currency = card.currency
        request.merchant_country = COUNTRY_OF.get(request.currency, "US")
        draw = rng.random()
        if draw < LARGE_AMOUNT_SHARE:
            request.amount_minor = LARGE_AMOUNT_MINOR
            request.three_ds = common_pb2.THREE_DS_RESULT_AUTHENTICATED
        elif draw < LARGE_AMOUNT_SHARE + STEP_UP_SHARE:
            request.amount_minor = rng.randint(*STEP_UP_AMOUNT_MINOR)
            request.three_ds = common_pb2.THREE_DS_RESULT_NOT_ATTEMPTED
        else:
            request.amount_minor = rng.randint(*SMALL_AMOUNT_MINOR)
            request.three_ds = (common_pb2.THREE_DS_RESULT_AUTHENTICATED
                                if rng.random() < AUTHENTICATED_SHARE
                                else common_pb2.THREE_DS_RESULT_NOT_ATTEMPTED)
        seconds = int(now_s)
        request.timestamp.CopyFrom(Timestamp(seconds=seconds,
                                             nanos=int((now_s - seconds) * 1e9)))
        return request

    def answered(self, server: str, request: authorizer_pb2.AuthorizeRequest) -> None:
        """Note a first answer from `server`: the request may be replayed to it later."""
        pool = self._answered.get(server)
        if pool is None:
            pool = self._answered[server] = deque(maxlen=ANSWERED_KEPT)
        pool.append(request)

    def replay_or_fresh(self, server: str, now_s: float) -> authorizer_pb2.AuthorizeRequest:
        """A request `server` already answered, sent again unchanged; a fresh one while
        nothing has been answered yet."""
        pool = self._answered.get(server)
        if not pool:
            return self.fresh(now_s)
        return pool[self._rng.randrange(len(pool))]

    def plan(self, n: int, now_s: float) -> list[authorizer_pb2.AuthorizeRequest | None]:
        """`n` requests built ahead of an open-loop phase, None where a replay goes: the
        replay is picked at send time (`replay_or_fresh`) from what has been answered by then."""
        return [None if self._rng.random() < self._replay_share else self.fresh(now_s)
                for _ in range(n)]

    def next(self, server: str, now_s: float) -> authorizer_pb2.AuthorizeRequest:
        """The next request of a closed loop: a replay or a fresh purchase."""
        if self._rng.random() < self._replay_share:
            return self.replay_or_fresh(server, now_s)
        return self.fresh(now_s)
