"""The Authorize pipeline without gRPC: `python -m benchmarks.pipeline` (`make bench-pipeline`).

What payauth's own decision costs a worker, apart from the gRPC stack: the worker's
`AuthorizePipeline` (validation, the read pipeline, the issuer's policy and model, the commit
Function, the answer; the Redis client and its event-loop turns included) driven in one
process against the embedded redis-server (AOF, `appendfsync always`, as `payauth serve`
starts it), with the end-to-end benchmark's data set, mix and demo decision core. The figure
is the driving process's CPU per decision, at several numbers of authorizations in flight:
they set how many requests share a Redis batch (in the end-to-end benchmark a worker's batch
carries about four round trips), and the per-batch work is much of the cost.

In the end-to-end benchmark the same work hides inside "payauth's own" CPU beside gRPC's
wake-ups and moves with the clients' share of the cores; here a change to the pipeline's
Python is measured alone. `--ab-pythonpath DIR` measures the server code under DIR (a folder
holding `payauth/server`) beside the checkout's: one long-lived driver process per code, asked
in turn level by level (the order rotating), so the host's drift moves both alike.

Prints the table, writes benchmarks/results/pipeline.json and pipeline.png.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.e2e.run import machine  # noqa: E402
from benchmarks.e2e.servers import cpu_ticks, stolen_share  # noqa: E402
from benchmarks.output import write_results  # noqa: E402
from payauth.server.embedded_redis import EmbeddedRedis  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
CHECKOUT = "payauth"
OTHER = "payauth_b"


def _driver_command(args: argparse.Namespace, redis_url: str, pan_key: Path,
                    run_id: str) -> list[str]:
    """The driver's command line, as every driver of this run shares it."""
    return [sys.executable, "-m", "benchmarks.pipeline.driver", "--redis-url", redis_url,
            "--pan-key", str(pan_key), "--run-id", run_id, "--accounts", str(args.accounts),
            "--cards", str(args.cards), "--seed", str(args.seed)]


def _environment(pythonpath: str | None) -> dict[str, str]:
    """This process's environment, with `pythonpath` first on PYTHONPATH when given."""
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pythonpath, env.get("PYTHONPATH"))
                                            if p)
    return env


class _Driver:
    """A driver process (benchmarks/pipeline/driver.py) serving measurements of one server
    code, its pipeline warmed up once."""

    def __init__(self, command: list[str], pythonpath: str | None) -> None:
        self.process = subprocess.Popen(command, cwd=REPO_ROOT, env=_environment(pythonpath),
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True)

    def reply(self) -> dict[str, Any]:
        """The driver's next JSON line; the driver's failure, raised, if it ended."""
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"a pipeline driver ended ({self.process.wait()}); its "
                               "error is above")
        return json.loads(line)

    def measure(self, in_flight: int, decisions: int) -> dict[str, Any]:
        """CPU per decision and decisions per second over `decisions` at `in_flight`."""
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"in_flight": in_flight,
                                             "decisions": decisions}) + "\n")
        self.process.stdin.flush()
        return self.reply()

    def close(self) -> None:
        """End the driver (its stdin ends) and wait for it."""
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(30)


def _summary(rounds: list[dict[str, Any]], variants: list[str],
             in_flight: list[int]) -> dict[str, Any]:
    """Medians over the rounds of CPU per decision and throughput; with two variants, the
    other code's CPU over the checkout's, round by round and its median."""
    summary: dict[str, Any] = {"cpu_us_per_decision": {}, "decisions_per_s": {}}
    for variant in variants:
        for key, field in (("cpu_us_per_decision", "cpu_us"), ("decisions_per_s", "per_s")):
            summary[key][variant] = {
                str(n): statistics.median(r[variant][str(n)][field] for r in rounds)
                for n in in_flight}
    if OTHER in variants:
        by_round = {str(n): [round(r[OTHER][str(n)]["cpu_us"] / r[CHECKOUT][str(n)]["cpu_us"], 3)
                             for r in rounds] for n in in_flight}
        summary["cpu_ratio_b_to_checkout"] = {
            n: {"median": statistics.median(ratios), "rounds": ratios}
            for n, ratios in by_round.items()}
    return summary


def _plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for variant, by_level in doc["cpu_us_per_decision"].items():
        levels = [int(n) for n in by_level]
        (line,) = ax.plot(levels, list(by_level.values()), marker="o",
                          label=f"{variant} (median; dots: the rounds)")
        for r in doc["rounds"]:
            ax.scatter(levels, [r[variant][str(n)]["cpu_us"] for n in levels], s=12,
                       alpha=0.4, color=line.get_color())
    ax.set_xscale("log", base=2)
    ax.set_xticks(levels, [str(n) for n in levels])
    ax.set_xlabel("authorizations in flight")
    ax.set_ylabel("CPU per decision (µs), the driving process")
    ax.set_title("The Authorize pipeline without gRPC, against the embedded Redis")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _table(doc: dict[str, Any]) -> str:
    variants = list(doc["cpu_us_per_decision"])
    lines = [f"{'in flight':>9}" + "".join(f"{v + ' µs/decision':>24}{v + ' /s':>14}"
                                           for v in variants)]
    for n in doc["cpu_us_per_decision"][variants[0]]:
        lines.append(f"{n:>9}" + "".join(
            f"{doc['cpu_us_per_decision'][v][n]:>24.1f}{doc['decisions_per_s'][v][n]:>14,.0f}"
            for v in variants))
    for n, ratio in doc.get("cpu_ratio_b_to_checkout", {}).items():
        lines.append(f"CPU {OTHER} / {CHECKOUT} at {n} in flight: {ratio['median']:.3f} "
                     f"(rounds {', '.join(f'{x:.3f}' for x in ratio['rounds'])})")
    lines.append(f"CPU stolen by the hypervisor during the rounds: at most "
                 f"{100 * max(doc['cpu_stolen_share_by_round']):.0f} %")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Load the data once; start a driver per server code and warm each up; then, in each
    round, measure every level on every driver in turn (the order rotating)."""
    folder = Path(tempfile.mkdtemp(prefix="payauth-pipeline-"))
    redis = EmbeddedRedis(folder / "redis")
    redis.start()
    drivers: dict[str, _Driver] = {}
    try:
        pan_key, run_id = folder / "pan.key", secrets.token_hex(4)
        command = _driver_command(args, redis.url, pan_key, run_id)
        started = time.perf_counter()
        loading = _Driver([*command, "--load"], None)
        core = loading.reply()
        loading.close()
        print(f"loaded {args.accounts} accounts, {args.cards} cards and the demo core in "
              f"{time.perf_counter() - started:.1f} s", flush=True)
        variants = {CHECKOUT: None}
        if args.ab_pythonpath:
            variants[OTHER] = str(args.ab_pythonpath.resolve())
        for number, (name, pythonpath) in enumerate(variants.items()):
            drivers[name] = _Driver([*command, "--driver", str(number),
                                     "--warmup", str(args.warmup)], pythonpath)
        for driver in drivers.values():
            driver.reply()  # warmed up
        names = list(variants)
        rounds, stolen = [], []
        for k in range(args.rounds):
            before = cpu_ticks()
            figures: dict[str, dict[str, Any]] = {name: {} for name in names}
            for level, in_flight in enumerate(args.in_flight):
                turn = (k + level) % len(names)
                for name in names[turn:] + names[:turn]:
                    figures[name][str(in_flight)] = drivers[name].measure(in_flight,
                                                                          args.decisions)
            stolen.append(stolen_share(before, cpu_ticks()) or 0.0)
            rounds.append(figures)
            print(f"round {k + 1}: " + "; ".join(
                f"{name} " + ", ".join(f"{n} in flight {f['cpu_us']} µs" for n, f in
                                       figures[name].items()) for name in names),
                flush=True)
    finally:
        for driver in drivers.values():
            driver.close()
        redis.stop()
        shutil.rmtree(folder, ignore_errors=True)
    return {
        **_summary(rounds, list(variants), args.in_flight),
        "rounds": rounds,
        "cpu_stolen_share_by_round": stolen,
        "decision_core": core,
        "machine": machine(None),
        "config": {"accounts": args.accounts, "cards": args.cards, "rounds": args.rounds,
                   "in_flight": args.in_flight, "decisions": args.decisions,
                   "warmup": args.warmup, "seed": args.seed, "variants": variants,
                   "command": "python -m benchmarks.pipeline " + " ".join(sys.argv[1:])},
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; --quick shrinks everything for a smoke run."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.pipeline", description=(
        "The worker's Authorize pipeline driven in-process against the embedded Redis: CPU "
        "per decision by the number of authorizations in flight."))
    p.add_argument("--accounts", type=int, default=2_000)
    p.add_argument("--cards", type=int, default=10_000)
    p.add_argument("--in-flight", type=lambda text: [int(x) for x in text.split(",")],
                   default=[4, 16, 64],
                   help="authorizations in flight, comma-separated (default 4,16,64)")
    p.add_argument("--decisions", type=int, default=5_000,
                   help="decisions measured at each level in each round (default 5,000)")
    p.add_argument("--warmup", type=int, default=15_000,
                   help="decisions each driver makes before the first round, so it knows "
                        "the card routes as a running worker does (default 15,000)")
    p.add_argument("--rounds", type=int, default=9, help="rounds; figures are medians")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--ab-pythonpath", type=Path, default=None,
                   help="also measure the server code under this folder (holding "
                        "payauth/server), as payauth_b, alternating with the checkout's")
    p.add_argument("--quick", action="store_true", help="a smoke run: small and short")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results",
                   help="folder of pipeline.json and pipeline.png")
    args = p.parse_args(argv)
    if args.quick:
        args.accounts, args.cards, args.rounds = 200, 1_000, 2
        args.decisions, args.warmup = 500, 1_000
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; write and print its results."""
    args = parse_args(argv)
    write_results(run(args), args.out, "pipeline", _plot, _table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
