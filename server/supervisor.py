"""`payauth serve`: the parent process that owns the data folder, the embedded
Redis and the worker processes.

Start-up, in order: lock the data folder (a second server on it refuses to
start), load or create the PAN key, start the embedded redis-server unless a
Redis is configured, load the Function library and check the store's layout
and PAN key, then start the workers and wait until each serves. SIGTERM or
SIGINT stops the workers (each drains its calls), then Redis, and exits 0. A
worker that dies on its own stops the whole server with exit status 1, so the
service manager restarts it whole.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import multiprocessing
import os
import queue
import signal
import socket
import sys
from multiprocessing.connection import wait
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit, urlunsplit

from redis.exceptions import RedisError

from payauth.server import metrics
from payauth.server.app import run_worker, set_grpc_environment
from payauth.server.config import Settings
from payauth.server.embedded_redis import EmbeddedRedis
from payauth.server.lifelines import die_with_parent
from payauth.server.loyalty_figures import ProgramFiguresCollector
from payauth.server.pan import PanHasher, load_or_create_key
from payauth.server.store import Store

log = logging.getLogger("payauth")

READY_TIMEOUT_S = 60.0


class DataFolderInUseError(RuntimeError):
    """Another `payauth serve` holds the data folder."""


class DataFolderLock:
    """An exclusive flock on <data-dir>/payauth.lock, held for the server's life."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "payauth.lock"
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        """Take the lock or raise DataFolderInUseError naming the holder's pid."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")  # noqa: SIM115 - held open for the server's life
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise DataFolderInUseError(
                f"data folder {self.path.parent} is in use by another payauth serve "
                f"(pid {holder}); stop it first or give this one another --data-dir"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._file = f

    def release(self) -> None:
        """Release the lock."""
        if self._file is not None:
            self._file.close()
            self._file = None


def _without_credentials(url: str) -> str:
    """The URL as it may be logged: any user and password replaced by '***'."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=f"***@{host}"))


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


async def _prepare_store(redis_url: str, settings: Settings, pans: PanHasher) -> None:
    store = Store.connect(redis_url, settings.redis_cluster, timeout_s=10.0)
    try:
        await store.load_library()
        await store.check_meta(pans.key_check())
    finally:
        await store.close()


def _worker_entry(settings: Settings, redis_url: str, port: int, ready: multiprocessing.Queue,
                  index: int, supervisor_pid: int) -> None:
    die_with_parent(supervisor_pid)
    logging.basicConfig(level=settings.log_level,
                        format=f"%(asctime)s %(levelname)s worker-{index} %(name)s: %(message)s")
    run_worker(settings, redis_url, port, index, lambda: ready.put(index))


class Supervisor:
    """Runs one `payauth serve` from start-up to shutdown."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.lock = DataFolderLock(settings.data_dir)
        self.redis: EmbeddedRedis | None = None
        self.workers: list[multiprocessing.process.BaseProcess] = []
        self.port = settings.port
        self._stop_requested = False

    def run(self) -> int:
        """Serve until asked to stop; return the process exit status."""
        s = self.settings
        try:
            self.lock.acquire()
        except DataFolderInUseError as exc:
            log.error("%s", exc)
            return 2
        signal.signal(signal.SIGTERM, self._request_stop)
        signal.signal(signal.SIGINT, self._request_stop)
        try:
            pans = PanHasher(load_or_create_key(s.pan_key_path))
            redis_url = s.redis_url
            if redis_url is None:
                self.redis = EmbeddedRedis(s.data_dir / "redis", s.redis_server_bin)
                self.redis.start()
                redis_url = self.redis.url
                log.info("embedded redis-server on %s (AOF, appendfsync always)",
                         self.redis.socket)
            else:
                log.info("using Redis at %s%s", _without_credentials(redis_url),
                         " (cluster)" if s.redis_cluster else "")
            asyncio.run(_prepare_store(redis_url, s, pans))
            self.port = s.port or _free_port(s.host)
            metrics.prepare_directory(s.data_dir / "metrics")
            if s.metrics_port:
                metrics.serve_metrics(s.host, s.metrics_port, [
                    ProgramFiguresCollector(redis_url, s.redis_cluster, s.redis_timeout_s * 10)])
                log.info("Prometheus metrics on http://%s:%d/metrics", s.host, s.metrics_port)
            if not self._start_workers(redis_url):
                return 1
            print(f"payauth serving on {s.host}:{self.port} with {s.workers} worker(s)",
                  flush=True)
            log.info("data folder %s; holds live %d s; request ids are remembered %d s",
                     s.data_dir, s.hold_ttl_s, s.idempotency_ttl_s)
            if s.demo:
                from payauth.clients import PayauthError
                from payauth.server.demo import load_demo

                try:
                    print(load_demo(f"{s.host}:{self.port}"), flush=True)
                except (PayauthError, ImportError) as exc:
                    raise RuntimeError(f"the demo data could not be loaded: {exc}") from exc
            return self._supervise()
        except (RuntimeError, ValueError, OSError, RedisError) as exc:
            log.error("start-up failed: %s", exc)
            return 1
        finally:
            self._stop_workers()
            if self.redis is not None:
                self.redis.stop()
            self.lock.release()

    def _request_stop(self, signum: int, frame: object) -> None:
        self._stop_requested = True

    def _start_workers(self, redis_url: str) -> bool:
        set_grpc_environment()  # read by gRPC in each worker, which inherits the environment
        ctx = multiprocessing.get_context("spawn")
        ready = ctx.Queue()
        for index in range(self.settings.workers):
            process = ctx.Process(
                target=_worker_entry, name=f"payauth-worker-{index}",
                args=(self.settings, redis_url, self.port, ready, index, os.getpid()),
            )
            process.start()
            self.workers.append(process)
        started = 0
        while started < len(self.workers):
            if self._stop_requested:
                return False
            if any(not p.is_alive() for p in self.workers):
                log.error("a worker exited during start-up")
                return False
            try:
                ready.get(timeout=0.2)
                started += 1
            except queue.Empty:
                continue
        return True

    def _supervise(self) -> int:
        sentinels = [p.sentinel for p in self.workers]
        while not self._stop_requested:
            if wait(sentinels, timeout=0.2):
                dead = [p for p in self.workers if not p.is_alive()]
                for p in dead:
                    metrics.worker_exited(p.pid)
                if dead and not self._stop_requested:
                    log.error("worker %s exited with %s; stopping the server",
                              dead[0].name, dead[0].exitcode)
                    return 1
        log.info("stopping: draining %d worker(s)", len(self.workers))
        return 0

    def _stop_workers(self) -> None:
        for p in self.workers:
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signal.SIGTERM)
        for p in self.workers:
            p.join(self.settings.grace_s + 5)
            if p.is_alive():
                log.warning("worker %s did not drain in time; killing it", p.name)
                p.kill()
                p.join()


def serve(settings: Settings) -> int:
    """Run `payauth serve` with these settings."""
    logging.basicConfig(level=settings.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return Supervisor(settings).run()
