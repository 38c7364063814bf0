"""The ``plait`` command. Each subcommand lives in its own module and registers itself here.

Heavy imports (torch, the engine) happen inside the subcommand that needs them, so ``plait --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from plait import __version__
from plait.cli import bench_cmd, generate_cmd, info_cmd, run_cmd, serve_cmd


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``plait`` command, with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="plait",
        description="plait: a serving runtime for agent programs, with an embedded LLM engine.",
    )
    parser.add_argument("--version", action="version", version=f"plait {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    info_cmd.register(subparsers)
    generate_cmd.register(subparsers)
    run_cmd.register(subparsers)
    serve_cmd.register(subparsers)
    bench_cmd.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``plait`` command; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
