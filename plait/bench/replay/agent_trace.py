"""The LMCache agent trace loader: JSONL, one LLM call a line (``timestamp`` µs epoch, ``input``, ``output``,
``session_id``), read from one file or every ``*.jsonl`` under a folder.

Lines are not always in time order within a file, so each session's calls are sorted by timestamp. A session is
one ``session_id`` within one file; when two files use the same id, the later file's session is renamed
``"<id>@<source>"`` so session ids stay unique across the trace.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

from plait.bench.replay.records import AgentCall, AgentSession, Trace, TraceFormatError
from plait.bench.replay.trace_common import (
    LineErrors,
    MalformedRecord,
    no_records_error,
    non_negative_number,
    parse_json_object,
    require_keys,
)

_KEYS = ("timestamp", "input", "output", "session_id")
_US_PER_S = 1_000_000.0


class _RawCall(NamedTuple):
    timestamp_us: float
    session_id: str
    input_text: str
    output_text: str


def _agent_files(path: Path) -> list[tuple[Path, str]]:
    """``(file, source)`` pairs: the file itself, or every ``*.jsonl`` under the folder (recursively, sorted). The
    source starts with the folder the file is in (``miniswe/abc.jsonl``): it names the kind of agent."""
    if path.is_file():
        return [(path, f"{path.resolve().parent.name}/{path.name}")]
    files = sorted(p for p in path.rglob("*.jsonl") if p.is_file())
    if not files:
        raise TraceFormatError(
            f"{path}: no *.jsonl files in this folder (searched recursively); pass a .jsonl file "
            "or a folder of LMCache agent traces"
        )
    return [(file, f"{path.resolve().name}/{file.relative_to(path).as_posix()}") for file in files]


def _parse_line(line: str) -> _RawCall:
    obj = parse_json_object(line)
    require_keys(obj, _KEYS)
    timestamp_us = non_negative_number(obj["timestamp"], "timestamp")
    session_id = obj["session_id"]
    if isinstance(session_id, bool) or not isinstance(session_id, str | int) or session_id == "":
        raise MalformedRecord(f"session_id is {session_id!r}; expected a non-empty string")
    for key in ("input", "output"):
        if not isinstance(obj[key], str):
            raise MalformedRecord(f"{key} is a {type(obj[key]).__name__}; expected a string (the full text)")
    return _RawCall(timestamp_us, str(session_id), obj["input"], obj["output"])


def _read_calls(file: Path, errors: LineErrors) -> list[_RawCall]:
    calls: list[_RawCall] = []
    with file.open(encoding="utf-8-sig") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                calls.append(_parse_line(line))
            except MalformedRecord as error:
                errors.reject(file, line_no, error)
    return calls


def _group_sessions(files: list[tuple[Path, str]], errors: LineErrors) -> list[tuple[str, str, list[_RawCall]]]:
    """``(session_id, source, calls sorted by time)`` per (file, session_id), session ids made unique."""
    groups: list[tuple[str, str, list[_RawCall]]] = []
    seen_ids: set[str] = set()
    for file, source in files:
        by_session: dict[str, list[_RawCall]] = defaultdict(list)
        for call in _read_calls(file, errors):
            by_session[call.session_id].append(call)
        for session_id, calls in by_session.items():
            unique_id = session_id if session_id not in seen_ids else f"{session_id}@{source}"
            seen_ids.add(unique_id)
            calls.sort(key=lambda call: call.timestamp_us)  # stable: file order among equal timestamps
            groups.append((unique_id, source, calls))
    return groups


def load_lmcache_agent(path: Path, *, skip_malformed: bool = False) -> Trace:
    """Load LMCache agent sessions from a ``.jsonl`` file or a folder of them; sessions sorted by arrival.

    A session's ``arrival_s`` is its first call relative to the earliest call of all sessions; each call's
    ``offset_s`` is relative to its session's first call, so the gaps between offsets are the tool time.
    """
    files = _agent_files(path)
    errors = LineErrors(skip_malformed)
    groups = _group_sessions(files, errors)
    if not groups:
        raise no_records_error(path, "lmcache-agent", errors.skipped)
    first_us = min(calls[0].timestamp_us for _, _, calls in groups)
    sessions = [_session(session_id, source, calls, first_us) for session_id, source, calls in groups]
    sessions.sort(key=lambda session: session.arrival_s)  # stable: file then first-seen order among ties
    trace = Trace(format="lmcache-agent", path=path, sessions=sessions, skipped_lines=errors.skipped)
    trace.meta.update(
        files=[str(file) for file, _ in files],
        sessions=len(sessions),
        records=sum(len(session.calls) for session in sessions),
        span_s=trace.span_s(),
    )
    return trace


def _session(session_id: str, source: str, calls: list[_RawCall], first_us: float) -> AgentSession:
    start_us = calls[0].timestamp_us
    return AgentSession(
        session_id=session_id,
        arrival_s=(start_us - first_us) / _US_PER_S,
        calls=tuple(
            AgentCall(
                offset_s=(call.timestamp_us - start_us) / _US_PER_S,
                input_text=call.input_text,
                output_text=call.output_text,
            )
            for call in calls
        ),
        source=source,
    )
