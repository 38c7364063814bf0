"""``plait bench ...``: benchmarks that print a table and write JSON."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="run a benchmark (prints a table, writes JSON)")
    benches = parser.add_subparsers(dest="bench", metavar="BENCH")
    from plait.bench import (
        cache_bench,
        engine_bench,
        grammar_bench,
        journal_bench,
        migration_bench,
        peer_bench,
        replay_bench,
        replay_report_cmd,
        serve_load,
        soak,
        workflow_bench,
    )

    engine_bench.register(benches)
    cache_bench.register(benches)
    grammar_bench.register(benches)
    serve_load.register(benches)
    workflow_bench.register(benches)
    replay_bench.register(benches)
    replay_report_cmd.register(benches)
    journal_bench.register(benches)
    migration_bench.register(benches)
    peer_bench.register(benches)
    soak.register(benches)
    parser.set_defaults(handler=lambda args: parser.print_help() or 2)
