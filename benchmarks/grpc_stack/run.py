"""What an empty grpc.aio handler costs its server per call, under gRPC core settings.

Every payauth request pays the gRPC stack before any of payauth's work: its share is what the
end-to-end benchmark's empty handler measures. gRPC core reads some of its behaviour from the
environment as it starts in a process (`GRPC_EXPERIMENTS`), and payauth's workers start with
settings of their own (`payauth.server.app.GRPC_ENVIRONMENT`). This benchmark starts one empty
server per variant of those settings (`server.py`, built as a payauth worker builds its
server), drives each in turn from this process with unary calls and with stream messages, in
rotating order over several rounds, and reports each server's CPU and context switches per
call. Run it again after a grpcio upgrade: an experiment gRPC has made permanent or removed
shows up as a variant that no longer differs from gRPC's defaults (and gRPC logs "Unknown
experiment" at each start).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import uvloop

from benchmarks.e2e.run import machine
from benchmarks.e2e.servers import (
    context_switches_by_kind,
    cpu_seconds,
    cpu_ticks,
    stolen_share,
)
from benchmarks.grpc_stack.server import SERVICE
from benchmarks.output import write_results
from payauth.server.app import GRPC_ENVIRONMENT

REPO_ROOT = Path(__file__).resolve().parents[2]
KINDS = ("unary", "stream")
GRPC_DEFAULT = "grpc_default"


class _Server:
    """One empty server process with its own gRPC core settings, and the channels to it."""

    def __init__(self, name: str, experiments: str | None, folder: Path) -> None:
        self.name = name
        env = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
        if experiments is not None:
            env["GRPC_EXPERIMENTS"] = experiments
        port_file = folder / f"{name}.port"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.grpc_stack.server", str(port_file)],
            cwd=REPO_ROOT, env=env)
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the {name} server did not start")
            time.sleep(0.05)
        self.target = f"127.0.0.1:{port_file.read_text()}"
        self.channels: list[grpc.aio.Channel] = []

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


async def _unary(channels: list[grpc.aio.Channel], in_flight: int, seconds: float) -> int:
    """`in_flight` loops of unary calls over the channels for `seconds`; the calls made."""
    calls = 0
    end = time.perf_counter() + seconds

    async def loop(channel: grpc.aio.Channel) -> None:
        nonlocal calls
        method = channel.unary_unary(f"/{SERVICE}/Unary")
        while time.perf_counter() < end:
            await method(b"\x00")
            calls += 1

    await asyncio.gather(*(loop(channels[i % len(channels)]) for i in range(in_flight)))
    return calls


async def _stream(channels: list[grpc.aio.Channel], streams: int, window: int,
                  seconds: float) -> int:
    """`streams` streams each keeping `window` messages unanswered for `seconds`, then
    closed; the answers read."""
    answers = 0
    end = time.perf_counter() + seconds

    async def one(channel: grpc.aio.Channel) -> None:
        nonlocal answers
        call = channel.stream_stream(f"/{SERVICE}/Stream")()
        for _ in range(window):
            await call.write(b"\x00")
        while time.perf_counter() < end:
            await call.read()
            answers += 1
            await call.write(b"\x00")
        await call.done_writing()
        while await call.read() is not grpc.aio.EOF:
            answers += 1  # the window's last answers: the server's CPU counts them too

    await asyncio.gather(*(one(channels[i % len(channels)]) for i in range(streams)))
    return answers


async def _phase(server: _Server, kind: str, args: argparse.Namespace) -> dict[str, Any]:
    """One kind of call on one server: warm-up, then the measured window."""
    if kind == "unary":
        def drive(seconds: float) -> Any:
            return _unary(server.channels, args.unary_in_flight, seconds)
    else:
        def drive(seconds: float) -> Any:
            return _stream(server.channels, args.streams, args.stream_window, seconds)
    await drive(args.warmup)
    pids = [server.process.pid]
    cpu_before, switches_before = cpu_seconds(pids), context_switches_by_kind(pids)
    ticks_before = cpu_ticks()
    own_before = time.process_time()
    started = time.perf_counter()
    calls = await drive(args.seconds)
    elapsed = time.perf_counter() - started
    own = time.process_time() - own_before
    ticks_after = cpu_ticks()
    cpu = cpu_seconds(pids) - cpu_before
    switches = [after - before for after, before in
                zip(context_switches_by_kind(pids), switches_before, strict=True)]
    return {
        "variant": server.name, "kind": kind, "calls": calls,
        "calls_per_s": round(calls / elapsed),
        "server_cpu_us_per_call": round(cpu / calls * 1e6, 1),
        "server_switches_per_call": round(switches[0] / calls, 2),
        "server_preemptions_per_call": round(switches[1] / calls, 2),
        "client_cpu_us_per_call": round(own / calls * 1e6, 1),
        "cpu_stolen_share": stolen_share(ticks_before, ticks_after) or 0.0,
    }


async def _run(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    variants: dict[str, str | None] = {GRPC_DEFAULT: None,
                                       "payauth": GRPC_ENVIRONMENT["GRPC_EXPERIMENTS"]}
    variants.update(args.variant)
    servers = [_Server(name, experiments, folder) for name, experiments in variants.items()]
    phases: list[dict[str, Any]] = []
    try:
        for server in servers:
            server.channels = [grpc.aio.insecure_channel(server.target)
                               for _ in range(args.channels)]
        for r in range(args.rounds):
            for kind in KINDS:
                shift = r % len(servers)
                for server in servers[shift:] + servers[:shift]:
                    phase = await _phase(server, kind, args)
                    phase["round"] = r
                    phases.append(phase)
                    print(f"round {r} {kind:<7}{server.name:<16}"
                          f"{phase['server_cpu_us_per_call']:>8.1f} µs"
                          f"{phase['server_switches_per_call']:>7.2f} switches"
                          f"{phase['calls_per_s']:>8}/s  stolen "
                          f"{phase['cpu_stolen_share']:.0%}", flush=True)
    finally:
        for server in servers:
            for channel in server.channels:
                await channel.close()
            server.stop()
    return {
        "variants": {name: {"GRPC_EXPERIMENTS": experiments}
                     for name, experiments in variants.items()},
        "summary": _summary(phases, list(variants)),
        "phases": phases,
        "machine": machine(None),
        "config": {"rounds": args.rounds, "seconds": args.seconds, "warmup": args.warmup,
                   "channels": args.channels, "unary_in_flight": args.unary_in_flight,
                   "streams": args.streams, "stream_window": args.stream_window,
                   "client_grpc_experiments": os.environ.get("GRPC_EXPERIMENTS")},
    }


def _summary(phases: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """Medians over the rounds per kind and variant, and each round's CPU per call over
    gRPC's defaults' in the same round."""
    out: dict[str, Any] = {}
    for kind in KINDS:
        mine = [p for p in phases if p["kind"] == kind]
        base = {p["round"]: p["server_cpu_us_per_call"] for p in mine
                if p["variant"] == GRPC_DEFAULT}
        out[kind] = {}
        for name in names:
            rows = [p for p in mine if p["variant"] == name]
            out[kind][name] = {
                "server_cpu_us_per_call": statistics.median(
                    p["server_cpu_us_per_call"] for p in rows),
                "server_switches_per_call": statistics.median(
                    p["server_switches_per_call"] for p in rows),
                "server_preemptions_per_call": statistics.median(
                    p["server_preemptions_per_call"] for p in rows),
                "calls_per_s": statistics.median(p["calls_per_s"] for p in rows),
                "cpu_over_grpc_default_rounds": [
                    round(p["server_cpu_us_per_call"] / base[p["round"]], 3) for p in rows],
                "cpu_stolen_share_max": max(p["cpu_stolen_share"] for p in rows),
            }
            out[kind][name]["cpu_over_grpc_default"] = statistics.median(
                out[kind][name]["cpu_over_grpc_default_rounds"])
    return out


def _plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(KINDS), figsize=(9, 4))
    for ax, kind in zip(axes, KINDS, strict=True):
        names = list(doc["summary"][kind])
        values = [doc["summary"][kind][n]["server_cpu_us_per_call"] for n in names]
        bars = ax.bar(range(len(names)), values)
        for bar, name in zip(bars, names, strict=True):
            s = doc["summary"][kind][name]
            ax.annotate(f"{s['server_cpu_us_per_call']:.0f} µs\n"
                        f"{s['server_switches_per_call']:.1f} switches",
                        (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(names)), names, fontsize=8)
        ax.set_ylabel("server CPU per call (µs)" if kind == "unary"
                      else "server CPU per message (µs)")
        ax.set_title(f"empty grpc.aio handler, {kind}")
        ax.set_ylim(0, max(values) * 1.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _table(doc: dict[str, Any]) -> str:
    width = max(26, *(len(v["GRPC_EXPERIMENTS"] or "") + 2 for v in doc["variants"].values()))
    lines = [f"{'kind':<8}{'variant':<16}{'GRPC_EXPERIMENTS':<{width}}{'server µs/call':>15}"
             f"{'switches/call':>15}{'preempted':>11}{'calls/s':>9}"
             f"{'CPU / default (rounds)':>50}{'stolen max':>12}"]
    for kind, by_variant in doc["summary"].items():
        for name, s in by_variant.items():
            experiments = doc["variants"][name]["GRPC_EXPERIMENTS"] or "(unset)"
            rounds = ", ".join(f"{r:.3f}" for r in s["cpu_over_grpc_default_rounds"])
            ratio = f"{s['cpu_over_grpc_default']:.3f} ({rounds})"
            lines.append(f"{kind:<8}{name:<16}{experiments:<{width}}"
                         f"{s['server_cpu_us_per_call']:>15.1f}"
                         f"{s['server_switches_per_call']:>15.2f}"
                         f"{s['server_preemptions_per_call']:>11.2f}{s['calls_per_s']:>9,.0f}"
                         f"{ratio:>50}{s['cpu_stolen_share_max']:>12.0%}")
    return "\n".join(lines)


def _variant(text: str) -> tuple[str, str]:
    name, sep, experiments = text.partition("=")
    if not sep or not name or name in (GRPC_DEFAULT, "payauth"):
        raise argparse.ArgumentTypeError(
            f"expected NAME=GRPC_EXPERIMENTS with a new NAME, got {text!r}")
    return name, experiments


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; write and print its results."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.grpc_stack",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=4.0, help="measured seconds per phase")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds before each phase")
    p.add_argument("--channels", type=int, default=4, help="channels to each server")
    p.add_argument("--unary-in-flight", type=int, default=64)
    p.add_argument("--streams", type=int, default=8)
    p.add_argument("--stream-window", type=int, default=16,
                   help="messages unanswered per stream")
    p.add_argument("--variant", type=_variant, action="append", default=[],
                   metavar="NAME=GRPC_EXPERIMENTS",
                   help="one more server with this GRPC_EXPERIMENTS (repeat for several)")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    p.add_argument("--quick", action="store_true", help="a smoke run: 1 round of 1 s phases")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds, args.warmup = 1, 1.0, 0.3
    with tempfile.TemporaryDirectory(prefix="payauth-grpc-stack-") as folder:
        doc = uvloop.run(_run(args, Path(folder)))
    write_results(doc, args.out, "grpc_stack", _plot, _table)
    return 0
