"""Real processes for the tests: redis-server (single or a 3-master cluster) and
`payauth serve`, each on free ports in a temporary folder."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis
from google.protobuf.timestamp_pb2 import Timestamp

REDIS_SERVER = shutil.which("redis-server") or "redis-server"
REDIS_CLI = shutil.which("redis-cli") or "redis-cli"


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free and valid too."""
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


def wait_until(predicate, timeout_s: float, what: str) -> None:
    """Poll `predicate` until true, or fail the test naming `what`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")


class RedisProcess:
    """A redis-server with AOF and `appendfsync always`, as payauth's embedded one."""

    def __init__(self, folder: Path, port: int | None = None, cluster: bool = False) -> None:
        self.folder = folder
        self.port = port or (free_cluster_port() if cluster else free_port())
        self.cluster = cluster
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5)

    def start(self) -> RedisProcess:
        self.folder.mkdir(parents=True, exist_ok=True)
        args = [
            REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.folder), "--appendonly", "yes", "--appendfsync", "always",
            "--save", "", "--daemonize", "no", "--logfile", str(self.folder / "redis.log"),
            "--enable-debug-command", "local",
        ]
        if self.cluster:
            args += ["--cluster-enabled", "yes", "--cluster-config-file",
                     str(self.folder / "nodes.conf"), "--cluster-node-timeout", "5000"]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL)
        client = self.client()

        def answers() -> bool:
            if self.process.poll() is not None:
                log = (self.folder / "redis.log").read_text()
                raise RuntimeError(f"redis-server exited with {self.process.returncode}:\n{log}")
            try:
                return bool(client.ping())
            except (redis.ConnectionError, redis.BusyLoadingError):
                return False

        wait_until(answers, 15, f"redis-server on port {self.port}")
        client.close()
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.process is not None
        self.process.send_signal(sig)
        self.process.wait(15)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill(signal.SIGTERM)


class RedisCluster:
    """Three redis-server primaries joined with `redis-cli --cluster create`."""

    def __init__(self, folder: Path) -> None:
        self.nodes = [RedisProcess(folder / f"node{i}", cluster=True) for i in range(3)]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self) -> RedisCluster:
        for node in self.nodes:
            node.start()
        subprocess.run(
            [REDIS_CLI, "--cluster", "create",
             *(f"127.0.0.1:{n.port}" for n in self.nodes), "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, timeout=60,
        )

        def ready() -> bool:
            client = self.nodes[0].client()
            state = client.execute_command("CLUSTER INFO").get("cluster_state")
            client.close()
            return state == "ok"

        wait_until(ready, 30, "the cluster to be ok")
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class PayauthProcess:
    """`payauth serve` in a subprocess; its output goes to <data_dir>/server.log."""

    def __init__(self, data_dir: Path, *, redis_url: str | None = None, workers: int = 1,
                 port: int | None = None, cluster: bool = False,
                 extra: tuple[str, ...] = ()) -> None:
        self.data_dir = data_dir
        self.redis_url = redis_url
        self.workers = workers
        self.port = port or free_port()
        self.metrics_port = free_port()
        self.cluster = cluster
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None
        self.log = data_dir / "server.log"

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def spawn(self, process_group: bool = False) -> subprocess.Popen[bytes]:
        """Start the process without waiting for it to serve; with `process_group`, as a
        terminal starts a foreground job: in a process group of its own, which a Ctrl-C
        signals whole."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [sys.executable, "-m", "payauth.server", "serve", "--port", str(self.port),
                "--workers", str(self.workers), "--data-dir", str(self.data_dir),
                "--metrics-port", str(self.metrics_port), *self.extra]
        if self.redis_url:
            args += ["--redis-url", self.redis_url]
        if self.cluster:
            args.append("--redis-cluster")
        env = {k: v for k, v in os.environ.items() if not k.startswith("PAYAUTH_")}
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                            env=env, process_group=0 if process_group else None)
        return self.process

    def output(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def start(self, timeout_s: float = 60, process_group: bool = False) -> PayauthProcess:
        """Start the server and wait until it says it serves."""
        offset = len(self.output())
        process = self.spawn(process_group)

        def serving() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"payauth serve exited with {process.returncode}:\n"
                                   f"{self.output()}")
            return "payauth serving on" in self.output()[offset:]

        wait_until(serving, timeout_s, "payauth serve")
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30) -> int:
        """Signal the server and return its exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout_s)


class ServerClock:
    """The time the server reads from its --clock-file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.now = time.time()
        self._write()

    def _write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(f"{self.now:.3f}")
        tmp.replace(self.path)

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self._write()

    def timestamp(self, offset: float = 0) -> Timestamp:
        ts = Timestamp()
        ts.FromMilliseconds(int((self.now + offset) * 1000))
        return ts
