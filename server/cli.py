"""The `payauth` command line."""

from __future__ import annotations

import argparse
import sys

from payauth.server.config import add_serve_arguments, settings_from_args


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
    args = parser.parse_args(argv)
    if args.command == "serve":
        try:
            settings = settings_from_args(args)
        except ValueError as exc:
            parser.error(str(exc))
        from payauth.server.supervisor import serve as run_serve

        return run_serve(settings)
    return 2


if __name__ == "__main__":
    sys.exit(main())
