"""A workflow's event log and its server-sent-events form (``GET /v1/workflows/{id}/events``).

``EventRecorder`` turns what happens in a program into one ordered log: ``node_started``, ``token`` (text an LLM node
generates, as it is generated), ``tool_call`` (a client-side tool waits for its result), ``node_finished`` (with
the output's value) and a final ``done`` / ``failed`` / ``cancelled``. Every subscriber replays the log from the
start (or from ``Last-Event-ID``) and then follows it live, so a client that connects after the end still gets
everything, the final event last. When the program ends its tokens are merged (one ``token`` event per node holding
the whole text) so that finished workflows keep a short log.

Order: a node's ``node_finished`` comes after its last token and before the ``node_started`` of the nodes its output
unblocks. (The runtime emits "finished" just before binding the output; the event is logged once the output is
settled, which happens before any consumer starts.)
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from plait.dag import LLMCall
from plait.runtime.program_execution import ProgramEvent
from plait.server.workflows.client_tools import PendingToolCall
from plait.server.workflows.views import final_event_data, jsonable, node_finished_data

if TYPE_CHECKING:
    from plait.server.workflows.registry import WorkflowEntry

FINAL_EVENTS = ("done", "failed", "cancelled")


@dataclass(frozen=True)
class LoggedEvent:
    seq: int  # 1, 2, ...: the SSE id (gaps appear where tokens were merged)
    kind: str
    data: dict[str, Any]

    def sse(self) -> bytes:
        """The event as a server-sent-events message."""
        payload = msgspec.json.encode(jsonable(self.data))
        return b"id: %d\nevent: %s\ndata: %s\n\n" % (self.seq, self.kind.encode(), payload)


class EventLog:
    """Append-only events of one workflow; ``follow`` replays and then waits for more until the log closes."""

    def __init__(self, workflow_id: str) -> None:
        self.workflow_id = workflow_id
        self.events: list[LoggedEvent] = []
        self.closed = False
        self._seq = 0
        self._changed = asyncio.Event()

    def append(self, kind: str, data: dict[str, Any]) -> None:
        if self.closed:
            return
        self._seq += 1
        self.events.append(LoggedEvent(self._seq, kind, {"workflow": self.workflow_id, **data}))
        self._wake()

    def close(self) -> None:
        """No more events: merge each node's tokens into one event, wake every follower."""
        self.closed = True
        merged: list[LoggedEvent] = []
        text_event: dict[str, int] = {}  # node -> index in merged of its token event
        for event in self.events:
            if event.kind != "token":
                merged.append(event)
                continue
            node = event.data["node"]
            if node in text_event:
                first = merged[text_event[node]]
                first.data["text"] += event.data["text"]
            else:
                text_event[node] = len(merged)
                merged.append(LoggedEvent(event.seq, "token", dict(event.data)))
        self.events = merged
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def follow(self, after: int = 0, idle_s: float = 1.0) -> AsyncIterator[LoggedEvent | None]:
        """Every event with ``seq > after``, then new ones as they come, until the log is closed. Yields None after
        ``idle_s`` without news (so that the caller can check its client and send keep-alives)."""
        while True:
            changed = self._changed
            start = bisect.bisect_right(self.events, after, key=lambda event: event.seq)
            for event in self.events[start:]:
                yield event
                after = event.seq
            if self.closed and after >= self._seq_of_last():
                return
            if changed is not self._changed:
                continue  # appended while we were yielding
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(idle_s):
                    await changed.wait()
                    continue
            yield None

    def _seq_of_last(self) -> int:
        return self.events[-1].seq if self.events else 0


class EventRecorder:
    """Writes one program's events into its entry's log (attach right after the program is created or started:
    events emitted before are replayed, and no node has generated text yet)."""

    def __init__(self, entry: WorkflowEntry, on_finished: Callable[[], None] | None = None) -> None:
        self.entry = entry
        self.log = entry.log
        self._on_finished = on_finished
        self._unsettled: list[str] = []  # nodes that finished but whose output is not settled yet

    def attach(self) -> None:
        self.entry.tools.on_wait = self.tool_call
        self.entry.program.subscribe(self._on_event)

    def _on_event(self, event: ProgramEvent) -> None:
        self._flush()
        program = self.entry.program
        if event.kind == "node_started" and event.node is not None:
            node = program.workflow.nodes[event.node]
            data: dict[str, Any] = {"node": node.id, "kind": node.kind, "output": node.output}
            if isinstance(node, LLMCall):
                variable = program.workflow.variables[node.output]
                variable.on_text(lambda text, node_id=node.id, name=node.output: self._token(node_id, name, text))
            else:
                data["tool"] = node.tool
            self.log.append("node_started", data)
        elif event.kind == "node_finished" and event.node is not None:
            variable = program.workflow.variables[program.workflow.nodes[event.node].output]
            self._unsettled.append(event.node)
            if variable.is_settled:
                self._flush()
            else:
                variable.on_settled(lambda _variable: self._flush())
        elif event.kind == "program_finished":
            kind = event.state if event.state in FINAL_EVENTS else "failed"
            self.log.append(kind, final_event_data(self.entry))
            self.log.close()
            if self._on_finished is not None:
                self._on_finished()

    def _flush(self) -> None:
        program = self.entry.program
        still: list[str] = []
        for node_id in self._unsettled:
            variable = program.workflow.variables[program.workflow.nodes[node_id].output]
            if variable.is_settled:
                self.log.append("node_finished", node_finished_data(program, node_id))
            else:
                still.append(node_id)
        self._unsettled = still

    def _token(self, node_id: str, variable: str, text: str) -> None:
        self.log.append("token", {"node": node_id, "variable": variable, "text": text})

    def tool_call(self, call: PendingToolCall) -> None:
        self._flush()
        self.log.append("tool_call", call.to_dict())
