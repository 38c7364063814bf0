"""Loading a trace file (or folder) of one of :data:`TRACE_FORMATS` into a :class:`Trace`.

The per-format readers live beside this module (``mooncake_trace``, ``csv_traces``, ``agent_trace``); this module
checks the path and the format name and dispatches. Every reader validates each line; a malformed line raises a
:class:`TraceFormatError` naming ``file:line``, what is wrong and what was expected, unless ``skip_malformed`` is
set, in which case it is left out and counted in ``trace.skipped_lines``. Blank lines are always skipped silently.
"""

from __future__ import annotations

from pathlib import Path

from plait.bench.replay.agent_trace import load_lmcache_agent
from plait.bench.replay.csv_traces import load_csv_trace
from plait.bench.replay.mooncake_trace import load_mooncake
from plait.bench.replay.records import TRACE_FORMATS, Trace, TraceFormatError

__all__ = ["load_trace"]


def _normalize_format(fmt: str) -> str:
    """The canonical format name (case and ``_``/``-`` insensitive), or a TraceFormatError listing the choices."""
    name = fmt.strip().lower().replace("_", "-")
    if name not in TRACE_FORMATS:
        raise TraceFormatError(f"unknown trace format {fmt!r}; use one of: {', '.join(TRACE_FORMATS)}")
    return name


def _check_path(path: Path, fmt: str) -> None:
    """Raise a TraceFormatError when ``path`` cannot hold a trace of ``fmt``."""
    if not path.exists():
        raise TraceFormatError(f"{path}: no such file or folder; check the trace path")
    if path.is_dir() and fmt != "lmcache-agent":
        raise TraceFormatError(
            f"{path}: is a folder, but --format {fmt} reads one file; pass the trace file itself "
            "(only --format lmcache-agent reads a folder)"
        )


def load_trace(path: Path, fmt: str, *, skip_malformed: bool = False) -> Trace:
    """Load the trace at ``path`` as format ``fmt`` (one of :data:`TRACE_FORMATS`).

    Request-level formats (``mooncake``, ``azure``, ``burstgpt``) fill ``trace.requests``; ``lmcache-agent`` (a
    ``.jsonl`` file or a folder searched recursively) fills ``trace.sessions``. Arrivals are seconds from the
    earliest record and sorted. ``trace.meta`` records the files read, the record count, the CSV columns used and
    the time span. Raises :class:`TraceFormatError` for a missing path, an unknown format, a malformed line (unless
    ``skip_malformed``) or a trace with no usable records.
    """
    path = Path(path)
    name = _normalize_format(fmt)
    _check_path(path, name)
    if name == "mooncake":
        return load_mooncake(path, skip_malformed=skip_malformed)
    if name == "lmcache-agent":
        return load_lmcache_agent(path, skip_malformed=skip_malformed)
    return load_csv_trace(path, name, skip_malformed=skip_malformed)
