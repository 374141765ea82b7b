"""The Redis shard benchmark: `python -m benchmarks.redis_shard` (`make bench-redis`).

What one Redis shard spends per authorization bounds how many shards a network peak needs
(docs/capacity.md). In the end-to-end benchmark Redis shares two cores with the workers and
the load generator, so its CPU per authorization there moves with the batches the load
happens to form and `INFO commandstats` times commands by the clock, descheduled time
included. Here a redis-server (the embedded one, as `payauth serve` starts it: AOF,
`appendfsync always`) serves payauth's own `Store` alone: `concurrency` authorizations in
flight share one pipeline per event-loop turn as in a worker, each its read pipeline then its
commit (the Redis Function that places the hold, stores the answer and appends the ledger
entry and the decision event). The figure is Redis's main-thread CPU (`INFO cpu`) per
authorization, for each concurrency, with the AOF as decided and without it (what the
Functions and the commands cost alone), in alternating rounds; `INFO commandstats` is
reliable on a Redis that is not descheduled, so the commit Function's own time is reported
too. The driver runs on the other core; its speed sets the throughput, not the CPU figure.

Prints the table, writes benchmarks/results/redis_shard.json and redis_shard.png.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import redis  # noqa: E402
import uvloop  # noqa: E402

from benchmarks.e2e.run import machine
from benchmarks.e2e.servers import cpu_ticks, stolen_share  # noqa: E402
from benchmarks.output import write_results  # noqa: E402
from payauth.server import keys  # noqa: E402
from payauth.server.authorize import decision_event_bytes, request_fingerprint  # noqa: E402
from payauth.server.card_routes import CardRoute  # noqa: E402
from payauth.server.embedded_redis import EmbeddedRedis  # noqa: E402
from payauth.server.store import CardRecord, Store  # noqa: E402
from payauth.v1 import authorizer_pb2, common_pb2  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
DURABILITY = {"aof_always": ("yes", "always"), "aof_off": ("no", "always")}
IDEMPOTENCY_TTL_MS = 24 * 3600 * 1000


def _request(i: int, card_token: str) -> authorizer_pb2.AuthorizeRequest:
    request = authorizer_pb2.AuthorizeRequest(
        request_id=f"shard-{i:012d}", card_token=card_token, merchant_id="m-000417",
        mcc="5411", merchant_country="DE", amount_minor=1_250 + i % 5_000, currency="EUR",
        channel=common_pb2.CHANNEL_ECOM, payment_method=common_pb2.PAYMENT_METHOD_CARD,
        device_id=f"dev-{i % 997}", ip="10.20.30.40")
    request.timestamp.GetCurrentTime()
    return request


def _response(request: authorizer_pb2.AuthorizeRequest) -> bytes:
    """A response as the pipeline hands it to the commit: risk scored, one reason."""
    response = authorizer_pb2.AuthorizeResponse(request_id=request.request_id,
                                                currency=request.currency, risk_score=0.137)
    response.reasons.add(rule_id="risk.model", text="score under the issuer's threshold")
    return response.SerializeToString()


async def _load(store: Store, accounts: int) -> list[CardRoute]:
    """One debit account with one card each, rich enough never to decline."""
    routes = []
    now_ms = int(time.time() * 1000)
    for a in range(accounts):
        account_id, card_token = f"acct-{a:06d}", f"tok-{a:06d}"
        await store.upsert_account(account_id=account_id, kind=common_pb2.ACCOUNT_KIND_DEBIT,
                                   status=common_pb2.ACCOUNT_STATUS_ACTIVE, currency="EUR",
                                   balance=10**13, limit=0, now_ms=now_ms)
        await store.put_card(CardRecord(card_token, account_id, common_pb2.CARD_STATUS_ACTIVE,
                                        2030, 12, ""))
        routes.append(CardRoute(card_token, account_id))
    return routes


async def _authorize(store: Store, route: CardRoute, i: int) -> None:
    """The Redis side of one new authorization: the read pipeline, then the commit."""
    request = _request(i, route.card_token)
    fingerprint = request_fingerprint(request, None)
    await store.read_authorization(route.card_token, route.account_id, request.request_id,
                                   fingerprint, IDEMPOTENCY_TTL_MS, None)
    partition = keys.partition_of(route.account_id)
    now_ms = int(time.time() * 1000)
    base = _response(request)
    result = await store.commit_authorization(
        mode="hold", account_id=route.account_id, request_id=request.request_id,
        fingerprint=fingerprint, amount=request.amount_minor, partial_ok=False,
        currency="EUR", merchant_id=request.merchant_id, card_token=route.card_token,
        mcc=request.mcc, now_ms=now_ms, expires_ms=now_ms + 7 * 86_400_000,
        max_expires_ms=now_ms + 30 * 86_400_000, tolerance_bps=1_500,
        authorization_id=f"A{partition}-{i:016x}", idempotency_ttl_ms=IDEMPOTENCY_TTL_MS,
        base=base, event=decision_event_bytes(request, base, route, partition, now_ms))
    if result.status != "new" or result.answer is None or result.answer.outcome != "approved":
        raise RuntimeError(f"authorization {i} was not approved: {result}")


def _redis_cpu_s(info: dict[str, Any]) -> float:
    return float(info["used_cpu_user_main_thread"]) + float(info["used_cpu_sys_main_thread"])


async def _phase(store: Store, admin: redis.Redis, routes: list[CardRoute], durability: str,
                 concurrency: int, count: int, first: int) -> dict[str, Any]:
    appendonly, appendfsync = DURABILITY[durability]
    admin.config_set("appendonly", appendonly)
    admin.config_set("appendfsync", appendfsync)
    persistence = admin.info("persistence")
    while persistence["aof_rewrite_in_progress"] or persistence["aof_rewrite_scheduled"]:
        await asyncio.sleep(0.05)  # turning the AOF on rewrites it first
        persistence = admin.info("persistence")
    admin.config_resetstat()
    before = admin.info()
    aof_before = before.get("aof_current_size", 0)
    ticks_before = cpu_ticks()
    started = time.perf_counter()
    queue = iter(range(first, first + count))

    async def client() -> None:
        for i in queue:
            await _authorize(store, routes[i % len(routes)], i)

    await asyncio.gather(*(client() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    ticks_after = cpu_ticks()
    after = admin.info()
    stats = admin.info("commandstats")
    fcall = stats.get("cmdstat_fcall", {"calls": 0, "usec": 0})
    return {
        "durability": durability,
        "concurrency": concurrency,
        "authorizations": count,
        "redis_cpu_us_per_authorization": round(
            1e6 * (_redis_cpu_s(after) - _redis_cpu_s(before)) / count, 1),
        "commit_fcall_us": round(fcall["usec"] / max(1, fcall["calls"]), 1),
        # Every command's calls per authorization and µs per call (those the Functions run
        # are counted too, and their time is inside the FCALL's).
        "commands": {name.removeprefix("cmdstat_"): {
            "per_authorization": round(stat["calls"] / count, 2),
            "us_per_call": round(stat["usec"] / max(1, stat["calls"]), 2)}
            for name, stat in stats.items() if stat["calls"] >= count // 2},
        "commands_per_authorization": round(
            (after["total_commands_processed"] - before["total_commands_processed"]) / count, 2),
        "socket_reads_per_authorization": round(
            (after["total_reads_processed"] - before["total_reads_processed"]) / count, 3),
        "aof_bytes_per_authorization": round(
            (after.get("aof_current_size", 0) - aof_before) / count) if appendonly == "yes"
        else 0,
        "driver_authorizations_per_s": round(count / elapsed),
        # AOF rewrites started in the phase: each forks, which stops the main thread a while.
        "forks": after["total_forks"] - before["total_forks"],
        # The machine's CPU the hypervisor gave to other guests meanwhile: a slower phase
        # with a large share was slowed from outside.
        "cpu_stolen_share": stolen_share(ticks_before, ticks_after) or 0.0,
    }


def _summary(phases: list[dict[str, Any]], server: str) -> dict[str, dict[str, Any]]:
    """Medians over the rounds, by durability and concurrency."""
    out: dict[str, dict[str, Any]] = {}
    for durability in DURABILITY:
        out[durability] = {}
        for concurrency in sorted({p["concurrency"] for p in phases}):
            mine = [p for p in phases if p["server"] == server
                    and p["durability"] == durability and p["concurrency"] == concurrency]
            cpu = [p["redis_cpu_us_per_authorization"] for p in mine]
            median_cpu = statistics.median(cpu)
            out[durability][str(concurrency)] = {
                "redis_cpu_us_per_authorization": median_cpu,
                "rounds": cpu,
                "shard_authorizations_per_s_at_full_core": round(1e6 / median_cpu),
                "commit_fcall_us": statistics.median(p["commit_fcall_us"] for p in mine),
                "aof_bytes_per_authorization": statistics.median(
                    p["aof_bytes_per_authorization"] for p in mine),
                "cpu_stolen_share_max": max(p["cpu_stolen_share"] for p in mine),
            }
    return out


def _plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    concurrencies = doc["config"]["concurrency"]
    bars = [(server, durability) for server in doc["summary"] for durability in DURABILITY]
    width = 0.8 / len(bars)
    for k, (server, durability) in enumerate(bars):
        values = [doc["summary"][server][durability][str(c)]["redis_cpu_us_per_authorization"]
                  for c in concurrencies]
        xs = [i + (k - (len(bars) - 1) / 2) * width for i in range(len(concurrencies))]
        label = durability.replace("_", " ") + ("" if server == "payauth" else f" ({server})")
        ax.bar(xs, values, width, label=label)
        for x, v in zip(xs, values, strict=True):
            ax.annotate(f"{v:.0f}", (x, v), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(concurrencies)), [str(c) for c in concurrencies])
    ax.set_xlabel("authorizations in flight (sharing one pipeline per loop turn)")
    ax.set_ylabel("Redis main-thread CPU per authorization (µs)")
    ax.set_title("One Redis shard's cost per authorization (read + commit)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _table(doc: dict[str, Any]) -> str:
    lines = [f"{'library':<10}{'durability':<12}{'in flight':>10}{'Redis µs/auth':>15}"
             f"{'rounds':>26}{'auth/s per core':>17}{'commit FCALL µs':>17}{'AOF B/auth':>12}"
             f"{'stolen max':>12}"]
    for server, by_durability in doc["summary"].items():
        for durability, by_concurrency in by_durability.items():
            for concurrency, s in by_concurrency.items():
                rounds = ", ".join(f"{v:.0f}" for v in s["rounds"])
                lines.append(f"{server:<10}{durability:<12}{concurrency:>10}"
                             f"{s['redis_cpu_us_per_authorization']:>15.1f}{rounds:>26}"
                             f"{s['shard_authorizations_per_s_at_full_core']:>17,}"
                             f"{s['commit_fcall_us']:>17.1f}"
                             f"{s['aof_bytes_per_authorization']:>12}"
                             f"{s['cpu_stolen_share_max']:>12.0%}")
    for key, ratios in doc.get("ratio_b_to_payauth", {}).items():
        lines.append(f"b / payauth, {key}: median {ratios['median']:.3f} "
                     f"(rounds {', '.join(f'{r:.3f}' for r in ratios['rounds'])})")
    return "\n".join(lines)


class _Shard:
    """A redis-server with a Function library and payauth's Store on it."""

    def __init__(self, name: str, folder: Path, library: str | None) -> None:
        self.name = name
        self.library = library  # None: payauth's own (store.LIBRARY_CODE)
        self.embedded = EmbeddedRedis(folder / name)
        self.embedded.start()
        self.admin = redis.Redis(unix_socket_path=str(self.embedded.socket),
                                 decode_responses=True)
        self.store = Store.connect(self.embedded.url, cluster=False, timeout_s=5.0)

    async def load(self, accounts: int) -> list[CardRoute]:
        if self.library is None:
            await self.store.load_library()
        else:
            self.admin.execute_command("FUNCTION", "LOAD", "REPLACE", self.library)
        return await _load(self.store, accounts)

    async def close(self) -> None:
        await self.store.close()
        self.admin.close()
        self.embedded.stop()


def _library(folder: Path) -> str:
    """A Function library as store.LIBRARY_CODE assembles it, from another `functions/`."""
    return "\n".join((folder / name).read_text() for name in ("payauth.lua", "loyalty.lua"))


async def _run(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    shards = [_Shard("payauth", folder, None)]
    try:
        if args.ab_library is not None:
            shards.append(_Shard("b", folder, _library(args.ab_library)))
        routes = {shard.name: await shard.load(args.accounts) for shard in shards}
        for shard in shards:  # warm-up, not kept
            await _phase(shard.store, shard.admin, routes[shard.name], "aof_off", 8, 2_000, 0)
        phases = []
        first = 10_000
        for round_ in range(args.rounds):
            flip = round_ % 2 == 1  # alternate the order, so drift hits both sides alike
            for durability in reversed(DURABILITY) if flip else DURABILITY:
                for concurrency in args.concurrency:
                    for shard in reversed(shards) if flip else shards:
                        phase = await _phase(shard.store, shard.admin, routes[shard.name],
                                             durability, concurrency, args.authorizations,
                                             first)
                        phase.update(server=shard.name, round=round_ + 1)
                        phases.append(phase)
                        print(f"round {round_ + 1} {shard.name:<8} {durability:<11} "
                              f"{concurrency:>3} in flight: "
                              f"{phase['redis_cpu_us_per_authorization']:6.1f} µs of Redis "
                              f"CPU per authorization ({phase['cpu_stolen_share']:.0%} of "
                              f"the CPU stolen)", flush=True)
                    first += args.authorizations
        measured_on = machine(shards[0].admin)
    finally:
        for shard in shards:
            await shard.close()
    doc: dict[str, Any] = {
        "summary": {shard.name: _summary(phases, shard.name) for shard in shards},
        "phases": phases,
        "machine": measured_on,
        "config": {"command": "python -m benchmarks.redis_shard", "accounts": args.accounts,
                   "authorizations_per_phase": args.authorizations, "rounds": args.rounds,
                   "concurrency": args.concurrency,
                   "ab_library": str(args.ab_library) if args.ab_library else None},
    }
    if len(shards) == 2:
        doc["ratio_b_to_payauth"] = _ratios(phases)
    return doc


def _ratios(phases: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Redis CPU per authorization of library b over payauth's, phase by phase."""
    out = {}
    for durability in DURABILITY:
        for concurrency in sorted({p["concurrency"] for p in phases}):
            pairs: dict[int, dict[str, float]] = {}
            for p in phases:
                if p["durability"] == durability and p["concurrency"] == concurrency:
                    pairs.setdefault(p["round"], {})[p["server"]] = \
                        p["redis_cpu_us_per_authorization"]
            rounds = [round(pair["b"] / pair["payauth"], 3) for pair in pairs.values()]
            out[f"{durability}, {concurrency} in flight"] = {
                "median": statistics.median(rounds), "rounds": rounds}
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; write and print its results."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.redis_shard",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--accounts", type=int, default=2_000)
    p.add_argument("--authorizations", type=int, default=6_000,
                   help="authorizations per phase (default 6,000)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--concurrency", default="1,8,64",
                   help="authorizations in flight, comma-separated (default 1,8,64)")
    p.add_argument("--ab-library", type=Path, default=None, metavar="FUNCTIONS_DIR",
                   help="also measure the Function library of another functions/ folder "
                        "(payauth.lua, loyalty.lua) on a second redis-server, side by side")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: 300 accounts, 1,000 authorizations per phase, 1 round")
    args = p.parse_args(argv)
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    if args.quick:
        args.accounts, args.authorizations, args.rounds = 300, 1_000, 1
    folder = Path(tempfile.mkdtemp(prefix="payauth-shard-"))
    try:
        doc = uvloop.run(_run(args, folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    write_results(doc, args.out, "redis_shard", _plot, _table)
    return 0
