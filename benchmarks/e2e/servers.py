"""The servers under test, started by the harness as subprocesses, and what is read from them.

`payauth serve` and the empty handler each run as their own process tree on free loopback
ports under a temporary folder, with their output in a log file there. Between phases the
harness reads three things from outside the servers (so measuring costs them nothing extra):
the CPU time and context switches of every process of a tree (/proc), payauth's Prometheus
endpoint, and Redis's `INFO commandstats` / `INFO stats`; and, from the kernel, the machine's
CPU time stolen by the hypervisor.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import redis
from prometheus_client.parser import text_string_to_metric_families

REPO_ROOT = Path(__file__).resolve().parents[2]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    """One server process tree, started with `args`, serving once `marker` is in its log."""

    name: str
    args: list[str]
    log: Path
    marker: str
    port: int
    process: subprocess.Popen[bytes] | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def target(self) -> str:
        """The gRPC target of the server."""
        return f"127.0.0.1:{self.port}"

    def spawn(self, cpus: set[int] | None = None) -> None:
        """Start the process, on `cpus` when given (its workers and Redis inherit them);
        `wait_serving` waits for it."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PAYAUTH_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT),
                                                          env.get("PYTHONPATH")]))
        env.update(self.extra_env)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                self.args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT,
                start_new_session=True,
                preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)

    def output(self) -> str:
        """Everything the server wrote so far."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_serving(self, timeout_s: float = 90.0) -> None:
        """Block until the server says it serves; raise with its log if it exits first."""
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n"
                                   f"{self.output()[-4000:]}")
            if self.marker in self.output():
                return
            time.sleep(0.05)
        raise TimeoutError(f"{self.name} did not serve within {timeout_s:.0f} s:\n"
                           f"{self.output()[-4000:]}")

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM the server (it drains and stops its workers); kill the tree if it lingers."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def tree(self) -> dict[int, str]:
        """pid -> command name of the server's descendants (its workers, an embedded Redis)."""
        assert self.process is not None
        return descendants(self.process.pid)


def payauth_server(folder: Path, workers: int, redis_url: str | None,
                   pan_key_file: Path | None, extra: list[str], name: str = "payauth"
                   ) -> tuple[ServerProcess, int]:
    """`payauth serve` on a free port with a free metrics port, its data under
    `folder/name`; returns it and that port."""
    port, metrics_port = free_port(), free_port()
    args = [sys.executable, "-m", "payauth.server", "serve", "--port", str(port),
            "--workers", str(workers), "--data-dir", str(folder / name),
            "--metrics-port", str(metrics_port), "--log-level", "WARNING"]
    if redis_url:
        args += ["--redis-url", redis_url]
    if pan_key_file:
        args += ["--pan-key-file", str(pan_key_file)]
    args += extra
    return ServerProcess("payauth serve", args, folder / f"{name}.log", "payauth serving on",
                         port), metrics_port


def empty_server(folder: Path, workers: int, redis_url: str | None = None,
                 round_trips: int = 0) -> ServerProcess:
    """The empty handler (benchmarks.e2e.empty_server) on a free port; with `round_trips`,
    each Authorize first waits for that many round trips to `redis_url`, the last a write."""
    port = free_port()
    args = [sys.executable, "-m", "benchmarks.e2e.empty_server", "--port", str(port),
            "--workers", str(workers)]
    name = "empty"
    if round_trips:
        args += ["--redis-url", str(redis_url), "--round-trips", str(round_trips)]
        name = "empty_redis"
    return ServerProcess("empty handler", args, folder / f"{name}.log",
                         "empty handler serving on", port)


# -- process CPU --------------------------------------------------------------------------

def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces: split after it.
    head, _, tail = text.rpartition(")")
    return [head.partition("(")[2], *tail.split()]


def descendants(root: int) -> dict[int, str]:
    """pid -> command name of every live descendant of `root`."""
    parents: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            parents[int(entry.name)] = (int(fields[2]), fields[0])
    found: dict[int, str] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, name) in parents.items():
            if ppid == parent and pid not in found:
                found[pid] = name
                frontier.append(pid)
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time of these processes (the ones still alive)."""
    total = 0
    for pid in pids:
        if (fields := _stat(pid)) is not None:
            total += int(fields[12]) + int(fields[13])  # utime, stime (fields 14 and 15)
    return total / CLOCK_TICKS


def context_switches(pids: list[int]) -> int:
    """Context switches, voluntary and not, of every thread of these processes (those still
    alive)."""
    return sum(context_switches_by_kind(pids))


def context_switches_by_kind(pids: list[int]) -> tuple[int, int]:
    """(voluntary, involuntary) context switches of every thread of these processes (those
    still alive). A process's own status counts its main thread only, so each thread is
    read. The voluntary ones are hand-offs (a thread waits for another); the involuntary
    ones preemptions, which grow with whatever else the cores run."""
    voluntary = involuntary = 0
    for pid in pids:
        try:
            threads = list(Path(f"/proc/{pid}/task").iterdir())
        except OSError:
            continue
        for thread in threads:
            try:
                status = (thread / "status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    voluntary += int(line.rpartition(":")[2])
                elif line.startswith("nonvoluntary_ctxt_switches:"):
                    involuntary += int(line.rpartition(":")[2])
    return voluntary, involuntary


def cpu_ticks() -> tuple[int, int]:
    """(stolen, all) clock ticks of the machine's CPUs since boot, from /proc/stat: the share
    stolen is the time the hypervisor gave this VM's virtual CPUs to other guests while they
    had work. On a shared host it moves every figure of a run; the harness records it."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    ticks = [int(f) for f in fields[:8]]  # user nice system idle iowait irq softirq steal
    return ticks[7], sum(ticks)


def stolen_share(before: tuple[int, int], after: tuple[int, int]) -> float | None:
    """The share of the CPU ticks between two `cpu_ticks()` readings that the hypervisor
    stole, to three places; None when no tick passed."""
    ticks = after[1] - before[1]
    return round((after[0] - before[0]) / ticks, 3) if ticks > 0 else None


# -- which worker holds which connection --------------------------------------------------------

def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    except OSError:
        pass
    return inodes


def _tcp_sockets(port: int) -> list[tuple[str, int, int]]:
    """(state, remote port, inode) of every TCP socket whose local port is `port`."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if int(f[1].rsplit(":", 1)[1], 16) == port:
                found.append((f[3], int(f[2].rsplit(":", 1)[1], 16), int(f[9])))
    return found


def connections_by_worker(pids: list[int], port: int) -> dict[int, set[int]]:
    """For each worker (a process of `pids` listening on `port`), the client-side ports of
    the established connections it serves: SO_REUSEPORT picks the worker per connection by
    a hash, so with a handful of connections the split is often far from even."""
    sockets = _tcp_sockets(port)
    owners = {pid: _socket_inodes(pid) for pid in pids}
    workers: dict[int, set[int]] = {}
    for pid, inodes in owners.items():
        if any(state == "0A" and inode in inodes for state, _, inode in sockets):
            workers[pid] = set()
    for state, remote, inode in sockets:
        if state != "01":  # ESTABLISHED only
            continue
        for pid in workers:
            if inode in owners[pid]:
                workers[pid].add(remote)
    return workers


# -- Prometheus and Redis --------------------------------------------------------------------

@dataclass
class Counters:
    """A snapshot of the counters the round-trip figures are made from."""

    at: float
    prometheus: dict[str, float]
    commands: dict[str, int]
    total_commands: int
    total_reads: int
    forks: int = 0  # Redis's forks so far: each AOF rewrite is one
    latest_fork_usec: int = 0  # how long the last fork held Redis's main thread
    command_usec: dict[str, int] = field(default_factory=dict)  # Redis's time in each command


# The payauth samples the benchmark reads: metric sample -> (key prefix, the labels that
# complete the key); samples with the same key (other labels, other workers) are summed.
_SCRAPED: dict[str, tuple[str, tuple[str, ...]]] = {
    "payauth_redis_latency_seconds_count": ("redis", ("operation",)),
    "payauth_redis_latency_seconds_sum": ("redis_seconds", ("operation",)),
    "payauth_redis_latency_seconds_bucket": ("redis_le", ("operation", "le")),
    "payauth_rpc_requests_total": ("rpc", ("method",)),
    "payauth_rpc_latency_seconds_sum": ("rpc_seconds", ("method",)),
    "payauth_rpc_latency_seconds_count": ("rpc_count", ("method",)),
    "payauth_rpc_latency_seconds_bucket": ("rpc_le", ("method", "le")),
    "payauth_event_loop_lag_seconds_bucket": ("loop_lag_le", ("le",)),
    "payauth_gc_pause_seconds_bucket": ("gc_le", ("le",)),
    "payauth_gc_pause_seconds_sum": ("gc_seconds", ("generation",)),
    "payauth_gc_pause_seconds_count": ("gc_count", ("generation",)),
}


def scrape_prometheus(port: int) -> dict[str, float]:
    """The payauth counters the benchmark uses, from /metrics (summed over workers), keyed
    like "redis:authorize_read" or "rpc_le:Authorize:0.005"."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            scraped = _SCRAPED.get(sample.name)
            if scraped is None:
                continue
            prefix, labels = scraped
            key = ":".join([prefix, *(str(sample.labels.get(label)) for label in labels)])
            values[key] = values.get(key, 0.0) + sample.value
    return values


def snapshot(metrics_port: int, client: redis.Redis | None) -> Counters:
    """Prometheus and Redis counters now: calls and time per command (`INFO commandstats`),
    total commands, socket reads and forks (`INFO stats`)."""
    counters = Counters(time.perf_counter(), scrape_prometheus(metrics_port), {}, 0, 0)
    if client is not None:
        stats = client.info("commandstats")
        counters.commands = {name.removeprefix("cmdstat_"): int(value["calls"])
                             for name, value in stats.items()}
        counters.command_usec = {name.removeprefix("cmdstat_"): int(value["usec"])
                                 for name, value in stats.items()}
        info = client.info("stats")
        counters.total_commands = int(info["total_commands_processed"])
        counters.total_reads = int(info["total_reads_processed"])
        counters.forks = int(info["total_forks"])
        counters.latest_fork_usec = int(info["latest_fork_usec"])
    return counters
