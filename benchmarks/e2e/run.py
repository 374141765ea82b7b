"""The end-to-end benchmark: `python -m benchmarks.e2e` (or `benchmarks/e2e/run.py`, `make bench`).

One run, everything side by side, because this machine is shared and noisy and only figures
measured together compare: it starts `payauth serve` and the empty handler, loads the data set
through the issuer API, starts the client processes, then

1. measures each mode's saturation throughput (closed loop, many requests in flight), in
   `--rounds` rounds, the modes in turn, the order reversed every other round; each figure is
   the median of its rounds and each ratio the median of the rounds' own ratios (modes of a
   round run one after the other), given with that median's confidence interval;
2. for each load level (25/50/75/90/100 % of that mode's saturation) runs each mode in turn
   open loop, so slow drift of the machine hits all modes alike;
3. counts Redis round trips and commands per authorization across the payauth phases;

and prints the table, writes benchmarks/results/e2e.json and e2e.png. See README.md beside
this file for the method and how to read the results.
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing
import os
import platform
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import grpc  # noqa: E402
import redis  # noqa: E402
import uvloop  # noqa: E402

from benchmarks.e2e import dataset, fsyncs, report, wakeups  # noqa: E402
from benchmarks.e2e.driver import (  # noqa: E402
    CHANNELS,
    STREAMS,
    ClientConfig,
    PhaseResult,
    client_environment,
    client_main,
    failed,
    new_histogram,
)
from benchmarks.e2e.servers import (  # noqa: E402
    REPO_ROOT,
    Counters,
    ServerProcess,
    connections_by_worker,
    context_switches,
    cpu_seconds,
    cpu_ticks,
    empty_server,
    payauth_server,
    snapshot,
    stolen_share,
)
from benchmarks.e2e.targets import (  # noqa: E402
    LATENCY_TARGETS,
    RATIO_TARGETS,
    latency_target_floor,
    median_with_interval,
    round_order,
    target_rounds,
    target_verdicts,
)
from benchmarks.e2e.wakeups import WakeupMeter  # noqa: E402
from benchmarks.output import cpu_model, write_results  # noqa: E402
from payauth.server.app import GRPC_ENVIRONMENT  # noqa: E402

# mode -> (server, streaming)
MODES: dict[str, tuple[str, bool]] = {
    "empty": ("empty", False),
    "authorize": ("payauth", False),
    "stream": ("payauth", True),
    "empty_stream": ("empty", True),
    "empty_redis": ("empty_redis", False),
    "authorize_b": ("payauth_b", False),
    "stream_b": ("payauth_b", True),
}
# What the empty_redis handler waits for per call: the round trips of an Authorize (brief §4),
# a PING and then a write that the embedded Redis answers once its AOF is synced.
EMPTY_REDIS_ROUND_TRIPS = 2
# The modes of each throughput target side by side (empty, authorize, stream), so that the
# rounds' back-and-forth order (`round_order`) runs every target's pair one right after the
# other.
DEFAULT_MODES = ("empty_redis", "empty", "authorize", "stream", "empty_stream")
DEFAULT_LEVELS = (25, 50, 75, 90, 100)
# The load the latency targets are set at, in percent of Authorize's saturation.
TARGET_PERCENT = 50
# The level name of the empty handler (and empty_redis) offered Authorize's target load.
FLOOR_LEVEL = f"authorize {TARGET_PERCENT}%"
# The modes measured at that load as the floors under Authorize's latency there.
FLOOR_MODES = ("empty", "empty_redis")
# The wake-up meter (`wakeups`): seconds idle before the clients start (by --quick), its
# sleep there, and its sleep beside a phase (longer, so that it adds little to the load).
IDLE_WAKEUP_S = {False: 5.0, True: 2.0}
IDLE_WAKEUP_INTERVAL_S = 0.002
PHASE_WAKEUP_INTERVAL_S = 0.004
# The fsync meter (`fsyncs`): appends synced, back to back and paused, idle before the clients
# start and after the last phase (by --quick), and the pause.
FSYNC_COUNT = {False: 1000, True: 300}
FSYNC_PAUSE_S = 0.002
# Redis's latency monitor records what its main thread waited at least this long for (an AOF
# fsync, a fork, a command): on this VM's disk an fsync took up to 0.7 s at times (RUNS.md,
# "Looked at, 2026-12-03 20:40-21:20Z"), past payauth's 0.5 s Redis budget.
REDIS_STALL_THRESHOLD_MS = 50
# The open-loop level every mode is offered first at the same fixed rate (--low-rate): a
# request rarely meets another in flight, so its latency is what one request costs alone.
LOW_RATE_RPS = 50.0


@dataclass
class Phase:
    """One measured phase, merged over the client processes."""

    mode: str
    level: str  # "saturation" or "25%", "50%", ...
    offered_rps: float | None
    achieved_rps: float
    p50: float
    p99: float
    p999: float
    max: float
    completed: int
    incomplete: int
    errors: int
    duration_s: float
    outcomes: dict[str, int]
    error_samples: dict[str, str]
    send_lag_ms: dict[str, float] | None = None
    cpu_us_per_request: dict[str, float] = field(default_factory=dict)
    worker_cpu_share: list[float] = field(default_factory=list)  # of the mode's server
    server_mean_ms: dict[str, float | None] = field(default_factory=dict)  # payauth's view
    stalls: dict[str, Any] = field(default_factory=dict)  # payauth's event loops held up
    # Redis forks (AOF rewrites) begun during the phase: the fork stops Redis's main thread,
    # the child takes a core for a while, so a level's tail can be theirs.
    redis_forks: int = 0
    redis_fork_ms: float | None = None  # the last one's fork time
    # The embedded Redis's latency monitor over the phase: for each kind of event at or over
    # REDIS_STALL_THRESHOLD_MS (`aof-fsync-always`: an fsync its main thread waited for;
    # `fork`, `command` ...), the longest in ms. Every client of Redis waits through them.
    redis_stalls_ms: dict[str, int] = field(default_factory=dict)
    # Context switches per request of each process group (every thread): each one a thread
    # put to sleep and woken, the cost that per-message transports pay in wake-ups.
    switches_per_request: dict[str, float] = field(default_factory=dict)
    # The share of the machine's CPU time the hypervisor gave to other guests during the
    # phase: on a shared host, why the same code measures slower in one run than another.
    cpu_stolen_share: float | None = None
    # How late a process sleeping on each CPU woke up during the phase (`wakeups`), in µs:
    # measured at the latency targets' load only.
    wakeup_us: dict[str, Any] | None = None
    # Measured again because more than --max-stolen of the CPU was stolen during it: kept in
    # `phases` for the record, left out of every figure.
    superseded: bool = False

    def cores_busy(self) -> float | None:
        """An open-loop level's CPU (servers, Redis, clients) per second of it: the load in
        cores, whatever its percent of saturation. None for a closed loop, whose CPU also
        covers its warm-up."""
        if self.offered_rps is None or not self.cpu_us_per_request or not self.duration_s:
            return None
        return round(sum(self.cpu_us_per_request.values()) * self.completed / 1e6
                     / self.duration_s, 2)

    def latency_entry(self) -> dict[str, float | None]:
        """The phase as the JSON's latency_ms entry."""
        return {"offered_rps": _round(self.offered_rps), "achieved_rps": _round(self.achieved_rps),
                "p50": self.p50, "p99": self.p99, "p999": self.p999, "max": self.max,
                "failed": self.errors + self.incomplete, "send_lag_ms": self.send_lag_ms,
                "redis_forks": self.redis_forks, "cores_busy": self.cores_busy(),
                "cpu_stolen_share": self.cpu_stolen_share,
                **({"redis_stalls_ms": self.redis_stalls_ms} if self.redis_stalls_ms else {}),
                **({"stalls": self.stalls} if self.stalls else {}),
                **({"wakeup_us": self.wakeup_us} if self.wakeup_us else {})}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


@dataclass
class RedisTally:
    """Counter deltas summed over a set of phases."""

    seconds: float = 0.0
    prometheus: dict[str, float] = field(default_factory=dict)
    commands: dict[str, int] = field(default_factory=dict)
    command_usec: dict[str, int] = field(default_factory=dict)
    total_commands: int = 0
    total_reads: int = 0

    def add(self, before: Counters, after: Counters) -> None:
        """Add the change between two snapshots."""
        self.seconds += after.at - before.at
        _add_counts(self.prometheus, after.prometheus, before.prometheus)
        _add_counts(self.commands, after.commands, before.commands)
        _add_counts(self.command_usec, after.command_usec, before.command_usec)
        self.total_commands += after.total_commands - before.total_commands
        self.total_reads += after.total_reads - before.total_reads

    def merge(self, other: RedisTally) -> None:
        """Add another tally's deltas to this one."""
        self.seconds += other.seconds
        self.total_commands += other.total_commands
        self.total_reads += other.total_reads
        _add_counts(self.prometheus, other.prometheus)
        _add_counts(self.commands, other.commands)
        _add_counts(self.command_usec, other.command_usec)


def _add_counts(total: dict[str, Any], counts: dict[str, Any],
                minus: dict[str, Any] | None = None) -> None:
    """Add each of `counts` (less its value in `minus`, where given) to `total`'s."""
    for key, value in counts.items():
        total[key] = total.get(key, 0) + value - (minus.get(key, 0) if minus else 0)


class Harness:
    """Owns the servers, the client processes and the results of one run."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.run_id = secrets.token_hex(3)
        self.folder = Path(tempfile.mkdtemp(prefix="payauth-e2e-"))
        self.payauth: ServerProcess | None = None
        self.metrics_port = 0
        # The other servers, when their modes run: "empty", "empty_redis", "payauth_b".
        self.other_servers: dict[str, ServerProcess] = {}
        self.redis: redis.Redis | None = None
        self.conns: list[Connection] = []
        self.clients: list[multiprocessing.process.BaseProcess] = []
        self.phases: list[Phase] = []
        self.saturation: dict[str, float] = {}
        self.saturation_rounds: dict[str, list[Phase]] = {}
        self.tallies: dict[str, RedisTally] = {}
        self.load_s = 0.0
        self.compactions = 0  # AOF rewrites the harness asked for between phases
        self.client_grpc_environment: dict[str, str] = {}  # what the clients started with
        self.compact_s = 0.0
        self.compact_cpu_s = 0.0  # their children's CPU
        self.compact_base_bytes = 0  # the last rewrite's file
        self.cpu_groups: dict[str, list[int]] = {}
        self.redis_pids: list[int] = []  # the embedded Redis (an external one is not ours)
        self.connection_split: dict[str, list[int]] = {}
        self.data: dataset.DataSet | None = None
        self.decision_core: dict[str, str | int] | None = None  # what load_data activated
        # The wake-up meter with nothing driven, before the phases and after them: how the
        # host itself changed while the run measured.
        self.wakeups_idle: dict[str, Any] | None = None
        self.wakeups_idle_after: dict[str, Any] | None = None
        self.fsync_idle: dict[str, Any] | None = None
        self.fsync_idle_after: dict[str, Any] | None = None

    # -- set-up and tear-down -----------------------------------------------------------------

    @property
    def watch_redis_stalls(self) -> bool:
        """Whether Redis's latency monitor is set and read around each phase: on the embedded
        Redis only, the harness's own to configure (a given one is used as it is)."""
        return not self.args.redis_url

    def start_servers(self) -> None:
        """Start both servers at once and wait for both."""
        a = self.args
        needed = {m[0] for m in (MODES[x] for x in a.modes)} | {"payauth"}
        self.payauth, self.metrics_port = payauth_server(
            self.folder, a.workers, a.redis_url, a.pan_key_file, a.serve_arg)
        self.spawn(self.payauth)
        if "empty" in needed:
            self.other_servers["empty"] = empty_server(self.folder, a.workers)
            self.spawn(self.other_servers["empty"])
        self.payauth.wait_serving()
        url = a.redis_url or f"unix://{self.folder / 'payauth' / 'redis' / 'redis.sock'}"
        if "empty_redis" in needed:  # payauth's Redis, once it runs
            self.other_servers["empty_redis"] = empty_server(self.folder, a.workers, url,
                                                       EMPTY_REDIS_ROUND_TRIPS)
            self.spawn(self.other_servers["empty_redis"])
        if "payauth_b" in needed:  # a second payauth on the same Redis, data and PAN key
            self.other_servers["payauth_b"], _ = payauth_server(
                self.folder, a.workers, url, a.pan_key_file or self.folder / "payauth" / "pan.key",
                [*a.serve_arg, *a.ab_serve_arg], name="payauth_b")
            self.other_servers["payauth_b"].extra_env = dict(a.ab_serve_env)
            self.spawn(self.other_servers["payauth_b"])
        for server in self.other_servers.values():
            server.wait_serving()
        self.redis = redis.Redis.from_url(url, socket_timeout=10)
        if self.watch_redis_stalls:
            self.redis.config_set("latency-monitor-threshold", REDIS_STALL_THRESHOLD_MS)
        tree = self.payauth.tree()
        self.cpu_groups["payauth"] = [p for p, name in tree.items() if name != "redis-server"]
        self.redis_pids = [p for p, name in tree.items() if name == "redis-server"]
        for name, server in self.other_servers.items():
            self.cpu_groups[name] = [p for p, command in server.tree().items()
                                     if command != "redis-server"]

    def spawn(self, server: ServerProcess) -> None:
        """Start `server`, on the CPUs of --server-cpus when given."""
        server.spawn(self.args.server_cpus)

    def load_data(self) -> None:
        """Generate and load the data set through the issuer API, then the demo policy and
        model (unless --no-decision-core)."""
        a = self.args
        self.data = dataset.generate(a.accounts, a.cards, self.run_id, a.seed)
        self.load_s = uvloop.run(dataset.load(self.payauth.target, self.data))
        if not a.no_decision_core:
            self.decision_core = uvloop.run(dataset.load_decision_core(self.payauth.target))

    def start_clients(self) -> None:
        """Spawn the client processes and wait until each is connected."""
        a = self.args
        targets = {"payauth": self.payauth.target}
        targets.update({name: server.target for name, server in self.other_servers.items()})
        self.spawn_clients(client_main, "e2e-client", [
            ClientConfig(index=index, targets=targets, cards=self.data.cards,
                         run_id=self.run_id, seed=a.seed, channels=a.channels,
                         streams=a.streams, cpus=a.client_cpus)
            for index in range(a.clients)])

    def spawn_clients(self, main: Callable[[Connection, Any], None], name: str,
                      configs: list[Any]) -> None:
        """One client process per config, running `main(pipe, config)`, started with
        CLIENT_GRPC_ENVIRONMENT; returns once each has said it is connected."""
        ctx = multiprocessing.get_context("spawn")
        with client_environment() as environment:
            self.client_grpc_environment = environment
            for index, config in enumerate(configs):
                parent, child = ctx.Pipe()
                process = ctx.Process(target=main, args=(child, config),
                                      name=f"{name}-{index}", daemon=True)
                process.start()
                self.conns.append(parent)
                self.clients.append(process)
        for conn in self.conns:
            if not conn.poll(120) or conn.recv() != "ready":
                raise RuntimeError("a client process did not connect")

    def _servers(self) -> dict[str, ServerProcess]:
        return {**({"payauth": self.payauth} if self.payauth else {}), **self.other_servers}

    def spread(self, name: str) -> dict[int, set[int]]:
        """Worker pid -> client ports of the connections it serves, for one server."""
        server = self._servers()[name]
        return connections_by_worker(list(server.tree()), server.port)

    def balance(self, name: str, attempts: int = 40) -> list[int]:
        """Even out the client connections over the server's workers; return the split.

        SO_REUSEPORT hashes each new connection to a worker, so 8 connections over 2 workers
        come out 4/4 only about a quarter of the time, and a 6/2 split caps the server at
        two thirds of its capacity, differently for each server of the run. So: reconnect
        each channel once to learn which worker it lands on, then keep reconnecting channels of
        the busiest worker until no worker has more than one connection above another.
        """
        slots = [(c, k) for c in range(len(self.conns)) for k in range(self.args.channels)]
        worker_of: dict[tuple[int, int], int] = {}

        def reconnect(slot: tuple[int, int]) -> None:
            before = {port for ports in self.spread(name).values() for port in ports}
            conn = self.conns[slot[0]]
            conn.send({"op": "reconnect", "args": {"server": name, "channel": slot[1]}})
            if conn.recv() != "ok":
                raise RuntimeError("a client process failed to reconnect")
            for _ in range(50):
                spread = self.spread(name)
                new = [(pid, port) for pid, ports in spread.items() for port in ports
                       if port not in before]
                if new:
                    worker_of[slot] = new[0][0]
                    return
                time.sleep(0.01)
            worker_of.pop(slot, None)

        def split() -> dict[int, int]:
            counts = {pid: len(ports) for pid, ports in self.spread(name).items()}
            return counts

        counts = split()
        if not counts:
            return []
        tries = 0
        while max(counts.values()) - min(counts.values()) > 1 and tries < attempts:
            unknown = [slot for slot in slots if slot not in worker_of]
            busiest = max(counts, key=counts.get)
            on_busiest = [slot for slot in slots if worker_of.get(slot) == busiest]
            reconnect(unknown[0] if unknown else on_busiest[0] if on_busiest else slots[0])
            counts = split()
            tries += 1
        return sorted(counts.values())

    def stop(self) -> None:
        """Stop the clients and the servers; remove the temporary folder unless kept."""
        for conn in self.conns:
            try:
                conn.send({"op": "stop"})
            except OSError:
                pass
        for process in self.clients:
            process.join(10)
            if process.is_alive():
                process.kill()
        if self.redis is not None:
            self.redis.close()
        for server in (*self.other_servers.values(), self.payauth):
            if server is not None:
                server.stop()
        if self.args.keep_temp:
            print(f"server logs and data kept in {self.folder}")
        else:
            shutil.rmtree(self.folder, ignore_errors=True)

    # -- phases ---------------------------------------------------------------------------------

    def _cpu(self) -> dict[str, float]:
        cpu = {name: cpu_seconds(pids) for name, pids in self.cpu_groups.items()}
        if self.redis is not None:  # from Redis itself, so an external one counts too
            info = self.redis.info("cpu")
            # With its children: the AOF rewrites Redis forks as the file grows (counted
            # once each rewrite ends, in the phase it ends in).
            cpu["redis"] = sum(float(info[key]) for key in (
                "used_cpu_user", "used_cpu_sys", "used_cpu_user_children",
                "used_cpu_sys_children"))
        return cpu

    def _switches(self) -> dict[str, int]:
        """Context switches so far of each process group: the servers, Redis (when
        embedded) and the client processes."""
        groups = {**self.cpu_groups, "clients": [p.pid for p in self.clients if p.pid]}
        if self.redis_pids:
            groups["redis"] = self.redis_pids
        return {name: context_switches(pids) for name, pids in groups.items()}

    def _settle(self, limit_s: float = 10.0) -> None:
        """Wait until the servers are quiet (under a tenth of a core), so that the backlog of
        one phase never runs into the next."""
        deadline = time.perf_counter() + limit_s
        while time.perf_counter() < deadline:
            before = sum(self._cpu().values())
            time.sleep(0.2)
            if sum(self._cpu().values()) - before < 0.02:
                return

    def _compact_aof(self, limit_s: float = 120.0) -> None:
        """Rewrite Redis's AOF, and wait for the rewrite, when anything was appended since the
        last one.

        Redis rewrites its AOF each time it has doubled, in a forked child that takes one of
        this machine's two cores for a second or more. Left to itself the rewrite falls in
        whichever phase happens to cross the threshold with the bytes of the phases before it
        (in the run of 2026-12-02 15:43Z, each of the stream's three saturation rounds).
        Compacting between phases starts every phase with the same headroom: a rewrite lands
        in a phase only when that phase's own writes call for it, and the `forks` column still
        shows it. The compacting rewrites' CPU falls between phases, in none of them.
        """
        if self.redis is None or self.args.no_compact:
            return
        info = self.redis.info("persistence")
        if not info.get("aof_enabled") or info.get("aof_current_size", 0) <= info.get(
                "aof_base_size", 0):
            return
        started, cpu_before = time.perf_counter(), _children_cpu(self.redis)
        self.compactions += 1
        if not info.get("aof_rewrite_in_progress"):
            try:
                self.redis.bgrewriteaof()
            except redis.ResponseError:  # one already scheduled or running: wait for it
                pass
        deadline = time.perf_counter() + limit_s
        while time.perf_counter() < deadline:
            time.sleep(0.05)
            info = self.redis.info("persistence")
            if not info.get("aof_rewrite_in_progress") and not info.get(
                    "aof_rewrite_scheduled"):
                break
        self.compact_s += time.perf_counter() - started
        self.compact_cpu_s += _children_cpu(self.redis) - cpu_before
        self.compact_base_bytes = int(info.get("aof_base_size", 0))

    def _run(self, mode: str, level: str, op: str, args: dict[str, Any],
             offered: float | None, wakeups_s: float = 0.0) -> Phase:
        self._compact_aof()
        self._settle()
        server, streaming = MODES[mode]
        # The servers close connections after grpc.max_connection_age_ms and the clients
        # reconnect wherever the kernel puts them: re-check the split before every phase.
        spread = self.spread(server)
        counts = [len(p) for p in spread.values()]
        if counts and max(counts) - min(counts) > 1:
            self.connection_split[server] = self.balance(server)
        workers = sorted(spread)
        worker_cpu_before = [cpu_seconds([pid]) for pid in workers]
        args = {"server": server, "stream": streaming, **args}
        if self.watch_redis_stalls:
            self.redis.execute_command("LATENCY", "RESET")
        before = snapshot(self.metrics_port, self.redis)
        cpu_before, switches_before, ticks_before = self._cpu(), self._switches(), cpu_ticks()
        meter: WakeupMeter | None = None
        for conn in self.conns:
            conn.send({"op": op, "args": args})
        if op == "open":
            for conn in self.conns:
                if conn.recv() != "armed":
                    raise RuntimeError("a client process failed to prepare its requests")
            if wakeups_s:
                meter = WakeupMeter(wakeups_s, PHASE_WAKEUP_INTERVAL_S)
                meter.start()
            t0 = time.perf_counter() + 0.05
            for conn in self.conns:
                conn.send(t0)
        results: list[PhaseResult] = [conn.recv() for conn in self.conns]
        wakeup_us = meter.result() if meter else None
        cpu_after, switches_after, ticks_after = self._cpu(), self._switches(), cpu_ticks()
        worker_cpu = [cpu_seconds([pid]) - b for pid, b in zip(workers, worker_cpu_before,
                                                               strict=True)]
        after = snapshot(self.metrics_port, self.redis)
        self.tallies.setdefault(mode, RedisTally()).add(before, after)
        phase = _merge(mode, level, results, offered, op == "closed")
        phase.redis_forks = after.forks - before.forks
        if phase.redis_forks:
            phase.redis_fork_ms = after.latest_fork_usec / 1000
        if self.watch_redis_stalls:
            phase.redis_stalls_ms = self._redis_stalls()
        if server == "payauth":
            phase.server_mean_ms = _server_means(before, after)
            phase.stalls = _stalls(before, after)
        if sum(worker_cpu) > 0:
            phase.worker_cpu_share = [round(c / sum(worker_cpu), 3) for c in worker_cpu]
        if phase.completed:
            phase.cpu_us_per_request = {
                name: round((cpu_after[name] - cpu_before[name]) * 1e6 / phase.completed, 1)
                for name in cpu_before}
            phase.cpu_us_per_request["clients"] = round(
                sum(r.cpu_s for r in results) * 1e6 / phase.completed, 1)
            phase.switches_per_request = {
                name: round((switches_after[name] - switches_before[name]) / phase.completed, 2)
                for name in switches_before}
        phase.cpu_stolen_share = stolen_share(ticks_before, ticks_after)
        phase.wakeup_us = wakeup_us
        self.phases.append(phase)
        print(report.row(phase, server), flush=True)
        return phase

    def measure_saturation(self, mode: str) -> Phase:
        """Closed loop with many requests in flight: the throughput the whole stack reaches."""
        a = self.args
        concurrency = a.stream_window if MODES[mode][1] else a.concurrency
        # The same number of requests in flight for every mode: all streams of a process
        # together carry as many messages as its unary calls.
        phase = self._run(mode, "saturation", "closed", {
            "concurrency": concurrency, "warmup_s": a.warmup, "measure_s": a.saturation_seconds,
        }, None)
        rounds = self.saturation_rounds.setdefault(mode, [])
        rounds.append(phase)
        self.saturation[mode] = statistics.median(p.achieved_rps for p in rounds)
        time.sleep(a.pause)
        return phase

    def saturation_round(self, modes: list[str]) -> None:
        """Every mode once at saturation, measured again whole while the hypervisor stole
        too much of the CPU in any of its phases (`_measured_quietly`), so that the rounds'
        ratios compare phases measured on the same machine."""
        self._measured_quietly(lambda: [self.measure_saturation(mode) for mode in modes],
                               " in this round: measuring it again")
        for mode in modes:
            rounds = [p for p in self.saturation_rounds[mode] if not p.superseded]
            self.saturation_rounds[mode] = rounds
            self.saturation[mode] = statistics.median(p.achieved_rps for p in rounds)

    def open_level(self, mode: str, percent: int, of: str | None = None) -> None:
        """One open-loop level, measured again while the hypervisor stole too much of the
        CPU during it (`_measured_quietly`)."""
        self._measured_quietly(lambda: [self.open_loop(mode, percent, of)],
                               ": measuring this level again")

    def _measured_quietly(self, measure: Callable[[], list[Phase]], again: str) -> None:
        """Run `measure` again, up to --retries times, while the hypervisor stole more than
        --max-stolen of the CPU in any phase it measured. The first attempt with none stands
        or, when every attempt lost more, the one whose worst phase lost least; the phases of
        the others are marked superseded."""
        a = self.args
        attempts: list[list[Phase]] = []
        for attempt in range(a.retries + 1):
            attempts.append(measure())
            if not any(self._stolen(p) for p in attempts[-1]):
                break
            if attempt < a.retries:
                print(f"more than {a.max_stolen:.0%} of the CPU stolen{again}", flush=True)
        kept = min(attempts, key=lambda phases: max(_stolen_share(p) for p in phases))
        if any(self._stolen(p) for p in kept):
            print(f"every attempt lost more than {a.max_stolen:.0%}: keeping the one that lost "
                  f"least ({max(_stolen_share(p) for p in kept):.0%} at worst)", flush=True)
        for phases in attempts:
            for phase in phases:
                phase.superseded = phases is not kept

    def _stolen(self, phase: Phase) -> bool:
        return phase.cpu_stolen_share is not None and \
            phase.cpu_stolen_share > self.args.max_stolen

    def open_loop(self, mode: str, percent: int, of: str | None = None) -> Phase:
        """One open-loop level: `percent` of the saturation of mode `of` (by default its
        own), shared by the clients."""
        rate = self.saturation[of or mode] * percent / 100
        level = f"{percent}%" if of is None else f"{of} {percent}%"
        # At the latency targets' load (Authorize's and the empty handler's at Authorize's
        # rate), how late a sleeping process wakes beside it: the machine's part of a tail.
        at_target = (of or mode) == "authorize" and percent == TARGET_PERCENT
        return self.open_loop_at(mode, rate, level, at_target)

    def measure_low_rate(self, mode: str) -> None:
        """The open loop at --low-rate requests per second, the same for every mode, measured
        again while the hypervisor stole too much of the CPU during it."""
        rate = self.args.low_rate
        self._measured_quietly(lambda: [self.open_loop_at(mode, rate, low_rate_name(rate))],
                               ": measuring this level again")

    def open_loop_at(self, mode: str, rate: float, level: str, wakeups: bool = False
                     ) -> Phase:
        """`mode` offered `rate` requests per second in all, shared by the clients, as level
        `level`; with `wakeups`, the wake-up meter runs beside it."""
        a = self.args
        phase = self._run(mode, level, "open", {
            "rate": rate / a.clients, "duration_s": a.duration, "drain_s": a.drain,
        }, rate, wakeups_s=a.duration if wakeups else 0.0)
        time.sleep(a.pause)
        return phase

    def run(self) -> dict[str, Any]:
        """The whole benchmark; returns the JSON document."""
        a = self.args
        started = time.perf_counter()
        print(f"starting payauth serve and the empty handler ({a.workers} worker(s) each) "
              f"in {self.folder}", flush=True)
        self.start_servers()
        print(f"loading {a.accounts} accounts and {a.cards} cards through the issuer API",
              flush=True)
        self.load_data()
        print(f"loaded in {self.load_s:.1f} s ({(a.accounts + a.cards) / self.load_s:.0f} "
              "calls/s)", flush=True)
        if self.decision_core:
            core = self.decision_core
            print(f"decision core: policy {core['policy']} ({core['rules']} rules), model "
                  f"{core['model']} ({core['model_trees']} trees)", flush=True)
        self.wakeups_idle, self.fsync_idle = self.machine_at_rest()
        print("wake-up lateness of a sleeping process, nothing driven: "
              + report.wakeups(self.wakeups_idle), flush=True)
        print("fdatasync of an append to the AOF's disk, nothing driven: "
              + report.fsyncs(self.fsync_idle), flush=True)
        print("starting the client processes", flush=True)
        self.start_clients()
        for name in self._servers():
            self.connection_split[name] = self.balance(name)
        print("connections per worker: " + ", ".join(
            f"{name} {'/'.join(map(str, split))}" for name, split in
            self.connection_split.items()), flush=True)
        print(report.header(), flush=True)
        for r in range(a.rounds):
            self.saturation_round(round_order(a.modes, r))
        if a.low_rate:
            for mode in a.modes:
                self.measure_low_rate(mode)
        for percent in a.levels:
            for mode in a.modes:
                self.open_level(mode, percent)
        if {"empty", "authorize"} <= set(a.modes) and TARGET_PERCENT in a.levels:
            # The floors under the latency targets, at the load they name: the empty handler
            # (the stack's) and, when it runs, empty_redis (the design's: the stack and
            # Authorize's two round trips) offered Authorize's 50 %, on the same cores, clients
            # and schedule.
            for floor in FLOOR_MODES:
                if floor in a.modes:
                    self.open_level(floor, TARGET_PERCENT, of="authorize")
        if "empty" not in a.modes:
            self._idle_window(2.0)
        self.wakeups_idle_after, self.fsync_idle_after = self.machine_at_rest()
        elapsed = time.perf_counter() - started
        return self.document(elapsed)

    def machine_at_rest(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The machine's floors with nothing driven: its wake-ups (`wakeups`) and its disk's
        syncs (`fsyncs`)."""
        a = self.args
        return (wakeups.measure(IDLE_WAKEUP_S[a.quick], IDLE_WAKEUP_INTERVAL_S),
                fsyncs.measure_both(self.folder, FSYNC_COUNT[a.quick], FSYNC_PAUSE_S))

    def _round_ratios(self, mode: str, base: str) -> list[float]:
        """`mode`'s saturation over `base`'s, round by round."""
        pairs = zip(self.saturation_rounds.get(mode, []), self.saturation_rounds.get(base, []),
                    strict=False)
        return [r for a, b in pairs if (r := _ratio(a.achieved_rps, b.achieved_rps))]

    def _cpu_ratios(self, mode: str, base: str) -> list[float]:
        """`base`'s server CPU (workers and Redis) per request over `mode`'s, round by round:
        the throughput ratio `mode / base` a server with the cores to itself would reach."""
        pairs = zip(self.saturation_rounds.get(mode, []),
                    self.saturation_rounds.get(base, []), strict=False)
        return [r for a, b in pairs if (r := _ratio(_server_us(b.mode, b.cpu_us_per_request),
                                                    _server_us(a.mode, a.cpu_us_per_request)))]

    def _redis_stalls(self) -> dict[str, int]:
        """The longest event of each kind Redis's latency monitor recorded since its last
        reset (`LATENCY LATEST`: event, time, latest ms, longest ms)."""
        latest = self.redis.execute_command("LATENCY", "LATEST") or []
        return {event.decode(): int(longest) for event, _, _, longest in latest}

    def _idle_window(self, seconds: float) -> None:
        """Counters over a window without traffic: the Redis traffic of the server at rest."""
        before = snapshot(self.metrics_port, self.redis)
        time.sleep(seconds)
        self.tallies.setdefault("idle", RedisTally()).add(
            before, snapshot(self.metrics_port, self.redis))

    # -- results ---------------------------------------------------------------------------------

    def redis_figures(self) -> dict[str, Any]:
        """Round trips and commands per authorization, per payauth mode and together."""
        # While the empty handler is measured, payauth is idle: what Redis sees then is the
        # server at rest (the expiry sweeper's ZRANGEBYSCOREs), subtracted at its rate.
        idle = RedisTally()
        for name in ("empty", "empty_stream", "idle"):
            if name in self.tallies:
                idle.merge(self.tallies[name])
        rate = 1 / idle.seconds if idle.seconds else 0.0
        figures: dict[str, Any] = {}
        combined = RedisTally()
        for mode in ("authorize", "stream"):
            if mode in self.tallies:
                figures[mode] = _per_authorization(self.tallies[mode], idle, rate)
                combined.merge(self.tallies[mode])
        if combined.seconds:
            figures.update(_per_authorization(combined, idle, rate))
        figures["idle_commands_per_s"] = round(idle.total_commands * rate, 1)
        return figures

    def document(self, elapsed_s: float) -> dict[str, Any]:
        """The JSON result."""
        a = self.args
        latency: dict[str, dict[str, Any]] = {}
        saturation_detail: dict[str, Any] = {}
        for phase in self.phases:
            if phase.level != "saturation" and not phase.superseded:
                latency.setdefault(phase.mode, {})[phase.level] = phase.latency_entry()
        for mode, rounds in self.saturation_rounds.items():
            # The round of the median throughput stands for the mode (CPU, latency, outcomes).
            median = statistics.median_low(p.achieved_rps for p in rounds)
            saturation_detail[mode] = asdict(next(p for p in rounds if p.achieved_rps == median))
        ratio_rounds = {
            "authorize_to_empty": self._round_ratios("authorize", "empty"),
            "stream_to_authorize": self._round_ratios("stream", "authorize"),
        }
        for mode in ("authorize", "stream"):
            if f"{mode}_b" in self.saturation_rounds:
                ratio_rounds[f"{mode}_b_to_{mode}"] = self._round_ratios(f"{mode}_b", mode)
        if "empty_redis" in self.saturation_rounds:
            ratio_rounds["empty_redis_to_empty"] = self._round_ratios("empty_redis", "empty")
            ratio_rounds["authorize_to_empty_redis"] = self._round_ratios("authorize",
                                                                          "empty_redis")
        ratios = {name: round(statistics.median(values), 3) if values else None
                  for name, values in ratio_rounds.items()}
        sat = {m: round(v, 1) for m, v in self.saturation.items()}
        # Server CPU per request at saturation (payauth workers plus its Redis, or the empty
        # handler's workers): the view of the cost that the client processes sharing this
        # machine's cores do not blur.
        cpu: dict[str, dict[str, float]] = {}
        for mode, detail in saturation_detail.items():
            c = detail["cpu_us_per_request"]
            name = MODES[mode][0]
            cpu[mode] = {"server": _server_us(mode, c)}
            if name != "empty":  # its workers and the Redis it waits for (payauth's)
                cpu[mode].update(workers=c.get(name, 0.0), redis=c.get("redis", 0.0))
            cpu[mode]["clients"] = c.get("clients", 0.0)
        switches = {mode: {("server" if name == MODES[mode][0] else name): value
                           for name, value in detail["switches_per_request"].items()
                           if name in (MODES[mode][0], "redis", "clients")}
                    for mode, detail in saturation_detail.items()}
        stolen = [p.cpu_stolen_share for p in self.phases
                  if p.cpu_stolen_share is not None and not p.superseded]
        # Authorize's server CPU over a stream message's, round by round: the ratio the
        # stream would reach if the server had the cores to itself.
        cpu_stream_rounds = self._cpu_ratios("stream", "authorize")
        floor = _floor(latency, low_rate_name(a.low_rate) if a.low_rate else None,
                       self.fsync_idle)
        doc: dict[str, Any] = {
            "saturation_rps": sat,
            # ratio_authorize_to_empty, ratio_stream_to_authorize, and those of the other
            # modes when they ran.
            **{f"ratio_{name}": ratio for name, ratio in ratios.items()},
            "saturation_rounds_rps": {m: [round(p.achieved_rps, 1) for p in rounds]
                                      for m, rounds in self.saturation_rounds.items()},
            "ratio_rounds": ratio_rounds,
            "latency_ms": latency,
            "redis": self.redis_figures(),
            "cpu_us_per_request_at_saturation": cpu,
            "cpu_ratio_authorize_to_empty": _ratio(cpu.get("empty", {}).get("server"),
                                                   cpu.get("authorize", {}).get("server")),
            "cpu_ratio_stream_to_authorize_rounds": cpu_stream_rounds,
            "cpu_ratio_stream_to_authorize": median_with_interval(cpu_stream_rounds),
            "payauth_own_us_per_request": _own_work(cpu),
            "switches_per_request_at_saturation": switches,
            "cpu_stolen_share": {
                "median": round(statistics.median(stolen), 3) if stolen else None,
                "max": max(stolen, default=None),
                "saturation_rounds": {m: [p.cpu_stolen_share for p in rounds]
                                      for m, rounds in self.saturation_rounds.items()}},
            "targets": _targets(ratios, latency),
            "target_rounds": target_rounds(ratio_rounds),
            "target_intervals": target_verdicts(ratio_rounds),
            "latency_floor_ms": floor,
            "latency_target_floor": latency_target_floor(floor),
            "wakeup_us": {"idle": self.wakeups_idle,
                          "idle_after_phases": self.wakeups_idle_after, **{
                f"{mode} at {level}": entry["wakeup_us"] for mode, entries in latency.items()
                for level, entry in entries.items() if "wakeup_us" in entry}},
            "fsync_us": {"idle": self.fsync_idle, "idle_after_phases": self.fsync_idle_after},
            "phases": [asdict(p) for p in self.phases],
            "saturation": saturation_detail,
            "machine": machine(self.redis),
            "config": {
                "command": " ".join([Path(sys.executable).name, "-m", "benchmarks.e2e",
                                     *sys.argv[1:]]),
                "workers": a.workers, "client_processes": a.clients,
                **cpu_pinning(a),
                "channels_per_client_per_server": a.channels,
                "streams_per_client": a.streams, "modes": list(a.modes),
                "levels_percent": list(a.levels), "low_rate_rps": a.low_rate,
                "accounts": a.accounts, "cards": a.cards,
                "open_loop_seconds": a.duration, "saturation_seconds": a.saturation_seconds,
                "warmup_seconds": a.warmup, "saturation_rounds": a.rounds,
                "unary_concurrency_per_client": a.concurrency,
                "stream_window": a.stream_window, "drain_seconds": a.drain,
                "redis": "external" if a.redis_url else "embedded (unix socket, AOF always)",
                "decision_core": self.decision_core,
                "serve_args": a.serve_arg, "ab_serve_args": a.ab_serve_arg,
                "ab_serve_env": dict(a.ab_serve_env),
                # gRPC core's settings the servers' workers start with: payauth's own, unless
                # this run's environment sets them (the client processes then inherit them
                # too; otherwise they start with CLIENT_GRPC_ENVIRONMENT, since 2026-12-03
                # 21:30Z, and gRPC's defaults before).
                "grpc_environment": {name: os.environ.get(name, value)
                                     for name, value in GRPC_ENVIRONMENT.items()},
                "client_grpc_environment": self.client_grpc_environment,
                "redis_stall_threshold_ms": (REDIS_STALL_THRESHOLD_MS
                                             if self.watch_redis_stalls else None),
                "max_stolen": a.max_stolen, "retries": a.retries,
                "phases_measured_again": sum(p.superseded for p in self.phases),
                "quick": a.quick, "seed": a.seed,
                "aof_compacted_between_phases": {"enabled": not a.no_compact,
                                                 "rewrites": self.compactions,
                                                 "seconds": round(self.compact_s, 1),
                                                 "cpu_seconds": round(self.compact_cpu_s, 1),
                                                 "last_base_bytes": self.compact_base_bytes},
                "run_id": self.run_id, "load_seconds": round(self.load_s, 1),
                "connections_per_worker": self.connection_split,
                "elapsed_seconds": round(elapsed_s, 1),
                "histogram": "HdrHistogram 1 us..60 s, 3 significant digits, merged",
            },
        }
        return doc


def _stolen_share(phase: Phase) -> float:
    """The share of the CPU the hypervisor stole during a phase (0 where not recorded)."""
    return phase.cpu_stolen_share or 0.0


def _per_authorization(t: RedisTally, idle: RedisTally, idle_rate: float) -> dict[str, Any]:
    """Per-authorization figures of a tally, with the idle traffic subtracted."""
    authorizations = t.prometheus.get("rpc:Authorize", 0) + t.prometheus.get(
        "rpc:AuthorizeStream", 0)
    if not authorizations:
        return {}
    reads = t.prometheus.get("redis:authorize_read", 0)
    commits = t.prometheus.get("redis:authorize_commit", 0)

    def net(value: float, idle_value: float) -> float:
        return max(0.0, value - idle_value * idle_rate * t.seconds)

    commands = {k: net(v, idle.commands.get(k, 0)) / authorizations
                for k, v in t.commands.items()}
    command_us = {k: net(v, idle.command_usec.get(k, 0)) / authorizations
                  for k, v in t.command_usec.items()}
    def mean_ms(kind: str, name: str, count_key: str) -> float | None:
        count = t.prometheus.get(count_key, 0)
        return round(t.prometheus.get(f"{kind}:{name}", 0) * 1000 / count, 3) if count else None

    return {
        "authorizations": int(authorizations),
        "server_mean_ms": {
            "read_pipeline": mean_ms("redis_seconds", "authorize_read", "redis:authorize_read"),
            "commit": mean_ms("redis_seconds", "authorize_commit", "redis:authorize_commit"),
            "Authorize": mean_ms("rpc_seconds", "Authorize", "rpc_count:Authorize"),
            "AuthorizeStream_message": mean_ms("rpc_seconds", "AuthorizeStream",
                                               "rpc_count:AuthorizeStream"),
        },
        "round_trips_per_authorize": round((reads + commits) / authorizations, 3),
        "read_pipelines_per_authorize": round(reads / authorizations, 3),
        "commits_per_authorize": round(commits / authorizations, 3),
        "redis_socket_reads_per_authorize": round(
            net(t.total_reads, idle.total_reads) / authorizations, 3),
        "commands_per_authorize": round(
            net(t.total_commands, idle.total_commands) / authorizations, 2),
        "fcalls_per_authorize": round(commands.get("fcall", 0.0), 3),
        "commands_by_name_per_authorize": {
            k: round(v, 3) for k, v in sorted(commands.items(), key=lambda kv: -kv[1])
            if v >= 0.005},
        # Redis's time inside commands (`INFO commandstats` usec, measured by Redis's clock:
        # where Redis was preempted mid-command the time counts too): an FCALL's includes the
        # commands its function runs, which are also counted under their own names.
        "redis_command_us_per_authorize": {
            k: round(v, 1) for k, v in sorted(command_us.items(), key=lambda kv: -kv[1])
            if v >= 0.05},
    }


def _server_means(before: Counters, after: Counters) -> dict[str, float | None]:
    """Mean read pipeline, commit and RPC time of one phase as payauth measured them."""
    def mean(seconds_key: str, count_key: str) -> float | None:
        count = after.prometheus.get(count_key, 0) - before.prometheus.get(count_key, 0)
        seconds = after.prometheus.get(seconds_key, 0) - before.prometheus.get(seconds_key, 0)
        return round(seconds * 1000 / count, 3) if count > 0 else None

    return {
        "read_pipeline": mean("redis_seconds:authorize_read", "redis:authorize_read"),
        "commit": mean("redis_seconds:authorize_commit", "redis:authorize_commit"),
        "rpc": mean("rpc_seconds:Authorize", "rpc_count:Authorize")
        or mean("rpc_seconds:AuthorizeStream", "rpc_count:AuthorizeStream"),
    }


def _stalls(before: Counters, after: Counters) -> dict[str, Any]:
    """How long payauth's event loops were held up during one phase (its workers'
    `payauth_event_loop_lag_seconds` and `payauth_gc_pause_seconds`, summed over workers):
    the loop probes' p99 and worst lag, and the garbage collections by generation."""
    def delta(key: str) -> float:
        return after.prometheus.get(key, 0) - before.prometheus.get(key, 0)

    def buckets(prefix: str) -> list[tuple[float, float]]:
        found = [(float(k.removeprefix(prefix)), delta(k)) for k in after.prometheus
                 if k.startswith(prefix)]
        return sorted(found)

    def bound_ms(prefix: str, share: float) -> float | None:
        """The bucket bound (ms) under which `share` of the phase's samples fell; None
        without samples or above the last finite bucket."""
        found = buckets(prefix)
        if not found or found[-1][1] <= 0:
            return None
        le = next(le for le, n in found if n >= share * found[-1][1])
        return None if le == float("inf") else round(le * 1000, 2)

    stalls: dict[str, Any] = {
        "server_p99_ms_at_most": {
            name: bound_ms(prefix, 0.99) for name, prefix in (
                ("Authorize", "rpc_le:Authorize:"),
                ("AuthorizeStream_message", "rpc_le:AuthorizeStream:"),
                ("read_pipeline", "redis_le:authorize_read:"),
                ("commit", "redis_le:authorize_commit:"))}}
    lag = buckets("loop_lag_le:")
    if lag and lag[-1][1] > 0:
        stalls["loop_lag_p99_ms_at_most"] = bound_ms("loop_lag_le:", 0.99)
        stalls["loop_lag_worst_ms_at_most"] = bound_ms("loop_lag_le:", 1.0)
        stalls["loop_probes"] = int(lag[-1][1])
    gcs = buckets("gc_le:")
    if gcs and gcs[-1][1] > 0:
        stalls["gc_worst_ms_at_most"] = bound_ms("gc_le:", 1.0)
        stalls["gc_collections"] = {g: int(delta(f"gc_count:{g}")) for g in "012"}
        stalls["gc_ms"] = {g: round(delta(f"gc_seconds:{g}") * 1000, 1) for g in "012"}
    return stalls


def _server_us(mode: str, cpu_us_per_request: dict[str, float]) -> float:
    """A phase's server CPU per request: the empty handler's workers, or the workers of a
    server that waits for Redis (payauth, empty_redis) and that Redis."""
    name = MODES[mode][0]
    if name == "empty":
        return cpu_us_per_request.get("empty", 0.0)
    return round(cpu_us_per_request.get(name, 0.0) + cpu_us_per_request.get("redis", 0.0), 1)


def _own_work(cpu: dict[str, dict[str, float]]) -> dict[str, float]:
    """payauth's own worker CPU per request at saturation: its workers' less the empty
    handler's for the same kind of call (unary against unary, stream message against stream
    message), when both ran. What is left is the decision's work, its Redis client and, for
    the stream, the handler's own bookkeeping; the stack's share and Redis's are not in it."""
    twins = {"authorize": "empty", "stream": "empty_stream"}
    return {mode: round(cpu[mode]["workers"] - cpu[empty]["server"], 1)
            for mode, empty in twins.items() if mode in cpu and empty in cpu}


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def _targets(ratios: dict[str, float | None], latency: dict[str, dict[str, Any]]
             ) -> dict[str, Any]:
    """Issue 9's targets, checked against this run."""
    targets: dict[str, Any] = {}
    for target, (name, least) in RATIO_TARGETS.items():
        if ratios[name] is not None:
            targets[target] = ratios[name] >= least
    half = latency.get("authorize", {}).get(f"{TARGET_PERCENT}%")
    if half:
        for target, (percentile, bound) in LATENCY_TARGETS.items():
            targets[target] = half[percentile] < bound
    return targets


def _children_cpu(client: redis.Redis) -> float:
    """CPU seconds of Redis's reaped children (its AOF rewrites)."""
    info = client.info("cpu")
    return float(info["used_cpu_user_children"]) + float(info["used_cpu_sys_children"])


def low_rate_name(rate: float) -> str:
    """The name of the --low-rate level, e.g. "50/s"."""
    return f"{rate:g}/s"


def _floor(latency: dict[str, dict[str, Any]], low_level: str | None,
           fsync_us: dict[str, Any] | None) -> dict[str, Any] | None:
    """Authorize's latency at its target load beside the empty handler's at the same offered
    load (what payauth adds, and the floor the stack itself sets on this machine) and, when it
    ran, empty_redis's (the floor of the design: the stack and two round trips to Redis, the
    second synced), each one's latency at the low rate (what a request costs alone), and the
    disk's fsync (what every new authorization's commit waits for)."""
    target = latency.get("authorize", {}).get(f"{TARGET_PERCENT}%")
    floors = {mode: entry for mode in FLOOR_MODES
              if (entry := latency.get(mode, {}).get(FLOOR_LEVEL))}
    if not target or "empty" not in floors:
        return None
    keys = ("p50", "p99", "p999", "cores_busy", "wakeup_us")
    doc: dict[str, Any] = {"offered_rps": target["offered_rps"],
                           "authorize": {k: target.get(k) for k in (*keys, "stalls")},
                           **{mode: {k: entry.get(k) for k in keys}
                              for mode, entry in floors.items()}}
    if low_level:
        alone = {mode: entry for mode in ("authorize", *floors)
                 if (entry := latency.get(mode, {}).get(low_level))}
        if "authorize" in alone and "empty" in alone:
            doc["low_rate"] = {"level": low_level, **{
                mode: {k: entry[k] for k in ("p50", "p99", "p999")}
                for mode, entry in alone.items()}}
    doc["fsync_us"] = fsync_us
    return doc


def _merge(mode: str, level: str, results: list[PhaseResult], offered: float | None,
           closed: bool) -> Phase:
    histogram, lag = new_histogram(), new_histogram()
    for r in results:
        histogram.decode_and_add(r.histogram)
        if not closed:
            lag.decode_and_add(r.lag_histogram)
    outcomes: dict[str, int] = {}
    for r in results:
        for k, v in r.outcomes.items():
            outcomes[k] = outcomes.get(k, 0) + v
    completed = sum(r.completed for r in results)
    failures = sum(v for k, v in outcomes.items() if failed(k) and k != "incomplete")
    incomplete = sum(r.incomplete for r in results)
    if closed:
        window = max(r.window_s for r in results)
        achieved = sum(r.window_completed for r in results) / window
        duration = window
    else:
        start = min(r.first_send for r in results)
        end = max(r.last_answer for r in results)
        duration = end - start
        decided = completed - failures - outcomes.get("incomplete", 0)
        achieved = decided / duration if duration > 0 else 0.0

    def ms(percentile: float) -> float:
        return round(histogram.get_value_at_percentile(percentile) / 1000, 3)

    return Phase(
        mode=mode, level=level, offered_rps=offered, achieved_rps=achieved,
        p50=ms(50), p99=ms(99), p999=ms(99.9), max=round(histogram.get_max_value() / 1000, 3),
        completed=completed, incomplete=incomplete, errors=failures,
        duration_s=round(duration, 3), outcomes=outcomes,
        error_samples={k: v for r in results for k, v in r.error_samples.items()},
        send_lag_ms=None if closed else {
            "p50": round(lag.get_value_at_percentile(50) / 1000, 3),
            "p99": round(lag.get_value_at_percentile(99) / 1000, 3),
            "max": round(lag.get_max_value() / 1000, 3)},
    )


def machine(client: redis.Redis | None) -> dict[str, Any]:
    """What the figures were measured on."""
    redis_version = ""
    if client is not None:
        try:
            redis_version = client.info("server").get("redis_version", "")
        except redis.RedisError:
            pass
    return {
        "cores": os.cpu_count(), "cpu": cpu_model(), "python": platform.python_version(),
        "platform": platform.platform(), "grpcio": grpc.__version__,
        "redis_server": redis_version, "uvloop": uvloop.__version__,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def add_harness_arguments(p: argparse.ArgumentParser, results: str) -> None:
    """The arguments of the harness this benchmark and the loyalty one share: the server,
    the client processes, the saturation phases, the pauses and where results go."""
    p.add_argument("--serve-arg", action="append", default=[],
                   help="extra argument for payauth serve (repeat for several)")
    p.add_argument("--clients", type=int, default=2, help="client processes (default 2)")
    p.add_argument("--concurrency", type=int, default=64,
                   help="calls in flight per client process at saturation (default "
                        "%(default)s)")
    p.add_argument("--saturation-seconds", type=float, default=None,
                   help="measuring seconds of each saturation phase (default 4, quick 2)")
    p.add_argument("--warmup", type=float, default=None,
                   help="seconds of warm-up before each saturation window (default 1.5, "
                        "quick 0.5)")
    p.add_argument("--drain", type=float, default=5.0,
                   help="seconds to wait for the last answers of a phase (default %(default)s)")
    p.add_argument("--pause", type=float, default=0.5,
                   help="seconds between phases (default %(default)s)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results",
                   help=f"folder of {results}.json and {results}.png (default "
                        f"benchmarks/results)")
    p.add_argument("--no-compact", action="store_true",
                   help="leave the AOF rewrites to Redis instead of compacting the AOF "
                        "between phases")
    p.add_argument("--keep-temp", action="store_true",
                   help="keep the temporary folder (server logs, Redis data)")
    p.add_argument("--server-cpus", type=_cpu_list, default=None, metavar="LIST",
                   help="pin the servers (their workers and the embedded Redis) to these CPUs, "
                        "e.g. 0 or 0-3 (default: any)")
    p.add_argument("--client-cpus", type=_cpu_list, default=None, metavar="LIST",
                   help="pin the client processes to these CPUs (default: any); with "
                        "--server-cpus, the load generator off the servers' cores")


def resolve_harness_defaults(args: argparse.Namespace) -> None:
    """The defaults of `add_harness_arguments` that depend on --quick."""
    quick = args.quick
    args.saturation_seconds = args.saturation_seconds or (2.0 if quick else 4.0)
    args.warmup = args.warmup if args.warmup is not None else (0.5 if quick else 1.5)


def cpu_pinning(args: argparse.Namespace) -> dict[str, list[int] | str]:
    """--server-cpus and --client-cpus as a run's config records them ("any" when unset)."""
    return {"server_cpus": sorted(args.server_cpus) if args.server_cpus else "any",
            "client_cpus": sorted(args.client_cpus) if args.client_cpus else "any"}


def _cpu_list(text: str) -> set[int]:
    """`0,2-3` as {0, 2, 3}, for --server-cpus and --client-cpus."""
    cpus: set[int] = set()
    try:
        for part in filter(None, (p.strip() for p in text.split(","))):
            first, _, last = part.partition("-")
            cpus.update(range(int(first), int(last or first) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected CPUs like 0,2-3, got {text!r}") from None
    if not cpus or not cpus <= os.sched_getaffinity(0):
        raise argparse.ArgumentTypeError(
            f"{text!r}: not CPUs of this machine's {sorted(os.sched_getaffinity(0))}")
    return cpus


def _environment_setting(text: str) -> tuple[str, str]:
    """`NAME=VALUE` as a pair, for --ab-serve-env."""
    name, equals, value = text.partition("=")
    if not name or not equals:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; --quick shrinks the data set and the phases for a smoke run."""
    cores = os.cpu_count() or 1
    p = argparse.ArgumentParser(prog="python -m benchmarks.e2e", description=(
        "End-to-end benchmark of payauth against an empty handler on the same gRPC stack: "
        "open loop, HDR histograms, Redis round trips per Authorize."))
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 1,000 accounts, 5,000 cards, short phases (about a minute)")
    p.add_argument("--workers", type=int, default=cores,
                   help="worker processes of each server (default: cores, %(default)s)")
    p.add_argument("--redis-url", default=None,
                   help="point payauth at this Redis instead of its embedded one (redis:// or "
                        "unix://; not a cluster)")
    p.add_argument("--pan-key-file", type=Path, default=None,
                   help="PAN key file for payauth serve; a Redis that payauth used before needs "
                        "the key it was used with")
    p.add_argument("--accounts", type=int, default=None, help="accounts (default 10,000)")
    p.add_argument("--cards", type=int, default=None, help="cards (default 50,000)")
    p.add_argument("--no-decision-core", action="store_true",
                   help="leave the issuer's policy and model unloaded (Authorize then neither "
                        "scores nor runs rules; the runs before the demo core was loaded)")
    p.add_argument("--channels", type=int, default=CHANNELS,
                   help="connections per client process to each server (default %(default)s)")
    p.add_argument("--streams", type=int, default=STREAMS,
                   help="AuthorizeStream calls per client process (default %(default)s: the "
                        "layout of the stream's highest throughput here; see the README)")
    p.add_argument("--modes", default=",".join(DEFAULT_MODES),
                   help=f"comma-separated, of {', '.join(MODES)} (default %(default)s)")
    p.add_argument("--levels", default=",".join(map(str, DEFAULT_LEVELS)),
                   help="open-loop loads in percent of saturation (default %(default)s)")
    p.add_argument("--low-rate", type=float, default=LOW_RATE_RPS,
                   help="first open-loop level: every mode offered this many requests per "
                        "second, a request seldom meeting another (default %(default)g; 0 "
                        "none)")
    p.add_argument("--duration", type=float, default=None,
                   help="seconds per open-loop level (default 8, quick 2)")
    p.add_argument("--ab-serve-arg", action="append", default=[],
                   help="mode authorize_b: a second payauth serve on the same Redis and data, "
                        "with this extra argument (repeat for several), so a setting is "
                        "compared with the default in one run")
    p.add_argument("--ab-serve-env", action="append", default=[], metavar="NAME=VALUE",
                   type=_environment_setting,
                   help="modes authorize_b, stream_b: an environment variable for the second "
                        "payauth serve only (repeat for several)")
    p.add_argument("--rounds", type=int, default=None,
                   help="saturation rounds, every mode once in each, the order reversed every "
                        "other round; "
                        "figures are medians over the rounds (default 3, quick 1)")
    p.add_argument("--max-stolen", type=float, default=0.05,
                   help="a saturation round or open-loop level in which the hypervisor stole "
                        "more than this share of the CPU is measured again (default "
                        "%(default)s; 1 never)")
    p.add_argument("--retries", type=int, default=2,
                   help="how many times at most (default %(default)s); when every attempt "
                        "lost more, the one that lost least is kept")
    p.add_argument("--stream-window", type=int, default=0,
                   help="messages in flight per stream at saturation (default: concurrency / "
                        "streams, so both kinds keep as many requests in flight)")
    add_harness_arguments(p, "e2e")
    args = p.parse_args(argv)
    quick = args.quick
    args.accounts = args.accounts or (1_000 if quick else 10_000)
    args.cards = args.cards or (5_000 if quick else 50_000)
    args.duration = args.duration or (2.0 if quick else 8.0)
    args.rounds = args.rounds or (1 if quick else 3)
    resolve_harness_defaults(args)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in args.modes if m not in MODES]
    if unknown:
        p.error(f"unknown mode(s) {', '.join(unknown)}; choose from {', '.join(MODES)}")
    args.levels = [int(x) for x in args.levels.split(",") if x.strip()]
    args.stream_window = args.stream_window or max(1, args.concurrency // args.streams)
    return args


def run_and_write(harness: Harness, out: Path, stem: str,
                  plot: Callable[[dict[str, Any], Path], Any],
                  summary: Callable[[dict[str, Any]], str]) -> int:
    """Run a harness; write `<stem>.json` and `<stem>.png` under `out`, print the table."""
    try:
        doc = harness.run()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        harness.stop()
    write_results(doc, out, stem, plot, summary)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; write and print its results."""
    args = parse_args(argv)
    return run_and_write(Harness(args), args.out, "e2e", report.plot, report.summary)


if __name__ == "__main__":
    raise SystemExit(main())
