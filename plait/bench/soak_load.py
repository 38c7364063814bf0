"""The mixed load of ``plait bench soak``: a few clients, each running one operation after another until the time is
up, every HTTP status recorded.

Operations (``Kind``), taken in turn from ``SCHEDULE`` so that every kind runs within the first ``len(SCHEDULE)``
operations and in fixed proportions after that:

- ``chat``: a chat completion, whole body; 200 with text and usage.
- ``chat_stream``: a streamed chat completion read to ``[DONE]``; 200 with content and a usage chunk.
- ``chat_disconnect``: a streamed chat with a long ``max_tokens``, closed after its first content chunk (the server
  must abort the engine request and free its KV).
- ``workflow``: REST workflow LLM -> ``soak_echo`` tool -> LLM, followed through its events; ends ``done``.
- ``workflow_cancel``: LLM (long) -> ``soak_sleep`` tool -> LLM, cancelled with ``DELETE`` while it decodes and,
  every other time, while its tool runs (outcomes ``cancelled mid-decode``, ``cancelled mid-tool``); the DELETE
  answers 200 and the event stream ends ``cancelled`` (``done`` counts too: a cancel that arrives after the end
  leaves the workflow as it is).
- ``tool_failure``: LLM -> ``soak_fail`` (raises) -> LLM; ends ``failed`` with the tool's error, never a 5xx.
- ``events_disconnect``: a ``workflow`` whose event stream is closed at its first token; the workflow goes on
  and ends ``done`` (polled with ``GET``).

An operation whose outcome differs from the above is *unexpected* (its error says how); a 5xx is recorded with its
body whatever the operation expected.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from plait.bench.serve_load_clients import TOPICS, _sse_lines, chat_body

BODY_LIMIT = 4000  # characters of a 5xx body kept in the report
FINAL_EVENTS = ("done", "failed", "cancelled")  # a workflow's event stream ends with one of these


class Kind(StrEnum):
    CHAT = "chat"
    CHAT_STREAM = "chat_stream"
    CHAT_DISCONNECT = "chat_disconnect"
    WORKFLOW = "workflow"
    WORKFLOW_CANCEL = "workflow_cancel"
    TOOL_FAILURE = "tool_failure"
    EVENTS_DISCONNECT = "events_disconnect"


# The order operations are issued in (operation n runs SCHEDULE[n % len]): chats and workflows alternate, and each
# kind of failure path comes once or twice per cycle.
SCHEDULE: tuple[Kind, ...] = (
    Kind.CHAT_STREAM,
    Kind.WORKFLOW,
    Kind.CHAT,
    Kind.WORKFLOW_CANCEL,
    Kind.CHAT_DISCONNECT,
    Kind.TOOL_FAILURE,
    Kind.CHAT_STREAM,
    Kind.EVENTS_DISCONNECT,
    Kind.WORKFLOW,
    Kind.CHAT,
)


@dataclass
class Operation:
    """One operation's end: ``ok`` when its outcome is the expected one (``outcome`` names it)."""

    kind: Kind
    index: int
    start_s: float  # since the load started
    latency_s: float
    ok: bool
    outcome: str = ""  # done, cancelled, failed, disconnected, completed, ...
    error: str = ""


@dataclass
class ServerError:
    """A 5xx answer, with its body."""

    kind: str
    method: str
    path: str
    status: int
    t_s: float
    body: str


@dataclass
class HttpLog:
    """Every HTTP status the soak received, per kind; each 5xx with its body."""

    started: float  # time.monotonic() of the load's start
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    server_errors: list[ServerError] = field(default_factory=list)

    def record(self, kind: str, method: str, path: str, status: int, body: str = "") -> None:
        self.statuses[(kind, status)] += 1
        if status >= 500:
            t_s = time.monotonic() - self.started
            self.server_errors.append(ServerError(kind, method, path, status, t_s, body[:BODY_LIMIT]))

    def by_status(self) -> dict[str, int]:
        totals: Counter[int] = Counter()
        for (_kind, status), count in self.statuses.items():
            totals[status] += count
        return {str(status): totals[status] for status in sorted(totals)}

    def by_kind(self) -> dict[str, dict[str, int]]:
        table: dict[str, dict[str, int]] = {}
        for (kind, status), count in sorted(self.statuses.items()):
            table.setdefault(kind, {})[str(status)] = count
        return table


class UnexpectedOutcome(Exception):
    """An operation ended other than its kind expects (the message says how)."""


@dataclass(frozen=True)
class LoadSettings:
    max_tokens: int = 16  # max_tokens of chats and of the short LLM nodes
    long_tokens: int = 128  # max_tokens of the calls that are cancelled or disconnected mid-way
    tool_sleep_s: float = 2.0  # how long the cancelled workflow's tool sleeps
    operation_timeout_s: float = 300.0  # an operation still running after this is unexpected (and abandoned)


class SoakClient:
    """Runs one operation of a given kind against the server behind ``client`` (an ``httpx.AsyncClient`` with a
    base URL and a per-request timeout), recording every status into ``http``."""

    def __init__(self, client: Any, http: HttpLog, settings: LoadSettings) -> None:
        self.client = client
        self.http = http
        self.settings = settings
        self._cancels = itertools.count()  # workflow_cancel operations so far: even ones cancel mid-decode
        self._operations = {
            Kind.CHAT: self._chat,
            Kind.CHAT_STREAM: self._chat_stream,
            Kind.CHAT_DISCONNECT: self._chat_disconnect,
            Kind.WORKFLOW: self._workflow,
            Kind.WORKFLOW_CANCEL: self._workflow_cancel,
            Kind.TOOL_FAILURE: self._tool_failure,
            Kind.EVENTS_DISCONNECT: self._events_disconnect,
        }

    async def run(self, kind: Kind, index: int) -> Operation:
        """Operation number ``index`` of ``kind``; never raises (failures are an unexpected ``Operation``)."""
        start = time.monotonic()
        operation = Operation(kind, index, start - self.http.started, 0.0, ok=False)
        try:
            operation.outcome = await asyncio.wait_for(self._operations[kind](index), self.settings.operation_timeout_s)
            operation.ok = True
        except UnexpectedOutcome as error:
            operation.error = str(error)
        except TimeoutError:
            operation.error = f"timed out after {self.settings.operation_timeout_s:g} s"
        except Exception as error:  # a transport failure is an unexpected outcome, not a crashed soak
            operation.error = f"{type(error).__name__}: {error}"
        operation.latency_s = time.monotonic() - start
        return operation

    # HTTP, recorded

    async def _request(self, kind: Kind, method: str, path: str, **kwargs: Any) -> Any:
        response = await self.client.request(method, path, **kwargs)
        self.http.record(kind, method, path, response.status_code, response.text if response.status_code >= 500 else "")
        return response

    @contextlib.asynccontextmanager
    async def _stream(self, kind: Kind, method: str, path: str, **kwargs: Any) -> AsyncIterator[Any]:
        """A streamed response (closed on exit, also mid-body: that is a client disconnect)."""
        async with self.client.stream(method, path, **kwargs) as response:
            body = ""
            if response.status_code >= 400:
                body = (await response.aread()).decode(errors="replace")
            self.http.record(kind, method, path, response.status_code, body)
            if response.status_code >= 400:
                raise UnexpectedOutcome(f"{method} {path}: HTTP {response.status_code}: {body[:300]}")
            yield response

    @contextlib.asynccontextmanager
    async def _events(self, kind: Kind, workflow_id: str) -> AsyncIterator[AsyncIterator[tuple[str, dict]]]:
        """The workflow's events as ``(event, data)``; leaving the block closes the stream."""
        async with (
            self._stream(kind, "GET", f"/v1/workflows/{workflow_id}/events") as response,
            contextlib.aclosing(_parse_events(response)) as events,
        ):
            yield events

    # Operations: each returns its outcome or raises UnexpectedOutcome

    async def _chat(self, index: int) -> str:
        body = chat_body(index, self.settings.max_tokens)
        body["stream"] = False
        body.pop("stream_options", None)
        response = await self._request(Kind.CHAT, "POST", "/v1/chat/completions", json=body)
        _expect_status(response, 200)
        data = response.json()
        content = data["choices"][0]["message"].get("content")
        if not isinstance(content, str) or int(data["usage"]["completion_tokens"]) < 1:
            raise UnexpectedOutcome(f"no text or no tokens: {json.dumps(data)[:300]}")
        return "completed"

    async def _chat_stream(self, index: int) -> str:
        return await self._read_chat(Kind.CHAT_STREAM, chat_body(index, self.settings.max_tokens), disconnect=False)

    async def _chat_disconnect(self, index: int) -> str:
        return await self._read_chat(Kind.CHAT_DISCONNECT, chat_body(index, self.settings.long_tokens), disconnect=True)

    async def _read_chat(self, kind: Kind, body: dict[str, Any], *, disconnect: bool) -> str:
        """Read a streamed chat to ``[DONE]``, or (``disconnect``) only to its first content chunk."""
        contents = 0
        usage_tokens = 0
        async with self._stream(kind, "POST", "/v1/chat/completions", json=body) as response:
            async for name, value in _sse_lines(response):
                if name != "data":
                    continue
                if value == "[DONE]":
                    break
                chunk = json.loads(value)
                if "error" in chunk:
                    raise UnexpectedOutcome(f"error chunk in a 200 stream: {value[:300]}")
                contents += sum(1 for c in chunk.get("choices") or [] if (c.get("delta") or {}).get("content"))
                if chunk.get("usage"):
                    usage_tokens = int(chunk["usage"]["completion_tokens"])
                if disconnect and contents:
                    return "disconnected"  # leaving the block closes the connection mid-stream
            else:
                raise UnexpectedOutcome(f"stream ended without [DONE] after {contents} content chunks")
        if usage_tokens < 1:
            raise UnexpectedOutcome("no usage chunk, or no tokens")
        return "completed"

    async def _submit(self, kind: Kind, nodes: list[dict[str, Any]], index: int) -> str:
        body = {"workflow": {"name": f"soak-{kind}-{index}", "inputs": _inputs(index), "nodes": nodes}}
        response = await self._request(kind, "POST", "/v1/workflows", json=body)
        _expect_status(response, 201)
        return str(response.json()["id"])

    async def _status(self, kind: Kind, workflow_id: str) -> dict[str, Any]:
        response = await self._request(kind, "GET", f"/v1/workflows/{workflow_id}")
        _expect_status(response, 200)
        return dict(response.json())

    async def _follow(self, kind: Kind, workflow_id: str) -> str:
        """Read the workflow's events to its final one; its name."""
        async with self._events(kind, workflow_id) as events:
            async for name, _data in events:
                if name in FINAL_EVENTS:
                    return name
        raise UnexpectedOutcome("the event stream ended without a final event")

    async def _workflow(self, index: int) -> str:
        workflow_id = await self._submit(Kind.WORKFLOW, self._nodes("soak_echo", self.settings.max_tokens), index)
        final = await self._follow(Kind.WORKFLOW, workflow_id)
        return await self._expect_state(Kind.WORKFLOW, workflow_id, final, {"done"})

    async def _tool_failure(self, index: int) -> str:
        workflow_id = await self._submit(Kind.TOOL_FAILURE, self._nodes("soak_fail", self.settings.max_tokens), index)
        final = await self._follow(Kind.TOOL_FAILURE, workflow_id)
        outcome = await self._expect_state(Kind.TOOL_FAILURE, workflow_id, final, {"failed"})
        error = (await self._status(Kind.TOOL_FAILURE, workflow_id)).get("error") or ""
        if "soak_fail" not in error:
            raise UnexpectedOutcome(f"failed without naming the tool: {error[:300]}")
        return outcome

    async def _workflow_cancel(self, index: int) -> str:
        """Cancel mid-decode (at the draft's first token) or, every other time this kind runs, mid-tool (when the tool
        node starts)."""
        kind = Kind.WORKFLOW_CANCEL
        nodes = self._nodes("soak_sleep", self.settings.long_tokens)
        workflow_id = await self._submit(kind, nodes, index)
        mid_decode = next(self._cancels) % 2 == 0
        trigger = ("token", "draft") if mid_decode else ("node_started", "act")
        cancelled_state = ""
        async with self._events(kind, workflow_id) as events:
            async for name, data in events:
                if not cancelled_state and (name, data.get("node")) == trigger:
                    response = await self._request(kind, "DELETE", f"/v1/workflows/{workflow_id}")
                    _expect_status(response, 200)
                    cancelled_state = str(response.json().get("state"))
                    if cancelled_state not in ("cancelled", "done"):
                        raise UnexpectedOutcome(f"DELETE answered state {cancelled_state!r}")
                if name in FINAL_EVENTS:
                    state = await self._expect_state(kind, workflow_id, name, {"cancelled", "done"})
                    if state == "cancelled":
                        return "cancelled mid-decode" if mid_decode else "cancelled mid-tool"
                    return state
        raise UnexpectedOutcome("the event stream ended without a final event")

    async def _events_disconnect(self, index: int) -> str:
        kind = Kind.EVENTS_DISCONNECT
        workflow_id = await self._submit(kind, self._nodes("soak_echo", self.settings.max_tokens), index)
        async with self._events(kind, workflow_id) as events:
            async for name, _data in events:
                if name in FINAL_EVENTS:
                    break
                if name == "token":
                    break  # closes the stream mid-way; the workflow goes on without a listener
        deadline = time.monotonic() + self.settings.operation_timeout_s
        while time.monotonic() < deadline:
            state = (await self._status(kind, workflow_id)).get("state")
            if state != "running":
                return await self._expect_state(kind, workflow_id, str(state), {"done"})
            await asyncio.sleep(0.2)
        raise UnexpectedOutcome("still running after its events were dropped")

    async def _expect_state(self, kind: Kind, workflow_id: str, final: str, expected: set[str]) -> str:
        """The final event and ``GET``'s state agree and are one of ``expected``; the state."""
        status = await self._status(kind, workflow_id)
        state = status.get("state")
        if final != state or state not in expected:
            raise UnexpectedOutcome(
                f"workflow {workflow_id}: final event {final!r}, state {state!r} (expected {sorted(expected)}): "
                f"{status.get('error')}"
            )
        return str(state)

    def _nodes(self, tool: str, draft_tokens: int) -> list[dict[str, Any]]:
        """LLM ``draft`` -> server tool ``tool`` on the draft -> LLM ``summary`` of the tool's result."""
        args: dict[str, Any] = {"text": {"$var": "draft"}}
        if tool == "soak_sleep":
            args["seconds"] = self.settings.tool_sleep_s
        return [
            {
                "kind": "llm",
                "id": "draft",
                "prompt": "Write one short sentence about {{topic}}:",
                "output": "draft",
                "max_tokens": draft_tokens,
            },
            {"kind": "tool", "id": "act", "tool": tool, "args": args, "output": "observation"},
            {
                "kind": "llm",
                "id": "summary",
                "prompt": "Summarize in three words: {{observation}}\nSummary:",
                "output": "summary",
                "max_tokens": self.settings.max_tokens,
            },
        ]


async def run_load(
    soak: SoakClient,
    *,
    clients: int,
    duration_s: float,
    should_stop: Callable[[], bool] = lambda: False,
    on_operation: Callable[[Operation], None] | None = None,
) -> list[Operation]:
    """``clients`` concurrent loops, each starting operations (in ``SCHEDULE`` order, shared) until ``duration_s``
    after ``soak.http.started`` and at least one whole ``SCHEDULE`` has started (every kind runs, however slow the
    server), or until ``should_stop()``; returns once the last one has ended."""
    deadline = soak.http.started + duration_s
    numbers = itertools.count()
    started = 0
    operations: list[Operation] = []

    async def loop() -> None:
        nonlocal started
        while (time.monotonic() < deadline or started < len(SCHEDULE)) and not should_stop():
            index = next(numbers)
            started += 1
            operation = await soak.run(SCHEDULE[index % len(SCHEDULE)], index)
            operations.append(operation)
            if on_operation is not None:
                on_operation(operation)

    await asyncio.gather(*(loop() for _ in range(clients)))
    return sorted(operations, key=lambda o: o.index)


def _inputs(index: int) -> dict[str, str]:
    return {"topic": TOPICS[index % len(TOPICS)]}


def _expect_status(response: Any, status: int) -> None:
    if response.status_code != status:
        raise UnexpectedOutcome(
            f"{response.request.method} {response.request.url.path}: HTTP {response.status_code} "
            f"(expected {status}): {response.text[:300]}"
        )


async def _parse_events(response: Any) -> AsyncIterator[tuple[str, dict]]:
    """``(event, data)`` per server-sent event of a workflow's stream."""
    name = ""
    data: list[str] = []
    async for key, value in _sse_lines(response):
        if key == "event":
            name = value
        elif key == "data":
            data.append(value)
        elif key == "" and name:
            yield name, (json.loads("\n".join(data)) if data else {})
            name, data = "", []
