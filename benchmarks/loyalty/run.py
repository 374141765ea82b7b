"""The loyalty benchmark: `python -m benchmarks.loyalty` (or `benchmarks/loyalty/run.py`,
`make bench-loyalty`).

What a loyalty program costs an authorization is only meaningful against the same
authorization without it, on the same server, at the same moment: this machine is shared and
its speed drifts by tens of percent between runs. So one run starts one `payauth serve`, loads
accounts and cards (benchmarks/e2e/dataset.py) and a program of 20 earning rules, 5 challenges
and 3 tiers with half of the accounts enrolled as members, then, from the same client
processes over the same connections:

1. alternates closed-loop saturation phases of `Authorize` on cards of accounts *without* a
   member and on cards of accounts *with* one (A B, then B A, ...), so drift hits both alike;
2. measures standalone `Loyalty.Earn` at saturation in every round;
3. runs both pools open loop at one fixed, moderate offered rate (A B B A) for latency;

and prints the table, writes benchmarks/results/loyalty.json and loyalty.png. See README.md
beside this file for the method and the latest figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import redis  # noqa: E402
import uvloop  # noqa: E402

from benchmarks.e2e import dataset  # noqa: E402
from benchmarks.e2e import report as e2e_report  # noqa: E402
from benchmarks.e2e.driver import CHANNELS  # noqa: E402
from benchmarks.e2e.run import (  # noqa: E402
    Harness,
    Phase,
    _merge,
    add_harness_arguments,
    cpu_pinning,
    machine,
    resolve_harness_defaults,
    run_and_write,
)
from benchmarks.e2e.servers import (  # noqa: E402
    Counters,
    cpu_seconds,
    payauth_server,
    snapshot,
)
from benchmarks.loyalty import report  # noqa: E402
from benchmarks.loyalty.driver import (  # noqa: E402
    LoyaltyClientConfig,
    LoyaltyPhaseResult,
    loyalty_client_main,
)
from benchmarks.loyalty.program import CHALLENGES, RULES, TIERS, build_program  # noqa: E402
from payauth.clients import AsyncLoyaltyClient  # noqa: E402
from payauth.v1 import loyalty_pb2  # noqa: E402

POOL_NAMES = {"without": "without_loyalty", "with": "with_loyalty"}
# Qualifying points credited by hand so that the tier rules see every tier: every sixth member
# Gold, two in six Silver, the rest Base.
TIER_CREDITS = (6_000, 1_500, 1_500, 0, 0, 0)


class LoyaltyHarness(Harness):
    """Owns the server, the client processes and the results of one run.

    It is the e2e harness (connection balancing over the workers, settling between phases,
    process CPU from /proc and Redis) with one server and the loyalty phases.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder = Path(tempfile.mkdtemp(prefix="payauth-loyalty-"))
        self.run_id = secrets.token_hex(3)
        self.program_id = f"bench-{self.run_id}"
        self.member_accounts: set[str] = set()
        self.members: list[tuple[str, str]] = []
        self.enroll_s = 0.0
        self.records: list[dict[str, Any]] = []  # every phase, as in the JSON
        self.raw: dict[tuple[str, str], list[LoyaltyPhaseResult]] = {}

    # -- set-up ---------------------------------------------------------------------------------

    def start_servers(self) -> None:
        """Start `payauth serve` on its embedded Redis and wait for it."""
        a = self.args
        self.payauth, self.metrics_port = payauth_server(self.folder, a.workers, None, None,
                                                         a.serve_arg)
        self.spawn(self.payauth)
        self.payauth.wait_serving()
        url = f"unix://{self.folder / 'payauth' / 'redis' / 'redis.sock'}"
        self.redis = redis.Redis.from_url(url, socket_timeout=10)
        self.cpu_groups["payauth"] = [p for p, name in self.payauth.tree().items()
                                      if name != "redis-server"]

    def load_data(self) -> None:
        """Accounts and cards (the e2e data set), then the program and its members."""
        a = self.args
        self.data = dataset.generate(a.accounts, a.cards, self.run_id, a.seed)
        self.load_s = uvloop.run(dataset.load(self.payauth.target, self.data))
        self.enroll_s = uvloop.run(self.enroll())

    async def enroll(self) -> float:
        """The program, then a member for every other account (its card purchases earn in the
        authorization's commit), then hand credits that spread members over the tiers;
        returns the seconds it took. Every call is idempotent, so retries are safe."""
        started = time.perf_counter()
        rng = random.Random(self.args.seed)
        options = [("grpc.use_local_subchannel_pool", 1)]
        clients = [AsyncLoyaltyClient(self.payauth.target, timeout=10, max_attempts=8,
                                      options=options) for _ in range(self.args.channels)]
        try:
            await clients[0].wait_until_serving(30)
            await clients[0].upsert_program(program=build_program(self.program_id, time.time()))
            share = self.args.member_share  # spread evenly: every other account at 0.5
            accounts = [acc for i, acc in enumerate(self.data.accounts)
                        if int((i + 1) * share) > int(i * share)]
            calls = []
            for k, account in enumerate(accounts):
                member_id = f"b{self.run_id}mem{k:07d}"
                self.member_accounts.add(account.account_id)
                self.members.append((member_id, account.currency))
                birth_month = rng.randint(0, 12)  # 0: unknown
                credit = TIER_CREDITS[k % len(TIER_CREDITS)]
                calls.append((k, member_id, account.account_id, birth_month, credit))

            async def one(k: int, member_id: str, account_id: str, birth_month: int,
                          credit: int) -> None:
                client = clients[k % len(clients)]
                await client.upsert_member(member=loyalty_pb2.LoyaltyMember(
                    program_id=self.program_id, member_id=member_id, account_id=account_id,
                    birth_month=birth_month))
                if credit:
                    await client.adjust(request_id=f"tier-{member_id}",
                                        program_id=self.program_id, member_id=member_id,
                                        points_delta=credit, reason="status match",
                                        counts_toward_tier=True, operator_id="benchmark")

            queue = iter(calls)

            async def worker() -> None:
                for call in queue:
                    await one(*call)

            await asyncio.gather(*(worker() for _ in range(32)))
        finally:
            for client in clients:
                await client.close()
        return time.perf_counter() - started

    def pools(self) -> tuple[list[dataset.Card], list[dataset.Card]]:
        """Cards of accounts without and with a member. Low-balance accounts are left out of
        both: they decline for funds after a purchase or two, which earns nothing and would
        make the pools differ by luck."""
        without, with_ = [], []
        for card, account_id in zip(self.data.cards, self.data.card_accounts, strict=True):
            if card.low_balance:
                continue
            (with_ if account_id in self.member_accounts else without).append(card)
        return without, with_

    def start_clients(self) -> None:
        """Spawn the client processes and wait until each is connected."""
        a = self.args
        without, with_ = self.pools()
        self.spawn_clients(loyalty_client_main, "loyalty-client", [
            LoyaltyClientConfig(
                index=index, targets={"payauth": self.payauth.target}, cards=without,
                run_id=self.run_id, seed=a.seed, channels=a.channels, member_cards=with_,
                program_id=self.program_id, members=self.members, cpus=a.client_cpus)
            for index in range(a.clients)])

    # -- phases ---------------------------------------------------------------------------------

    def phase(self, mode: str, level: str, op: str, args: dict[str, Any],
              offered: float | None) -> Phase:
        """One phase from every client process at once: `mode` is a pool ("without",
        "with") or "earn"; counters and CPU are read around it."""
        self._compact_aof()
        self._settle()
        # The server closes connections after grpc.max_connection_age_ms and the clients
        # reconnect wherever the kernel puts them: re-check the split before every phase.
        spread = self.spread("payauth")
        counts = [len(p) for p in spread.values()]
        if counts and max(counts) - min(counts) > 1:
            self.connection_split["payauth"] = self.balance("payauth")
        workers = sorted(spread)
        worker_cpu_before = [cpu_seconds([pid]) for pid in workers]
        if op != "earn":
            args = {"server": "payauth", "stream": False, "pool": mode, **args}
        before = snapshot(self.metrics_port, self.redis)
        cpu_before = self._cpu()
        for conn in self.conns:
            conn.send({"op": op, "args": args})
        if op == "open":
            for conn in self.conns:
                if conn.recv() != "armed":
                    raise RuntimeError("a client process failed to prepare its requests")
            t0 = time.perf_counter() + 0.05
            for conn in self.conns:
                conn.send(t0)
        results: list[LoyaltyPhaseResult] = [conn.recv() for conn in self.conns]
        cpu_after = self._cpu()
        worker_cpu = [cpu_seconds([pid]) - b
                      for pid, b in zip(workers, worker_cpu_before, strict=True)]
        after = snapshot(self.metrics_port, self.redis)
        phase = _merge(mode, level, results, offered, op != "open")
        if sum(worker_cpu) > 0:
            phase.worker_cpu_share = [round(c / sum(worker_cpu), 3) for c in worker_cpu]
        phase.server_mean_ms = server_means(before, after)
        if phase.completed:
            phase.cpu_us_per_request = {
                name: round((cpu_after[name] - cpu_before[name]) * 1e6 / phase.completed, 1)
                for name in cpu_before}
            phase.cpu_us_per_request["clients"] = round(
                sum(r.cpu_s for r in results) * 1e6 / phase.completed, 1)
        earning = sum(r.earning_answers for r in results)
        points = sum(r.points_earned for r in results)
        record = asdict(phase)
        record.update(earning_answers=earning, points_earned=points,
                      earning_share=round(earning / phase.completed, 3) if phase.completed
                      else 0.0)
        self.records.append(record)
        self.raw.setdefault((mode, op), []).extend(results)
        print(e2e_report.row(phase) + f"  {record['earning_share']:>7.0%}", flush=True)
        time.sleep(self.args.pause)
        return phase

    def saturate(self, mode: str, level: str) -> Phase:
        """Closed loop with `--concurrency` calls in flight per client process."""
        a = self.args
        return self.phase(mode, level, "earn" if mode == "earn" else "closed", {
            "concurrency": a.concurrency, "warmup_s": a.warmup,
            "measure_s": a.saturation_seconds}, None)

    def run(self) -> dict[str, Any]:
        """The whole benchmark; returns the JSON document."""
        a = self.args
        started = time.perf_counter()
        print(f"starting payauth serve ({a.workers} worker(s)) in {self.folder}", flush=True)
        self.start_servers()
        print(f"loading {a.accounts} accounts and {a.cards} cards through the issuer API",
              flush=True)
        self.load_data()
        without, with_ = self.pools()
        print(f"loaded in {self.load_s:.1f} s; program {self.program_id} ({len(RULES)} rules, "
              f"{len(CHALLENGES)} challenges, {len(TIERS)} tiers) and {len(self.members)} "
              f"members in {self.enroll_s:.1f} s; cards without a member {len(without)}, with "
              f"{len(with_)}; starting the client processes", flush=True)
        self.start_clients()
        self.connection_split["payauth"] = self.balance("payauth")
        print("connections per worker: " + "/".join(
            map(str, self.connection_split["payauth"])), flush=True)
        title, rule = e2e_report.header().split("\n")
        print(f"{title}  earning\n{rule}---------", flush=True)
        # Warm-up: the workers' card-route and member-link caches fill, Redis grows its
        # structures; measured but left out of every figure.
        for mode in ("without", "with", "earn"):
            self.saturate(mode, "warm-up")
        for r in range(a.rounds):
            order = ("without", "with") if r % 2 == 0 else ("with", "without")
            for mode in order:
                self.saturate(mode, f"sat #{r + 1}")
            self.saturate("earn", f"sat #{r + 1}")
        sat = self.saturation_means()
        rate = min(sat["without"], sat["with"]) * a.latency_percent / 100
        for mode in ("without", "with", "with", "without"):
            self.phase(mode, f"open {a.latency_percent}%", "open", {
                "rate": rate / a.clients, "duration_s": a.latency_seconds,
                "drain_s": a.drain}, rate)
        return self.document(time.perf_counter() - started, rate)

    # -- results --------------------------------------------------------------------------------

    def _measured(self, mode: str, kind: str) -> list[dict[str, Any]]:
        return [p for p in self.records if p["mode"] == mode and p["level"].startswith(kind)]

    def saturation_means(self) -> dict[str, float]:
        """Mean closed-loop throughput per mode over the measured rounds."""
        return {mode: sum(p["achieved_rps"] for p in phases) / len(phases)
                for mode in ("without", "with", "earn")
                if (phases := self._measured(mode, "sat"))}

    def cpu_per_request(self, mode: str, kind: str) -> dict[str, float]:
        """Server CPU per request over the phases of a kind, weighted by their requests:
        payauth's processes (supervisor and workers), its Redis, and the clients."""
        phases = self._measured(mode, kind)
        n = sum(p["completed"] for p in phases)
        if not n:
            return {}

        def mean(key: str) -> float:
            return round(sum(p["cpu_us_per_request"].get(key, 0.0) * p["completed"]
                             for p in phases) / n, 1)

        workers, redis_cpu = mean("payauth"), mean("redis")
        return {"workers": workers, "redis": redis_cpu,
                "server": round(workers + redis_cpu, 1), "clients": mean("clients")}

    def latency(self, mode: str) -> dict[str, Any]:
        """Open-loop latency of a pool, its phases' histograms merged."""
        phases = self._measured(mode, "open")
        merged = _merge(mode, "open", self.raw.get((mode, "open"), []), None, False)
        means: dict[str, float | None] = {}
        for key in ("read_pipeline", "commit", "rpc"):
            values = [p["server_mean_ms"].get(key) for p in phases]
            values = [v for v in values if v is not None]
            means[key] = round(sum(values) / len(values), 3) if values else None
        return {
            "offered_rps": round(phases[0]["offered_rps"], 1) if phases else None,
            "achieved_rps": round(sum(p["achieved_rps"] for p in phases) / len(phases), 1)
            if phases else None,
            "p50": merged.p50, "p99": merged.p99, "p999": merged.p999, "max": merged.max,
            "n": merged.completed, "failed": merged.errors + merged.incomplete,
            "send_lag_p99_ms": max((p["send_lag_ms"] or {}).get("p99", 0.0) for p in phases)
            if phases else None,
            "server_mean_ms": means,
        }

    def document(self, elapsed_s: float, latency_rate: float) -> dict[str, Any]:
        """The JSON result."""
        a = self.args
        sat = self.saturation_means()
        rounds = {POOL_NAMES.get(m, m): [round(p["achieved_rps"], 1)
                                         for p in self._measured(m, "sat")]
                  for m in ("without", "with", "earn")}
        per_round = [round(w / wo, 3) for wo, w in zip(rounds["without_loyalty"],
                                                        rounds["with_loyalty"], strict=True)
                     if wo]
        cpu = {POOL_NAMES.get(m, m): self.cpu_per_request(m, "sat")
               for m in ("without", "with", "earn")}
        latency = {POOL_NAMES[m]: self.latency(m) for m in ("without", "with")}
        lo, hi = latency["without_loyalty"], latency["with_loyalty"]
        earning = {POOL_NAMES.get(m, m): {
            "answers_that_earned_share": round(
                sum(p["earning_answers"] for p in self._measured(m, "sat"))
                / max(1, sum(p["completed"] for p in self._measured(m, "sat"))), 3),
            "points_per_earning_answer": round(
                sum(p["points_earned"] for p in self._measured(m, "sat"))
                / max(1, sum(p["earning_answers"] for p in self._measured(m, "sat"))), 1),
        } for m in ("without", "with", "earn")}

        def diff(x: float | None, y: float | None) -> float | None:
            return None if x is None or y is None else round(x - y, 3)

        return {
            "authorize_rps": {"without_loyalty": round(sat["without"], 1),
                              "with_loyalty": round(sat["with"], 1)},
            "ratio_with_to_without": round(sat["with"] / sat["without"], 3),
            "ratio_per_round": per_round,
            "ratio_median_of_rounds": statistics.median(per_round) if per_round else None,
            "earn_rps": round(sat["earn"], 1),
            "saturation_rounds_rps": rounds,
            "cpu_us_per_request_at_saturation": cpu,
            "extra_server_cpu_us_per_authorize": diff(cpu["with_loyalty"].get("server"),
                                                      cpu["without_loyalty"].get("server")),
            "cpu_ratio_with_to_without": round(
                cpu["with_loyalty"]["server"] / cpu["without_loyalty"]["server"], 3)
            if cpu["without_loyalty"].get("server") else None,
            "latency_ms": latency,
            "extra_latency_ms": {"p50": diff(hi["p50"], lo["p50"]),
                                 "p99": diff(hi["p99"], lo["p99"]),
                                 "server_rpc_mean": diff(hi["server_mean_ms"]["rpc"],
                                                         lo["server_mean_ms"]["rpc"]),
                                 "server_commit_mean": diff(hi["server_mean_ms"]["commit"],
                                                            lo["server_mean_ms"]["commit"])},
            "earning": earning,
            "phases": self.records,
            "machine": machine(self.redis),
            "config": {
                "command": " ".join([Path(sys.executable).name, "-m", "benchmarks.loyalty",
                                     *sys.argv[1:]]),
                "workers": a.workers, "client_processes": a.clients,
                **cpu_pinning(a),
                "channels_per_client": a.channels, "concurrency_per_client": a.concurrency,
                "accounts": a.accounts, "cards": a.cards, "member_share": a.member_share,
                "members": len(self.members), "rounds": a.rounds,
                "saturation_seconds": a.saturation_seconds, "warmup_seconds": a.warmup,
                "latency_percent": a.latency_percent, "latency_rate_rps": round(latency_rate, 1),
                "latency_seconds": a.latency_seconds, "drain_seconds": a.drain,
                "program": {"earning_rules": len(RULES), "challenges": len(CHALLENGES),
                            "tiers": len(TIERS),
                            "multiplier_combination": "HIGHEST",
                            "rules": [r[0] for r in RULES],
                            "challenge_ids": [c[0] for c in CHALLENGES]},
                "redis": "embedded (unix socket, AOF always)", "serve_args": a.serve_arg,
                "quick": a.quick, "seed": a.seed, "run_id": self.run_id,
                "load_seconds": round(self.load_s, 1), "enroll_seconds": round(self.enroll_s, 1),
                "connections_per_worker": self.connection_split.get("payauth", []),
                "client_grpc_environment": self.client_grpc_environment,
                "elapsed_seconds": round(elapsed_s, 1),
                "histogram": "HdrHistogram 1 us..60 s, 3 significant digits, merged",
            },
        }


def server_means(before: Counters, after: Counters) -> dict[str, float | None]:
    """Mean read pipeline, commit and RPC time (Authorize, or Earn) of one phase as payauth's
    own metrics saw them: the server's share of the latency, without the clients'."""
    def mean(seconds_key: str, count_key: str) -> float | None:
        count = after.prometheus.get(count_key, 0) - before.prometheus.get(count_key, 0)
        seconds = after.prometheus.get(seconds_key, 0) - before.prometheus.get(seconds_key, 0)
        return round(seconds * 1000 / count, 3) if count > 0 else None

    return {
        "read_pipeline": mean("redis_seconds:authorize_read", "redis:authorize_read"),
        "commit": mean("redis_seconds:authorize_commit", "redis:authorize_commit"),
        "rpc": mean("rpc_seconds:Authorize", "rpc_count:Authorize")
        or mean("rpc_seconds:Earn", "rpc_count:Earn"),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; --quick shrinks the data set and the phases for a smoke run."""
    cores = os.cpu_count() or 1
    p = argparse.ArgumentParser(prog="python -m benchmarks.loyalty", description=(
        "What a loyalty program of 20 earning rules and 5 challenges costs an Authorize "
        "(cards of members against cards of non-members, same run), and Loyalty.Earn "
        "throughput."))
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 600 accounts and cards, one short round (under a minute)")
    p.add_argument("--workers", type=int, default=cores,
                   help="payauth worker processes (default: cores, %(default)s)")
    p.add_argument("--accounts", type=int, default=None, help="accounts (default 2,000)")
    p.add_argument("--cards", type=int, default=None, help="cards (default 2,000)")
    p.add_argument("--member-share", type=float, default=0.5,
                   help="share of accounts enrolled as members (default %(default)s)")
    p.add_argument("--channels", type=int, default=CHANNELS,
                   help="connections per client process (default %(default)s)")
    p.add_argument("--rounds", type=int, default=None,
                   help="saturation rounds, each without + with (in alternating order) + "
                        "Earn (default 4, quick 1)")
    p.add_argument("--latency-percent", type=int, default=50,
                   help="open-loop rate for the latency phases, in percent of the lower "
                        "saturation of the two pools (default %(default)s)")
    p.add_argument("--latency-seconds", type=float, default=None,
                   help="seconds of each open-loop latency phase (default 6, quick 2)")
    add_harness_arguments(p, "loyalty")
    args = p.parse_args(argv)
    quick = args.quick
    args.accounts = args.accounts or (600 if quick else 2_000)
    args.cards = args.cards or (600 if quick else 2_000)
    args.rounds = args.rounds or (1 if quick else 4)
    resolve_harness_defaults(args)
    args.latency_seconds = args.latency_seconds or (2.0 if quick else 6.0)
    if not 0 < args.member_share < 1:
        p.error("--member-share must be between 0 and 1")
    # What the e2e harness reads of its arguments.
    args.redis_url, args.pan_key_file, args.modes = None, None, ["authorize"]
    args.no_compact = False
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; write and print its results."""
    args = parse_args(argv)
    return run_and_write(LoyaltyHarness(args), args.out, "loyalty", report.plot,
                         report.summary)


if __name__ == "__main__":
    raise SystemExit(main())
