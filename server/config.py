"""Server settings, from command-line flags with `PAYAUTH_*` environment defaults.

One frozen dataclass is built at start-up and handed to every worker, so a
worker never reads the environment on its own.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from payauth.server.hold_rules import HoldRules, parse_ttl_by_mcc

ENV_PREFIX = "PAYAUTH_"


@dataclass(frozen=True)
class Settings:
    """Everything a `payauth serve` process and its workers need to know."""

    host: str = "127.0.0.1"
    port: int = 50051
    workers: int = 1
    redis_url: str | None = None
    redis_cluster: bool = False
    data_dir: Path = Path("var")
    pan_key_file: Path | None = None
    redis_server_bin: str = "redis-server"
    hold_ttl_s: int = 7 * 24 * 3600
    idempotency_ttl_s: int = 7 * 24 * 3600
    max_clock_skew_future_s: int = 300
    max_clock_skew_past_s: int = 24 * 3600
    grace_s: float = 10.0
    redis_timeout_s: float = 0.5
    log_level: str = "INFO"
    demo: bool = False
    hold_ttl_by_mcc: tuple[tuple[str, int], ...] = ()
    sweep_interval_s: float = 5.0
    clock_file: Path | None = None
    metrics_port: int = 9464

    @property
    def embedded_redis(self) -> bool:
        """True when the server starts and owns its private redis-server."""
        return self.redis_url is None

    @property
    def hold_rules(self) -> HoldRules:
        """Hold lifetimes and over-capture tolerances by merchant category."""
        return HoldRules(self.hold_ttl_s, self.hold_ttl_by_mcc)

    @property
    def pan_key_path(self) -> Path:
        """Where the PAN hashing secret is read from (generated there when absent)."""
        return self.pan_key_file or self.data_dir / "pan.key"


def _env(name: str, default: str | None) -> str | None:
    return os.environ.get(ENV_PREFIX + name.upper(), default)


def _env_bool(name: str) -> bool:
    return (_env(name, "") or "").lower() in {"1", "true", "yes", "on"}


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the flags of `payauth serve`; each defaults to its PAYAUTH_* variable."""
    d = Settings()
    parser.add_argument("--host", default=_env("host", d.host),
                        help="address to listen on; plain-text gRPC is served on loopback only "
                             "(PAYAUTH_HOST, default %(default)s)")
    parser.add_argument("--port", type=int, default=int(_env("port", str(d.port))),
                        help="port to listen on, 0 for a free one (PAYAUTH_PORT, default "
                             "%(default)s)")
    parser.add_argument("--workers", type=int,
                        default=int(_env("workers", str(os.cpu_count() or 1))),
                        help="server processes sharing the port through SO_REUSEPORT "
                             "(PAYAUTH_WORKERS, default: number of cores)")
    parser.add_argument("--redis-url", default=_env("redis_url", None),
                        help="use this Redis as it is (redis://, rediss:// or unix://); without "
                             "it the server runs a private redis-server under --data-dir "
                             "(PAYAUTH_REDIS_URL)")
    parser.add_argument("--redis-cluster", action="store_true", default=_env_bool("redis_cluster"),
                        help="--redis-url names a node of a Redis Cluster (PAYAUTH_REDIS_CLUSTER)")
    parser.add_argument("--data-dir", type=Path, default=Path(_env("data_dir", str(d.data_dir))),
                        help="folder of the embedded Redis data, the PAN key and the lock "
                             "(PAYAUTH_DATA_DIR, default %(default)s)")
    parser.add_argument("--pan-key-file", type=Path,
                        default=_optional_path(_env("pan_key_file", None)),
                        help="file holding the PAN hashing secret (64+ hex characters); "
                             "default <data-dir>/pan.key, generated on first start "
                             "(PAYAUTH_PAN_KEY_FILE)")
    parser.add_argument("--redis-server-bin", default=_env("redis_server_bin", d.redis_server_bin),
                        help="redis-server executable for the embedded Redis "
                             "(PAYAUTH_REDIS_SERVER_BIN)")
    parser.add_argument("--hold-ttl", dest="hold_ttl_s", type=int,
                        default=int(_env("hold_ttl", str(d.hold_ttl_s))),
                        help="seconds an authorization hold lives unless captured or reversed "
                             "(PAYAUTH_HOLD_TTL, default %(default)s)")
    parser.add_argument("--hold-ttl-by-mcc", default=_env("hold_ttl_by_mcc", ""),
                        help="hold lifetimes for some merchant categories, as "
                             "MCC=SECONDS,MCC=SECONDS (PAYAUTH_HOLD_TTL_BY_MCC; lodging and "
                             "vehicle rental default to 31 days)")
    parser.add_argument("--sweep-interval", dest="sweep_interval_s", type=float,
                        default=float(_env("sweep_interval", str(d.sweep_interval_s))),
                        help="seconds between two sweeps for expired holds in each worker "
                             "(PAYAUTH_SWEEP_INTERVAL, default %(default)s)")
    parser.add_argument("--clock-file", type=Path, default=_optional_path(_env("clock_file", None)),
                        help="read the time from this file (seconds since the epoch) instead "
                             "of the system clock: for tests and simulations only "
                             "(PAYAUTH_CLOCK_FILE)")
    parser.add_argument("--metrics-port", type=int,
                        default=int(_env("metrics_port", str(d.metrics_port))),
                        help="port of the Prometheus /metrics endpoint on --host, 0 for none "
                             "(PAYAUTH_METRICS_PORT, default %(default)s)")
    parser.add_argument("--idempotency-ttl", dest="idempotency_ttl_s", type=int,
                        default=int(_env("idempotency_ttl", str(d.idempotency_ttl_s))),
                        help="seconds a request_id and its answer are remembered "
                             "(PAYAUTH_IDEMPOTENCY_TTL, default %(default)s)")
    parser.add_argument("--clock-skew-future", dest="max_clock_skew_future_s", type=int,
                        default=int(_env("clock_skew_future", str(d.max_clock_skew_future_s))),
                        help="seconds a request's timestamp may be ahead of the server clock "
                             "(PAYAUTH_CLOCK_SKEW_FUTURE, default %(default)s)")
    parser.add_argument("--clock-skew-past", dest="max_clock_skew_past_s", type=int,
                        default=int(_env("clock_skew_past", str(d.max_clock_skew_past_s))),
                        help="seconds a request's timestamp may be behind the server clock "
                             "(PAYAUTH_CLOCK_SKEW_PAST, default %(default)s)")
    parser.add_argument("--grace", dest="grace_s", type=float,
                        default=float(_env("grace", str(d.grace_s))),
                        help="seconds SIGTERM waits for in-flight calls (PAYAUTH_GRACE)")
    parser.add_argument("--redis-timeout", dest="redis_timeout_s", type=float,
                        default=float(_env("redis_timeout", str(d.redis_timeout_s))),
                        help="seconds a Redis call may take before the request fails "
                             "(PAYAUTH_REDIS_TIMEOUT)")
    parser.add_argument("--log-level", default=_env("log_level", d.log_level),
                        help="DEBUG, INFO, WARNING or ERROR (PAYAUTH_LOG_LEVEL)")
    parser.add_argument("--demo", action="store_true", default=_env_bool("demo"),
                        help="load the demo issuer, accounts and cards once the server is up "
                             "(PAYAUTH_DEMO)")


def _optional_path(value: str | None) -> Path | None:
    return Path(value) if value else None


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Build and check the settings; raise ValueError with a clear message when wrong."""
    if args.clock_file and not args.clock_file.is_file():
        raise ValueError(f"--clock-file {args.clock_file} does not exist")
    if args.sweep_interval_s <= 0:
        raise ValueError("--sweep-interval must be positive")
    if args.workers < 1:
        raise ValueError("--workers must be at least 1")
    if not 0 <= args.port <= 65535:
        raise ValueError("--port must be between 0 and 65535")
    if not 0 <= args.metrics_port <= 65535:
        raise ValueError("--metrics-port must be between 0 and 65535")
    if not _is_loopback(args.host):
        raise ValueError(
            f"--host {args.host} is not a loopback address: plain-text gRPC is served on "
            "loopback only"
        )
    if args.redis_cluster and not args.redis_url:
        raise ValueError("--redis-cluster needs --redis-url")
    if args.idempotency_ttl_s < args.max_clock_skew_past_s:
        raise ValueError("--idempotency-ttl must be at least --clock-skew-past, so that any "
                         "retry the server accepts is recognised as one")
    for name, flag in (("hold_ttl_s", "--hold-ttl"), ("idempotency_ttl_s", "--idempotency-ttl"),
                       ("max_clock_skew_future_s", "--clock-skew-future"),
                       ("max_clock_skew_past_s", "--clock-skew-past")):
        if getattr(args, name) <= 0:
            raise ValueError(f"{flag} must be positive")
    return Settings(
        host=args.host,
        port=args.port,
        workers=args.workers,
        redis_url=args.redis_url,
        redis_cluster=args.redis_cluster,
        data_dir=args.data_dir.resolve(),
        pan_key_file=args.pan_key_file.resolve() if args.pan_key_file else None,
        redis_server_bin=args.redis_server_bin,
        hold_ttl_s=args.hold_ttl_s,
        idempotency_ttl_s=args.idempotency_ttl_s,
        max_clock_skew_future_s=args.max_clock_skew_future_s,
        max_clock_skew_past_s=args.max_clock_skew_past_s,
        grace_s=args.grace_s,
        redis_timeout_s=args.redis_timeout_s,
        log_level=args.log_level.upper(),
        demo=args.demo,
        hold_ttl_by_mcc=parse_ttl_by_mcc(args.hold_ttl_by_mcc),
        sweep_interval_s=args.sweep_interval_s,
        clock_file=args.clock_file.resolve() if args.clock_file else None,
        metrics_port=args.metrics_port,
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
