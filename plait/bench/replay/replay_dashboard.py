"""The offline dashboard of a replay (``dashboard.html`` in the report folder): the dashboard's views of each run.

A replay records requests, not planner timelines, so its spans are rebuilt from the request records on the same
kinds: ``queued`` from a call's arrival to its send, ``prefill`` from send to first token, ``decode`` from first token
to its end, and for agent sessions ``tool`` for the gap between a call's end and the next call's arrival. An agent
session is a program whose nodes are its calls; a request of a request-level trace is a program of one call. KV
samples hold only the share of the pool in use, drawn as ``running``. Times are seconds from the run's start.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from plait.bench.replay.records import ModeRun, RequestRecord
from plait.runtime.timeline import TimelineEvent, TimelineKind
from plait.server.dashboard import (
    KVSample,
    NodeSnapshot,
    ProgramSnapshot,
    report_page,
    report_section,
    write_report_html,
)

DASHBOARD_NAME = "dashboard.html"


def _call_events(program_id: str, node: str, record: RequestRecord) -> list[TimelineEvent]:
    events = []
    if record.sent_s is not None:
        events.append(TimelineEvent(program_id, TimelineKind.QUEUED, record.arrival_s, record.sent_s, node))
        end = record.finished_s if record.finished_s is not None else record.first_token_s
        if record.first_token_s is not None:
            args = {"tokens": record.input_tokens, "cached_tokens": record.cached_tokens}
            events.append(
                TimelineEvent(program_id, TimelineKind.PREFILL, record.sent_s, record.first_token_s, node, args)
            )
            if end is not None and end >= record.first_token_s:
                args = {"tokens": record.output_tokens}
                events.append(TimelineEvent(program_id, TimelineKind.DECODE, record.first_token_s, end, node, args))
    return events


def _call_state(record: RequestRecord) -> str:
    if record.ok:
        return "done"
    return "failed" if record.error else "cancelled"


def replay_snapshots(run: ModeRun) -> list[ProgramSnapshot]:
    """One program per agent session (its calls in order, tool gaps between them), else one per request."""
    groups: dict[str, list[RequestRecord]] = {}
    for record in run.requests:
        key = record.session_id if record.session_id is not None else f"request-{record.index}"
        groups.setdefault(key, []).append(record)
    sessions = {session.session_id: session for session in run.sessions}
    snapshots = []
    for program_id, calls in groups.items():
        calls.sort(key=lambda r: r.arrival_s)
        nodes, events, edges = [], [], []
        for number, record in enumerate(calls):
            node = f"call {number}" if len(calls) > 1 else "call"
            nodes.append(NodeSnapshot(node, "llm", _call_state(record), record.error))
            events.extend(_call_events(program_id, node, record))
            if number:
                before = calls[number - 1]
                edges.append((f"call {number - 1}", node))
                if before.finished_s is not None and record.arrival_s > before.finished_s:
                    events.append(
                        TimelineEvent(program_id, TimelineKind.TOOL, before.finished_s, record.arrival_s, node)
                    )
        start = calls[0].arrival_s
        ends = [r.finished_s for r in calls if r.finished_s is not None]
        session = sessions.get(program_id)
        ok = session.ok if session is not None else all(r.ok for r in calls)
        finished = max(ends) if ends else None
        if finished is not None:
            state = "done" if ok else "failed"
            events.append(TimelineEvent(program_id, TimelineKind.PROGRAM, start, finished, None, {"state": state}))
        else:
            state = "failed" if any(r.error for r in calls) else "cancelled"
        snapshots.append(
            ProgramSnapshot(
                program_id=program_id,
                name=program_id,
                state=state,
                created_at=start,
                finished_at=finished,
                nodes=tuple(nodes),
                edges=tuple(edges),
                events=tuple(sorted(events, key=lambda e: e.start)),
            )
        )
    snapshots.sort(key=lambda s: s.created_at)
    return snapshots


def replay_kv_samples(run: ModeRun) -> list[KVSample]:
    """The run's KV samples (share of the pool in use) as dashboard samples of a pool of size 1."""
    return [
        KVSample(at=t, total=1.0, running=usage, cached=0.0, pinned_idle=0.0, reserved=0.0) for t, usage in run.kv_usage
    ]


def write_replay_dashboard(payload: Mapping[str, Any], runs: Sequence[ModeRun], path: str | Path) -> Path:
    """One page per replay: each run's views in turn, in the order they ran."""
    trace = payload.get("trace") or {}
    title = f"replay {trace.get('format', '')}"
    sections = []
    for number, run in enumerate(runs):
        summary = {"mode": run.mode, "target": run.target, "wall s": f"{run.wall_s:.2f}", "requests": len(run.requests)}
        if run.sessions:
            summary["sessions"] = len(run.sessions)
        if run.interrupted:
            summary["interrupted"] = "yes: only what finished is shown"
        sections.append(
            report_section(
                f"{title}: {run.mode}",
                replay_snapshots(run),
                replay_kv_samples(run),
                origin=0.0,
                summary=summary,
                kv_split=False,
                anchor=f"run{number}-p",
            )
        )
    if not sections:
        sections.append(report_section(f"{title}: no runs", [], [], origin=0.0))
    return write_report_html(path, report_page(title, sections))
