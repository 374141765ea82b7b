"""A load-generating client process of the loyalty benchmark.

It is the end-to-end benchmark's client process (benchmarks/e2e/driver.py: spawned, separate
TCP connections, closed and open loops, HDR histograms) with two changes:

- two traffic pools built by the e2e mix, one over cards of accounts *without* a loyalty member
  and one over cards of accounts *with* one; each phase names its pool, and both run on the same
  connections, so the two are measured through exactly the same client and server paths;
- a closed loop of standalone `Loyalty.Earn` calls by member id, sent on those same
  connections (one gRPC channel carries any service).

Answers are also counted by whether they earned points, so the run shows that the "with"
pool really earned in its commits (and the "without" pool did not).
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import uvloop
from google.protobuf.timestamp_pb2 import Timestamp

from benchmarks.e2e.dataset import Card
from benchmarks.e2e.driver import (
    ClientConfig,
    Driver,
    PhaseResult,
    Recorder,
    error_label,
    pin_process,
)
from benchmarks.e2e.mix import CHANNELS, COUNTRY_OF, MCCS, SMALL_AMOUNT_MINOR, Mix
from payauth.clients.loyalty import EARN
from payauth.v1 import authorizer_pb2, common_pb2, loyalty_pb2

POOLS = ("without", "with")


@dataclass
class LoyaltyClientConfig(ClientConfig):
    """The e2e client configuration plus the two card pools and the members to earn for."""

    member_cards: list[Card] = field(default_factory=list)
    program_id: str = ""
    members: list[tuple[str, str]] = field(default_factory=list)  # (member id, currency)


@dataclass
class LoyaltyPhaseResult(PhaseResult):
    """A phase's share from one process, with how many answers earned points."""

    earning_answers: int = 0
    points_earned: int = 0


class LoyaltyDriver(Driver):
    """The command loop of one client process of the loyalty benchmark."""

    def __init__(self, conn: Connection, config: LoyaltyClientConfig) -> None:
        super().__init__(conn, config)
        self.config: LoyaltyClientConfig = config
        # No unknown cards and no replays: they never reach an account, so they would dilute
        # the difference between the pools. Distinct run ids keep the request ids apart.
        self.mixes = {
            "without": Mix(config.cards, config.run_id + "n", config.index, config.seed,
                           replay_share=0.0, unknown_share=0.0),
            "with": Mix(config.member_cards, config.run_id + "y", config.index, config.seed,
                        replay_share=0.0, unknown_share=0.0),
        }
        self.mix = self.mixes["without"]
        self._rng = random.Random(config.seed * 7919 + config.index)
        self._earn_seq = 0
        self._earn_calls: list[Any] = []
        self._earning_answers = 0
        self._points = 0

    async def connect(self) -> None:
        """Open the channels; Earn goes over the same connections as Authorize."""
        await super().connect()
        self._earn_calls = [EARN.bind(client._channel) for client in self.clients["payauth"]]

    async def reconnect(self, server: str, channel: int) -> str:
        """Replace one connection (to even out the workers), for Earn too."""
        answer = await super().reconnect(server, channel)
        self._earn_calls[channel] = EARN.bind(self.clients[server][channel]._channel)
        return answer

    async def run_phase(self, op: str, args: dict[str, Any]) -> PhaseResult:
        """A phase on the pool of cards it names ("with" or "without" members), or an
        "earn" phase of Loyalty.Earn calls."""
        self.mix = self.mixes[args.pop("pool", "without")]
        self._earning_answers = self._points = 0
        if op != "earn":
            return await super().run_phase(op, args)
        cpu_started = time.process_time()
        result = await self.phase_earn(**args)
        result.cpu_s = time.process_time() - cpu_started
        return result

    def _result(self, recorder: Recorder, sent: int, first_send: float, incomplete: int,
                window_s: float = 0.0) -> LoyaltyPhaseResult:
        base = super()._result(recorder, sent, first_send, incomplete, window_s)
        return LoyaltyPhaseResult(**vars(base), earning_answers=self._earning_answers,
                                  points_earned=self._points)

    def _answered(self, server: str, request: authorizer_pb2.AuthorizeRequest,
                  response: authorizer_pb2.AuthorizeResponse) -> None:
        # These mixes replay nothing (replay_share 0): what an answer leaves is its points.
        if response.points_earned:
            self._earning_answers += 1
            self._points += response.points_earned

    # -- Earn -----------------------------------------------------------------------------------

    def earn_request(self, now_s: float) -> loyalty_pb2.EarnRequest:
        """A standalone earn for a random member: a purchase like the mix's, posted at once,
        under a request id never used before."""
        rng = self._rng
        self._earn_seq += 1
        member_id, currency = self.config.members[rng.randrange(len(self.config.members))]
        seconds = int(now_s)
        return loyalty_pb2.EarnRequest(
            request_id=f"e{self.config.run_id}p{self.config.index}-{self._earn_seq}",
            program_id=self.config.program_id, member_id=member_id, post_immediately=True,
            txn=loyalty_pb2.LoyaltyTransaction(
                merchant_id=f"m{rng.randrange(5000)}", mcc=rng.choice(MCCS),
                merchant_country=COUNTRY_OF.get(currency, "US"),
                amount_minor=rng.randint(*SMALL_AMOUNT_MINOR), currency=currency,
                channel=rng.choice(CHANNELS), payment_method=common_pb2.PAYMENT_METHOD_CARD,
                timestamp=Timestamp(seconds=seconds, nanos=int((now_s - seconds) * 1e9))))

    async def phase_earn(self, concurrency: int, warmup_s: float,
                         measure_s: float) -> LoyaltyPhaseResult:
        """Saturation of Earn: `concurrency` calls in flight for warm-up plus measuring time;
        the completions inside the measuring window give the throughput."""
        start = time.perf_counter()
        window = (start + warmup_s, start + warmup_s + measure_s)
        recorder = Recorder(window)
        calls = self._earn_calls
        sent = 0

        async def loop(k: int) -> None:
            nonlocal sent
            call = calls[k % len(calls)]
            while time.perf_counter() < window[1]:
                sent += 1
                request = self.earn_request(time.time())
                began = time.perf_counter()
                try:
                    response = await call(request, timeout=30.0)
                except Exception as exc:  # noqa: BLE001 - every failure is an outcome
                    recorder.record(began, error_label(exc), exc)
                    continue
                recorder.record(began, "posted" if response.posted else "pending")
                if response.points_earned:
                    self._earning_answers += 1
                    self._points += response.points_earned

        await asyncio.gather(*(loop(k) for k in range(concurrency)))
        return self._result(recorder, sent, start, 0, measure_s)


def loyalty_client_main(conn: Connection, config: LoyaltyClientConfig) -> None:
    """Entry point of a client process (multiprocessing spawn target)."""
    pin_process(config.cpus)
    try:
        uvloop.run(LoyaltyDriver(conn, config).serve())
    except KeyboardInterrupt:
        pass
