"""A program as the dashboard draws it: its nodes with their states, its edges and its timeline events, as plain data.

Live pages build one from a running ``ProgramExecution`` and the planner's ``Timeline`` (``snapshot_of``), or from an
OpenAI-API program (``conversation_snapshot``); offline
reports build them from a timeline alone (``snapshots_from_timeline``: nodes are those the events name, edges are not
known) or from any other record of spans (the replay report). Both are drawn by the same functions
(``graph_svg``, ``timeline_svg``).

Times are ``time.monotonic()`` seconds. The planner records a node's queued/prefill/decode/tool spans when the node
ends, so a live snapshot also carries ``live``: one open span per node still running, drawn up to ``now``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from plait.runtime.program_execution import ProgramExecution
from plait.runtime.timeline import Timeline, TimelineEvent, TimelineKind
from plait.server.openai.programs import ConversationProgram

MAX_NODES = 400  # nodes drawn per program (a growing program can add thousands); the rest are counted
MAX_EVENTS = 4000  # timeline events drawn per program; the rest are counted


@dataclass(frozen=True)
class NodeSnapshot:
    node_id: str
    kind: str  # "llm" or "tool"
    state: str  # a NodeState value, or "waiting_for_tool"
    detail: str = ""  # one line shown on hover (timings, tokens, error)


@dataclass(frozen=True)
class LiveSpan:
    """A node still at work since ``start`` (no timeline span yet)."""

    node_id: str
    label: str
    start: float


@dataclass(frozen=True)
class ProgramSnapshot:
    program_id: str
    name: str
    state: str  # a ProgramState value
    created_at: float
    finished_at: float | None
    nodes: tuple[NodeSnapshot, ...] = ()
    edges: tuple[tuple[str, str], ...] = ()
    events: tuple[TimelineEvent, ...] = ()
    live: tuple[LiveSpan, ...] = ()
    omitted_nodes: int = 0
    omitted_events: int = 0
    edges_known: bool = True  # False: built from a timeline alone, which records no data flow
    meta: Mapping[str, Any] = field(default_factory=dict)

    def end(self, now: float) -> float:
        """Where the program's timeline ends: its finish, or ``now`` while it runs."""
        latest = max((e.end if e.end is not None else e.start for e in self.events), default=self.created_at)
        return max(self.finished_at if self.finished_at is not None else now, latest)


def _detail(record: Any) -> str:
    parts = []
    if record.run_s is not None:
        parts.append(f"ran {record.run_s:.2f} s")
    if record.kind == "llm" and (record.prompt_tokens or record.completion_tokens):
        cached = f" ({record.cached_tokens} cached)" if record.cached_tokens else ""
        parts.append(f"tokens {record.prompt_tokens} in{cached} / {record.completion_tokens} out")
    if record.attempts > 1:
        parts.append(f"attempts {record.attempts}")
    if record.error:
        parts.append(f"error: {record.error}")
    return ", ".join(parts)


def snapshot_of(
    program: ProgramExecution,
    timeline: Timeline | None,
    *,
    states: Mapping[str, str] | None = None,
    meta: Mapping[str, Any] | None = None,
) -> ProgramSnapshot:
    """``program`` as it is now; ``states`` overrides node states (the server's ``waiting_for_tool``). Call on the
    event loop the program runs in (its records change there)."""
    workflow = program.workflow
    ids = list(workflow.nodes)
    shown = ids[:MAX_NODES]
    states = states or {}
    nodes = []
    live = []
    for node_id in shown:
        record = program.nodes.get(node_id)
        kind = workflow.nodes[node_id].kind
        state = states.get(node_id) or (record.state.value if record is not None else "pending")
        nodes.append(NodeSnapshot(node_id, kind, state, _detail(record) if record is not None else ""))
        if record is not None and record.started_at is not None and not record.state.finished:
            live.append(LiveSpan(node_id, "tool" if kind == "tool" else "llm call", record.started_at))
    kept = set(shown)
    edges = tuple((a, b) for a, b in workflow.graph.edges if a in kept and b in kept)
    events = timeline.events(program.program_id) if timeline is not None else []
    record = program.record
    return ProgramSnapshot(
        program_id=program.program_id,
        name=record.name,
        state=record.state.value,
        created_at=record.created_at,
        finished_at=record.finished_at,
        nodes=tuple(nodes),
        edges=edges,
        events=tuple(events[:MAX_EVENTS]),
        live=tuple(live),
        omitted_nodes=len(ids) - len(shown),
        omitted_events=max(0, len(events) - MAX_EVENTS),
        meta=dict(meta or {}),
    )


def conversation_snapshot(program: ConversationProgram, timeline: Timeline | None) -> ProgramSnapshot:
    """An OpenAI-API program as it is now: its calls and the gaps between them (the placeholder of a next call that
    has not come is left out). Call on the server's event loop."""
    workflow = program.workflow
    ids = [node_id for node_id in workflow.nodes if node_id in program.records][:MAX_NODES]
    nodes, live = [], []
    for node_id in ids:
        record = program.records[node_id]
        state = "waiting_for_tool" if record.kind == "tool" and not record.state.finished else record.state.value
        nodes.append(NodeSnapshot(node_id, record.kind, state, _detail(record)))
        if record.started_at is not None and not record.state.finished:
            live.append(LiveSpan(node_id, "tool" if record.kind == "tool" else "llm call", record.started_at))
    kept = set(ids)
    edges = tuple((a, b) for a, b in workflow.graph.edges if a in kept and b in kept)
    events = timeline.events(program.planner_id) if timeline is not None else []
    ended = program.state.value != "open"
    return ProgramSnapshot(
        program_id=program.program_id,
        name=f"{program.origin.value} program",
        state="done" if ended else "running",
        created_at=program.started_at,
        finished_at=program.last_active if ended else None,
        nodes=tuple(nodes),
        edges=edges,
        events=tuple(events[:MAX_EVENTS]),
        live=tuple(live),
        omitted_nodes=max(0, len(program.records) - len(ids)),
        omitted_events=max(0, len(events) - MAX_EVENTS),
    )


def snapshots_from_events(events: Iterable[TimelineEvent]) -> list[ProgramSnapshot]:
    """One snapshot per program the events name, in order of first event: its lifetime from its ``program`` span
    (else from its first to its last event), its nodes in order of first appearance (``tool`` when a tool span names
    them), node states ``done`` unless the program ended otherwise. No edges: a timeline records no data flow."""
    by_program: dict[str, list[TimelineEvent]] = {}
    for event in sorted(events, key=lambda e: e.start):
        by_program.setdefault(event.program_id, []).append(event)
    snapshots = []
    for program_id, found in by_program.items():
        lifetime = next((e for e in found if e.kind is TimelineKind.PROGRAM), None)
        state = str(lifetime.args.get("state", "done")) if lifetime is not None else "done"
        start = lifetime.start if lifetime is not None else found[0].start
        end = lifetime.end if lifetime is not None else max(e.end if e.end is not None else e.start for e in found)
        kinds: dict[str, str] = {}
        for event in found:
            if event.node is not None:
                if event.kind is TimelineKind.TOOL:
                    kinds[event.node] = "tool"
                else:
                    kinds.setdefault(event.node, "llm")
        node_state = "done" if state == "done" else state
        node_ids = list(kinds)[:MAX_NODES]
        snapshots.append(
            ProgramSnapshot(
                program_id=program_id,
                name=str(lifetime.args.get("name", program_id)) if lifetime is not None else program_id,
                state=state,
                created_at=start,
                finished_at=end,
                nodes=tuple(NodeSnapshot(node_id, kinds[node_id], node_state) for node_id in node_ids),
                events=tuple(found[:MAX_EVENTS]),
                omitted_nodes=len(kinds) - len(node_ids),
                omitted_events=max(0, len(found) - MAX_EVENTS),
                edges_known=False,
            )
        )
    return snapshots


def program_trace(timeline: Timeline, program_id: str) -> dict[str, Any]:
    """The Chrome trace (``Timeline.to_chrome_trace``) of one program's recorded events only."""
    own = Timeline(max_events=timeline.max_events)
    for event in timeline.events(program_id):
        if event.end is None:
            own.instant(event.program_id, event.kind, event.start, node=event.node, args=event.args)
        else:
            own.span(event.program_id, event.kind, event.start, event.end, node=event.node, args=event.args)
    return own.to_chrome_trace()
