"""``plait bench replay-report RESULT_JSON``: the markdown report and plots of a saved ``plait bench replay`` result.

Reads the JSON that ``plait bench replay`` wrote and writes ``report.md`` plus PNG plots (latency CDFs, throughput
and KV usage over time, plait vs baseline) into ``--output-dir`` (default: ``<json stem>_report`` next to the JSON).
Nothing is replayed; the stored summary is used when present.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


class ReplayResultError(ValueError):
    """A file that cannot be read as a ``plait bench replay`` result; the message says why."""


def register(benches: argparse._SubParsersAction) -> None:
    """Add ``replay-report`` to the ``plait bench`` subcommands (imports nothing heavy)."""
    parser = benches.add_parser(
        "replay-report",
        help="markdown report and plots from a `plait bench replay` JSON",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("result", type=Path, metavar="RESULT_JSON", help="the JSON written by `plait bench replay`")
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help="where to write the report (default: <json stem>_report beside it)",
    )
    parser.set_defaults(handler=main)


def default_output_dir(result: Path) -> Path:
    """``<stem>_report`` in the JSON's folder."""
    return result.with_name(f"{result.stem}_report")


def _check_runs(runs: Any) -> None:
    from plait.bench.replay.records import ModeRun

    if not isinstance(runs, list) or not runs:
        raise ReplayResultError("'runs' must be a non-empty list of runs")
    for index, run in enumerate(runs):
        try:
            if not isinstance(run, dict):
                raise TypeError("not an object")
            ModeRun.from_dict(run)
        except (KeyError, TypeError, ValueError) as error:
            raise ReplayResultError(f"runs[{index}] is not a replay run: {type(error).__name__}: {error}") from None


def load_result(path: Path) -> dict[str, Any]:
    """The payload of a replay result file; raises ``ReplayResultError`` for a missing or unreadable file, invalid
    JSON, or JSON that is not a replay result (``"bench": "replay"`` with a list of runs)."""
    if not path.is_file():
        raise ReplayResultError(f"{path}: no such file")
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ReplayResultError(f"{path}: cannot read: {error}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ReplayResultError(f"{path}: not valid JSON: {error}") from None
    if not isinstance(payload, dict) or payload.get("bench") != "replay":
        found = payload.get("bench") if isinstance(payload, dict) else type(payload).__name__
        raise ReplayResultError(f"{path}: not a `plait bench replay` result (bench: {found!r})")
    try:
        _check_runs(payload.get("runs"))
    except ReplayResultError as error:
        raise ReplayResultError(f"{path}: {error}") from None
    for key in ("summary", "slo", "trace", "ratios"):
        if payload.get(key) is not None and not isinstance(payload[key], dict):
            raise ReplayResultError(f"{path}: '{key}' must be an object")
    _check_numbers(path, payload.get("slo") or {}, "slo")
    _check_numbers(path, payload.get("ratios") or {}, "ratios")
    if any(not isinstance(summary, dict) for summary in (payload.get("summary") or {}).values()):
        raise ReplayResultError(f"{path}: 'summary' must map each mode to an object")
    return payload


def _check_numbers(path: Path, values: dict[str, Any], key: str) -> None:
    for name, value in values.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ReplayResultError(f"{path}: '{key}.{name}' must be a number or null, got {value!r}")


def main(args: argparse.Namespace) -> int:
    """Write the report of ``args.result``; 2 with ``error: ...`` on stderr when it is not a replay result."""
    try:
        payload = load_result(args.result)
    except ReplayResultError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from plait.bench.replay.replay_report import write_report

    out_dir = args.output_dir if args.output_dir is not None else default_output_dir(args.result)
    for path in write_report(payload, out_dir):
        print(path)
    return 0
