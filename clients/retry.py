"""When the payauth clients retry a call, and how long they wait in between.

The rule, shared by the sync and async clients:

- Only idempotent calls are retried, because only they can be repeated without doing the work
  twice. Idempotent: Authorize (the server replays the stored answer for a repeated
  `request_id`), Capture, Reverse, Refund, Earn, Redeem and Adjust (each by its own
  `request_id`), the upserts UpsertMerchantPolicy, UpsertAccount and UpsertProgram, the reads
  GetAccount, Backtest, GetBalance and ListActivity, and the setters SetCardStatus, UpdateLists,
  SetFxRates and LoadModel. UpsertCard is idempotent only when `card_token` is set: without
  one the server generates a new card on every call.
- An idempotent call is retried on UNAVAILABLE (the server was unreachable or shutting down), on
  CANCELLED (a draining server cancels the calls it had queued but not started) and on
  DEADLINE_EXCEEDED (the attempt may or may not have run; repeating it is safe). Every other
  status is final: retrying a bad request or a missing card gives the same answer.
- Streaming calls are never retried: the client cannot know which messages were processed.
- Before retry n (n = 1, 2, ...) the client sleeps a "full jitter" backoff, uniform in
  [0, min(cap, base * 2**(n-1))] (25 ms base, 1 s cap), so that clients cut off by the same
  outage do not come back in lockstep.
- A call makes at most `max_attempts` attempts and never outlasts `timeout * max_attempts`:
  each attempt's deadline is its timeout cut to what is left of that budget, and no retry starts
  once its backoff would use the budget up.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

RETRYABLE_CODES = frozenset({
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How many attempts an idempotent call gets and how its backoff grows."""

    max_attempts: int = 3
    base_delay: float = 0.025
    max_delay: float = 1.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("backoff delays must not be negative")

    def backoff(self, retry: int) -> float:
        """Returns the full-jitter sleep before retry number `retry` (1 for the first retry)."""
        return random.uniform(0.0, min(self.max_delay, self.base_delay * 2 ** (retry - 1)))

    def attempts(
        self, timeout: float, idempotent: bool, clock: Callable[[], float] = time.monotonic
    ) -> Attempts:
        """Starts the attempt bookkeeping of one call with the given per-attempt timeout."""
        return Attempts(self, timeout, idempotent, clock)


class Attempts:
    """One call's attempts so far and the time budget left, so both twins loop the same way."""

    def __init__(
        self,
        policy: RetryPolicy,
        timeout: float,
        idempotent: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._policy = policy
        self._timeout = timeout
        self._limit = policy.max_attempts if idempotent else 1
        self._clock = clock
        self._budget_end = clock() + timeout * self._limit
        self.made = 0

    def next_timeout(self) -> float:
        """Counts one more attempt and returns its deadline: the timeout, cut to the budget."""
        self.made += 1
        return max(0.0, min(self._timeout, self._budget_end - self._clock()))

    def retry_delay(self, code: grpc.StatusCode) -> float | None:
        """Returns the sleep before the next attempt, or None when the failure is final."""
        if code not in RETRYABLE_CODES or self.made >= self._limit:
            return None
        delay = self._policy.backoff(self.made)
        if self._clock() + delay >= self._budget_end:
            return None
        return delay
