"""The `payauth` command line: `serve`, `reconcile` and `settlement export`."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from datetime import date
from pathlib import Path

from payauth.server.config import ENV_PREFIX, add_serve_arguments, settings_from_args


def _add_store_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--redis-url", default=os.environ.get(ENV_PREFIX + "REDIS_URL"),
                        help="the Redis payauth uses; default: the embedded one of a running "
                             "`payauth serve` on --data-dir (PAYAUTH_REDIS_URL)")
    parser.add_argument("--redis-cluster", action="store_true",
                        default=os.environ.get(ENV_PREFIX + "REDIS_CLUSTER", "").lower()
                        in {"1", "true", "yes", "on"},
                        help="--redis-url names a node of a Redis Cluster (PAYAUTH_REDIS_CLUSTER)")
    parser.add_argument("--data-dir", type=Path,
                        default=Path(os.environ.get(ENV_PREFIX + "DATA_DIR", "var")),
                        help="data folder of the embedded Redis (PAYAUTH_DATA_DIR, default var)")


def _connect(args: argparse.Namespace):  # noqa: ANN202 - Store, imported lazily
    from payauth.server.embedded_redis import EmbeddedRedis
    from payauth.server.store import Store

    url = args.redis_url or EmbeddedRedis(args.data_dir.resolve() / "redis").url
    return Store.connect(url, args.redis_cluster, timeout_s=30.0)


async def _reconcile(args: argparse.Namespace) -> int:
    from payauth.server.reconcile import reconcile

    store = _connect(args)
    try:
        checked, found = await reconcile(store)
    finally:
        await store.close()
    for discrepancy in found:
        print(discrepancy)
    print(f"{checked} account(s) and loyalty member(s) checked, {len(found)} discrepancy(ies)")
    return 1 if found else 0


async def _export(args: argparse.Namespace) -> int:
    from payauth.server.settlement import export_day

    store = _connect(args)
    try:
        paths = await export_day(store, args.date, args.out)
    finally:
        await store.close()
    for path in paths:
        print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the chosen command."""
    parser = argparse.ArgumentParser(prog="payauth",
                                     description="Real-time payment authorization server.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve", help="serve the payauth gRPC API",
        description="Serve the payauth gRPC API. Every flag has a PAYAUTH_* environment "
                    "variable as its default.")
    add_serve_arguments(serve)
    reconcile = commands.add_parser(
        "reconcile", help="check that every account's balance and holds equal its ledger",
        description="Check every account: balance and held must equal the sums of its ledger "
                    "entries, and held the sum of its active holds. Exit status 1 when any "
                    "account does not balance.")
    _add_store_arguments(reconcile)
    settlement = commands.add_parser("settlement", help="settlement files")
    settlement_commands = settlement.add_subparsers(dest="settlement_command", required=True)
    export = settlement_commands.add_parser(
        "export", help="write a day's captures and refunds per merchant (CSV and Parquet)")
    export.add_argument("--date", type=date.fromisoformat, required=True,
                        help="the UTC day, YYYY-MM-DD")
    export.add_argument("--out", type=Path, default=Path("settlement"),
                        help="output folder (default %(default)s)")
    _add_store_arguments(export)

    args = parser.parse_args(argv)
    if args.command == "serve":
        try:
            settings = settings_from_args(args)
        except ValueError as exc:
            parser.error(str(exc))
        from payauth.server.supervisor import serve as run_serve

        return run_serve(settings)
    if args.command == "reconcile":
        return asyncio.run(_reconcile(args))
    return asyncio.run(_export(args))


if __name__ == "__main__":
    sys.exit(main())
