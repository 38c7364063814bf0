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

Durability (with a journal, see ``durability.py``): every event but the tokens is written to the journal as it is
logged; a node's text is written once, as one merged ``token`` event (with its first piece's id) when the node ends,
the form ``close`` gives the log too; the final event is written with the terminal state. A resumed workflow's log
starts from the journaled events and its new events get ids above every earlier id (``Journal.resume_seq``), so a
follower resuming from ``Last-Event-ID`` misses nothing. Its replayed nodes are logged only where the journal lacks
their events; a node that was running at the crash starts again: its new ``node_started`` carries
``"restarted": true`` and its text comes again from the start (the earlier pieces are superseded). A server that
drains stops its durable workflows without ending them: their streams end with a ``suspended`` event (not a final
one, and not journaled) and they resume in the next process.
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
from plait.server.sse_data import one_line_json
from plait.server.workflows.client_tools import PendingToolCall
from plait.server.workflows.views import final_event_data, jsonable, node_finished_data

if TYPE_CHECKING:
    from plait.server.workflows.registry import WorkflowEntry

FINAL_EVENTS = ("done", "failed", "cancelled")
SUSPENDED_REASON = "the server is stopping; the workflow continues when it starts again: reconnect with Last-Event-ID"


@dataclass(frozen=True)
class LoggedEvent:
    seq: int  # 1, 2, ...: the SSE id (gaps appear where tokens were merged)
    kind: str
    data: dict[str, Any]

    def sse(self) -> bytes:
        """The event as a server-sent-events message."""
        payload = one_line_json(msgspec.json.encode(jsonable(self.data)))
        return b"id: %d\nevent: %s\ndata: %s\n\n" % (self.seq, self.kind.encode(), payload)


class EventLog:
    """Append-only events of one workflow; ``follow`` replays and then waits for more until the log closes.

    ``events``: a log restored from the journal (in id order); ``next_seq``: the id of the next event appended (at
    least one above the last restored one)."""

    def __init__(self, workflow_id: str, events: list[LoggedEvent] | None = None, next_seq: int = 1) -> None:
        self.workflow_id = workflow_id
        self.events: list[LoggedEvent] = list(events or [])
        self.closed = False
        self._seq = max(next_seq - 1, self._seq_of_last())
        self._changed = asyncio.Event()

    def append(self, kind: str, data: dict[str, Any]) -> LoggedEvent | None:
        """Log an event; returns it (None once the log is closed)."""
        if self.closed:
            return None
        self._seq += 1
        event = LoggedEvent(self._seq, kind, {"workflow": self.workflow_id, **data})
        self.events.append(event)
        self._wake()
        return event

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

    def suspend(self) -> None:
        """No more events in this process, and no final one: followers stop after what they have (they reconnect to
        the next process, which continues the log from the journal)."""
        self.closed = True
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
    events emitted before are replayed, and no node has generated text yet).

    ``on_finished(final)``: called once when the program ends, with its final event, or None when ``suspended()``
    says the end is a suspension (a server draining with a journal: the workflow resumes in the next process, so
    followers get no final event; their streams end and they reconnect). ``durable``: writes an event to the journal.
    ``logged``: ``(kind, node)`` of the events a restored log already holds (a resumed workflow)."""

    def __init__(
        self,
        entry: WorkflowEntry,
        on_finished: Callable[[LoggedEvent | None], None] | None = None,
        *,
        durable: Callable[[LoggedEvent], None] | None = None,
        suspended: Callable[[], bool] | None = None,
        logged: set[tuple[str, str]] | None = None,
    ) -> None:
        self.entry = entry
        self.log = entry.log
        self._on_finished = on_finished
        self._durable = durable
        self._suspended = suspended
        self._logged = logged or set()
        self._unsettled: list[str] = []  # nodes that finished but whose output is not settled yet
        self._texts: dict[str, tuple[int, str, list[str]]] = {}  # node -> (first token id, variable, pieces)

    def attach(self) -> None:
        self.entry.tools.on_wait = self.tool_call
        self.entry.program.subscribe(self._on_event)

    def _append(self, kind: str, data: dict[str, Any]) -> LoggedEvent | None:
        event = self.log.append(kind, data)
        if event is not None and self._durable is not None and kind != "token":
            self._durable(event)
        return event

    def _on_event(self, event: ProgramEvent) -> None:
        self._flush()
        program = self.entry.program
        if event.kind == "node_started" and event.node is not None:
            if event.replayed and ("node_started", event.node) in self._logged:
                return
            node = program.workflow.nodes[event.node]
            data: dict[str, Any] = {"node": node.id, "kind": node.kind, "output": node.output}
            if isinstance(node, LLMCall):
                variable = program.workflow.variables[node.output]
                variable.on_text(lambda text, node_id=node.id, name=node.output: self._token(node_id, name, text))
            else:
                data["tool"] = node.tool
            if not event.replayed and ("node_started", node.id) in self._logged:
                data["restarted"] = True  # it was running when the server stopped: it runs again from the start
            self._append("node_started", data)
        elif event.kind == "node_finished" and event.node is not None:
            if event.replayed and ("node_finished", event.node) in self._logged:
                return
            if event.state == "cancelled" and self._suspended is not None and self._suspended():
                self._texts.pop(event.node, None)  # stopped by the suspension: it runs again in the next process
                return
            variable = program.workflow.variables[program.workflow.nodes[event.node].output]
            self._unsettled.append(event.node)
            if variable.is_settled:
                self._flush()
            else:
                variable.on_settled(lambda _variable: self._flush())
        elif event.kind == "program_finished":
            final: LoggedEvent | None = None
            if event.state == "cancelled" and self._suspended is not None and self._suspended():
                self.log.append("suspended", {"reason": SUSPENDED_REASON})  # for followers only: not journaled
                self.log.suspend()
            else:
                kind = event.state if event.state in FINAL_EVENTS else "failed"
                final = self.log.append(kind, final_event_data(self.entry))
                self.log.close()
            if self._on_finished is not None:
                self._on_finished(final)

    def _flush(self) -> None:
        program = self.entry.program
        still: list[str] = []
        for node_id in self._unsettled:
            variable = program.workflow.variables[program.workflow.nodes[node_id].output]
            if variable.is_settled:
                self._write_text(node_id)
                self._append("node_finished", node_finished_data(program, node_id))
            else:
                still.append(node_id)
        self._unsettled = still

    def _token(self, node_id: str, variable: str, text: str) -> None:
        event = self.log.append("token", {"node": node_id, "variable": variable, "text": text})
        if event is not None and self._durable is not None:
            first = self._texts.get(node_id)
            if first is None:
                self._texts[node_id] = (event.seq, variable, [text])
            else:
                first[2].append(text)

    def _write_text(self, node_id: str) -> None:
        """Journal a finished node's text as one token event (the merged form; see the module's Durability)."""
        text = self._texts.pop(node_id, None)
        if text is not None and self._durable is not None:
            seq, variable, pieces = text
            data = {"workflow": self.log.workflow_id, "node": node_id, "variable": variable, "text": "".join(pieces)}
            self._durable(LoggedEvent(seq, "token", data))

    def tool_call(self, call: PendingToolCall) -> None:
        self._flush()
        self._append("tool_call", call.to_dict())
