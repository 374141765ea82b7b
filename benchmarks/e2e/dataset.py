"""The benchmark's data set: accounts and cards generated from a seed, loaded through the API.

Loading goes through `IssuerControl.UpsertAccount` and `UpsertCard` (the async issuer client,
bounded concurrency), not straight into Redis, so the data is exactly what an issuer would have
created and no knowledge of the key layout leaks into the benchmark.

The shape is what makes the mix realistic: most accounts are well funded (the small purchases
of a run never exhaust them), about a tenth hold a few dollars only (their purchases start to
decline for funds, code 51, after the first approvals), a fifth are credit lines, and they are
spread over a few currencies. Every account has `cards_per_account` cards by token, about a
fifth of them also registered by PAN (requests for those send the PAN, so the server's keyed
hash is on the path too).

The issuer's decision core is loaded the same way: the demo risk model (LightGBM, trained on
generated purchases at load time) through `LoadModel` and the demo policy (CEL rules: fraud
declines, a step-up above 500.00 without 3-D Secure, a shadow rule on gambling merchants and a
score threshold) through `StreamPolicies`, so every Authorize is scored and runs the rules.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass

from payauth.clients import AsyncIssuerClient
from payauth.server import demo
from payauth.v1 import common_pb2, issuer_pb2, policy_pb2

CURRENCIES = (("USD", 0.6), ("EUR", 0.2), ("BRL", 0.1), ("GBP", 0.1))
LOW_BALANCE_SHARE = 0.10
CREDIT_SHARE = 0.20
PAN_SHARE = 0.20
WELL_FUNDED_MINOR = 100_000_000  # a million in major units: never exhausted by a run
LOW_BALANCE_MINOR = (500, 5_000)  # a few dollars: declines for funds after a purchase or two


@dataclass(frozen=True, slots=True)
class Card:
    """What a client process needs to build requests for one card."""

    token: str
    pan: str  # empty when the card is known by token only
    currency: str
    low_balance: bool


@dataclass(frozen=True, slots=True)
class Account:
    """One account as it is created through UpsertAccount."""

    account_id: str
    kind: int
    currency: str
    balance_minor: int
    credit_limit_minor: int
    low_balance: bool


@dataclass(frozen=True, slots=True)
class DataSet:
    """The accounts and cards of one benchmark run."""

    accounts: list[Account]
    cards: list[Card]
    card_accounts: list[str]  # account id of cards[i]


def luhn_complete(body: str) -> str:
    """`body` with its Luhn check digit appended."""
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:  # these digits are doubled once the check digit is appended
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return body + str((10 - total % 10) % 10)


def generate(n_accounts: int, n_cards: int, run_id: str, seed: int = 7) -> DataSet:
    """The data set of a run: ids carry `run_id`, so runs against one Redis never collide."""
    rng = random.Random(seed)
    currencies = [c for c, _ in CURRENCIES]
    weights = [w for _, w in CURRENCIES]
    accounts = []
    for i in range(n_accounts):
        low = rng.random() < LOW_BALANCE_SHARE
        credit = rng.random() < CREDIT_SHARE
        amount = rng.randint(*LOW_BALANCE_MINOR) if low else WELL_FUNDED_MINOR
        accounts.append(Account(
            account_id=f"b{run_id}a{i:07d}",
            kind=common_pb2.ACCOUNT_KIND_CREDIT if credit else common_pb2.ACCOUNT_KIND_DEBIT,
            currency=rng.choices(currencies, weights)[0],
            balance_minor=0 if credit else amount,
            credit_limit_minor=amount if credit else 0,
            low_balance=low,
        ))
    cards, card_accounts = [], []
    pans: set[str] = set()
    pan_prefix = f"4{int(run_id, 16) % 10**5:05d}"  # per run, so PANs never collide with old runs
    for j in range(n_cards):
        account = accounts[j % n_accounts]
        pan = ""
        if rng.random() < PAN_SHARE:
            while not pan or pan in pans:
                pan = luhn_complete(pan_prefix + f"{rng.randrange(10**9):09d}")
            pans.add(pan)
        cards.append(Card(f"b{run_id}c{j:07d}", pan, account.currency, account.low_balance))
        card_accounts.append(account.account_id)
    return DataSet(accounts, cards, card_accounts)


def account_request(account: Account) -> issuer_pb2.UpsertAccountRequest:
    """The issuer's call that creates `account`."""
    return issuer_pb2.UpsertAccountRequest(
        account_id=account.account_id, kind=account.kind,
        status=common_pb2.ACCOUNT_STATUS_ACTIVE, currency=account.currency,
        balance_minor=account.balance_minor, credit_limit_minor=account.credit_limit_minor)


def card_request(card: Card, account_id: str) -> issuer_pb2.UpsertCardRequest:
    """The issuer's call that issues `card` on `account_id`."""
    return issuer_pb2.UpsertCardRequest(
        card_token=card.token, pan=card.pan, account_id=account_id,
        status=common_pb2.CARD_STATUS_ACTIVE, expiry_year=2099, expiry_month=12)


def demo_model_request(version: int) -> policy_pb2.LoadModelRequest:
    """The issuer's call that loads and activates the demo risk model (trained here)."""
    return policy_pb2.LoadModelRequest(model_id="demo-risk", version=version,
                                       format=policy_pb2.MODEL_FORMAT_LIGHTGBM_TEXT,
                                       model=demo.train_demo_model(), activate=True)


async def bounded(calls: list, concurrency: int) -> None:
    """Await the coroutine factories in `calls` with at most `concurrency` in flight."""
    queue = iter(calls)

    async def worker() -> None:
        for call in queue:
            await call()

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def load(target: str, data: DataSet, concurrency: int = 32, channels: int = 4) -> float:
    """Create every account, then every card, through the API; return the seconds it took.

    Every call is idempotent (accounts by id, cards by token), so the client may retry the
    ones a busy shared machine times out; a few attempts more than usual ride over stalls.
    """
    started = time.perf_counter()
    options = [("grpc.use_local_subchannel_pool", 1)]
    clients = [AsyncIssuerClient(target, timeout=10, max_attempts=8, options=options)
               for _ in range(channels)]
    try:
        await clients[0].wait_until_serving(30)

        def account_call(i: int, a: Account):  # noqa: ANN202 - a coroutine factory
            return lambda: clients[i % channels].upsert_account(account_request(a))

        def card_call(j: int, c: Card, account_id: str):  # noqa: ANN202
            return lambda: clients[j % channels].upsert_card(card_request(c, account_id))

        await bounded([account_call(i, a) for i, a in enumerate(data.accounts)], concurrency)
        await bounded([card_call(j, c, data.card_accounts[j])
                       for j, c in enumerate(data.cards)], concurrency)
    finally:
        for client in clients:
            await client.close()
    return time.perf_counter() - started


async def load_decision_core(target: str) -> dict[str, str | int]:
    """Load and activate the demo risk model and the demo policy through the issuer API;
    return what was loaded (for the result's config)."""
    version = int(time.time())
    model_request = await asyncio.to_thread(demo_model_request, version)
    client = AsyncIssuerClient(target, timeout=60, max_attempts=8)
    try:
        await client.wait_until_serving(30)
        model = await client.load_model(model_request)
        policy = demo.demo_policy(version)
        async for ack in client.stream_policies([policy], timeout=60):
            if not ack.accepted:
                raise RuntimeError(f"the demo policy was refused: {ack}")
    finally:
        await client.close()
    return {"policy": f"{policy.policy_id} v{version}", "rules": len(policy.rules),
            "model": f"demo-risk v{version}", "model_trees": model.num_trees,
            "model_features": ", ".join(demo.MODEL_FEATURES)}
