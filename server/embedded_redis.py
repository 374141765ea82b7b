"""The private redis-server a `payauth serve` starts when no Redis is configured.

It listens on a unix socket only, keeps its data under the data folder with
AOF on and `appendfsync always` (an approved hold is on disk before its answer
is sent), and dies with the server: it is stopped with SIGTERM (a clean Redis
shutdown) and, should the server itself be killed, the kernel sends it SIGTERM
too (PR_SET_PDEATHSIG). Its latency monitor is on, so that `LATENCY LATEST`
names what held its main thread when calls time out (an AOF fsync the disk took
long over, a fork).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import redis

from payauth.server.lifelines import die_with_parent

_MAX_UNIX_SOCKET_PATH = 107

# Events that hold the embedded Redis's main thread this long or longer are recorded by its
# latency monitor (`LATENCY LATEST`, `LATENCY DOCTOR`): with `appendfsync always` every call
# in flight waits through a slow fsync, and past --redis-timeout it fails.
LATENCY_MONITOR_THRESHOLD_MS = 100


class EmbeddedRedis:
    """A redis-server child process owning `folder`."""

    def __init__(self, folder: Path, binary: str = "redis-server") -> None:
        self.folder = folder
        self.binary = binary
        self.socket = folder / "redis.sock"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The redis-py URL of the server's socket."""
        return f"unix://{self.socket}"

    def start(self, timeout_s: float = 15.0) -> None:
        """Start redis-server and wait until it answers PING (after loading its AOF)."""
        executable = shutil.which(self.binary)
        if executable is None:
            raise RuntimeError(
                f"{self.binary} not found: install it (Debian: apt-get install redis-server), "
                "or point payauth at an existing Redis with --redis-url"
            )
        if len(str(self.socket)) > _MAX_UNIX_SOCKET_PATH:
            raise RuntimeError(f"the data folder path is too long for a unix socket: "
                               f"{self.socket}")
        self.folder.mkdir(parents=True, exist_ok=True)
        self._stop_orphan()
        config = self.folder / "redis.conf"
        config.write_text("\n".join([
            "port 0",
            f"unixsocket {self.socket}",
            "unixsocketperm 700",
            f"dir {self.folder}",
            f"pidfile {self.folder / 'redis.pid'}",
            f"logfile {self.folder / 'redis.log'}",
            "appendonly yes",
            "appendfsync always",
            f"latency-monitor-threshold {LATENCY_MONITOR_THRESHOLD_MS}",
            'save ""',
            "daemonize no",
            "",
        ]))
        # A session of its own: a terminal's Ctrl-C (SIGINT to the foreground process
        # group) reaches the server, which drains its calls and then stops Redis, instead of
        # stopping Redis under the calls still draining; and the scheduler shares the CPU
        # with it as with the separate service it is (with autogroup, each session is one
        # group: inside the server's, Redis and the workers would split one share).
        self._process = subprocess.Popen(
            [executable, str(config)], preexec_fn=die_with_parent, start_new_session=True,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout_s
        client = redis.Redis(unix_socket_path=str(self.socket), socket_timeout=1)
        try:
            while True:
                if self._process.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {self._process.returncode}; "
                                       f"see {self.folder / 'redis.log'}")
                try:
                    if client.ping():
                        return
                except (redis.ConnectionError, redis.BusyLoadingError, redis.TimeoutError):
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"redis-server did not answer within {timeout_s} s; "
                                       f"see {self.folder / 'redis.log'}")
                time.sleep(0.05)
        finally:
            client.close()

    def stop(self, timeout_s: float = 15.0) -> None:
        """Shut redis-server down cleanly (SIGTERM: it syncs the AOF and exits)."""
        if self._process is None or self._process.poll() is not None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def _stop_orphan(self) -> None:
        """Stop a redis-server left on this folder by a server that was killed.

        The caller holds the data folder's lock, so such a process belongs to no one.
        """
        pidfile = self.folder / "redis.pid"
        try:
            pid = int(pidfile.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return
        if b"redis-server" not in cmdline:
            return
        os.kill(pid, signal.SIGTERM)
        for _ in range(300):
            if not Path(f"/proc/{pid}").exists():
                return
            time.sleep(0.05)
