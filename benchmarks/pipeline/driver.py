"""One process of the pipeline benchmark: loads the data set, or drives the worker's
`AuthorizePipeline` in this process and answers measurement commands with its CPU per
decision, as JSON lines.

`benchmarks.pipeline.run` starts one such process per server code, so that the code it
imports is whatever comes first on its PYTHONPATH (the checkout's, or another one's for a
side-by-side comparison), and asks them in turn, level by level: the host's speed, which
drifts over minutes on a shared machine, moves both alike.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import uvloop  # noqa: E402

from benchmarks.e2e import dataset  # noqa: E402
from benchmarks.e2e.mix import Mix  # noqa: E402
from payauth.server import demo  # noqa: E402
from payauth.server.accounts import Accounts  # noqa: E402
from payauth.server.authorize import AuthorizePipeline  # noqa: E402
from payauth.server.clock import system_clock  # noqa: E402
from payauth.server.config import Settings  # noqa: E402
from payauth.server.decision_core import CoreRegistry  # noqa: E402
from payauth.server.loyalty import LoyaltyEngine  # noqa: E402
from payauth.server.loyalty_store import LoyaltyStore  # noqa: E402
from payauth.server.pan import PanHasher, load_or_create_key  # noqa: E402
from payauth.server.policies import IssuerPolicies  # noqa: E402
from payauth.server.store import Store  # noqa: E402

SERVER = "payauth"  # the mix's name for the server its replays go to
LOAD_CONCURRENCY = 64


async def load(store: Store, pans: PanHasher, data: dataset.DataSet) -> dict[str, Any]:
    """Create the accounts and cards and activate the demo policy and model, through the
    issuer API's own handlers (what `IssuerControl` runs), in this process."""
    accounts = Accounts(store, pans, system_clock)
    await store.load_library()
    await dataset.bounded([lambda a=a: accounts.upsert_account(dataset.account_request(a))
                           for a in data.accounts], LOAD_CONCURRENCY)
    await dataset.bounded([lambda c=c, a=a: accounts.upsert_card(dataset.card_request(c, a))
                           for c, a in zip(data.cards, data.card_accounts, strict=True)],
                          LOAD_CONCURRENCY)
    registry = CoreRegistry(store)
    policies = IssuerPolicies(store, registry, system_clock)
    version = int(time.time())
    model = await policies.load_model(dataset.demo_model_request(version))
    ack = await policies.apply(demo.demo_policy(version))
    if not ack.accepted:
        raise RuntimeError(f"the demo policy was refused: {ack}")
    return {"policy": f"demo-issuer v{version}", "model_trees": model.num_trees}


async def serve(store: Store, pans: PanHasher, data: dataset.DataSet, run_id: str,
                driver: int, warmup: int, seed: int) -> None:
    """Build the pipeline as a worker does, warm it up (so it knows the card routes, as a
    running worker does), say "ready", then answer each command line `{"in_flight": n,
    "decisions": m}` on stdin with this process's CPU per decision and decisions per second
    over `m` decisions at `n` in flight, until stdin ends. `driver` numbers this process
    among the run's, so its request_ids are its own."""
    registry = CoreRegistry(store)
    await registry.reload()
    settings = Settings()
    loyalty = LoyaltyEngine(LoyaltyStore(store), system_clock, settings.idempotency_ttl_s,
                            watch_block_ms=250)
    pipeline = AuthorizePipeline(store, pans, settings, registry, system_clock,
                                 loyalty=loyalty)
    mix = Mix(data.cards, run_id, driver, seed)

    async def run(n: int, concurrency: int) -> dict[str, float]:
        # Built ahead, as the end-to-end benchmark's open loop does: replays (None) are
        # picked when sent, from what has been answered by then.
        plan = iter(mix.plan(n, time.time()))

        async def one_at_a_time() -> None:
            for planned in plan:
                request = planned or mix.replay_or_fresh(SERVER, time.time())
                response = await pipeline.authorize(request)
                if not response.replayed:
                    mix.answered(SERVER, request)

        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(one_at_a_time() for _ in range(concurrency)))
        return {"cpu_us": round((time.process_time() - cpu) / n * 1e6, 1),
                "per_s": round(n / (time.perf_counter() - wall))}

    await run(warmup, 64)
    _say({"ready": True})
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        command = json.loads(line)
        _say(await run(command["decisions"], command["in_flight"]))


def _say(message: dict[str, Any]) -> None:
    print(json.dumps(message), flush=True)


async def _main(args: argparse.Namespace) -> None:
    data = dataset.generate(args.accounts, args.cards, args.run_id, args.seed)
    store = Store.connect(args.redis_url, cluster=False, timeout_s=5.0)
    pans = PanHasher(load_or_create_key(args.pan_key))
    try:
        if args.load:
            _say(await load(store, pans, data))
        else:
            await serve(store, pans, data, args.run_id, args.driver, args.warmup, args.seed)
    finally:
        await store.close()


def main(argv: list[str] | None = None) -> int:
    """Load the data set, or serve measurements, as the command line says; replies go to
    stdout as JSON lines."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.pipeline.driver")
    p.add_argument("--redis-url", required=True)
    p.add_argument("--pan-key", type=Path, required=True)
    p.add_argument("--run-id", required=True)
    p.add_argument("--accounts", type=int, required=True)
    p.add_argument("--cards", type=int, required=True)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--load", action="store_true", help="load the data set, then exit")
    p.add_argument("--driver", type=int, default=0,
                   help="this process's number in the run (its request_ids' prefix)")
    p.add_argument("--warmup", type=int, default=15_000)
    args = p.parse_args(argv)
    uvloop.run(_main(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
