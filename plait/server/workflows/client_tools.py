"""Client-side tools: tools a REST workflow declares and its caller runs, answering through ``tool_results``.

A workflow lists them in its envelope (``client_tools``: name, JSON-schema ``parameters`` and ``returns``, an optional
``timeout_s``). Its tool nodes are checked against those schemas like calls to server tools, so a tool that is neither
a server tool nor declared is still rejected before anything runs. When such a node's inputs are bound, it waits:
the event stream announces a ``tool_call`` with the arguments, the program's KV is pinned (the program will continue
after the tool), and ``POST /v1/workflows/{id}/tool_results`` resumes it with a result or an error. With no answer
within the timeout the node fails (``tool_timeout``). A durable workflow's call that was still waiting when the
server stopped is offered again after the restart: a new ``tool_call`` event with the same ``idempotency_key``.

Each program gets its own ``ProgramTools`` (the server's tools plus its client tools, so one tenant's declarations
never reach another's programs) and its own ``ClientToolExecutor``, which hands server tools to the shared executor
(their concurrency limits span programs) and keeps the waiting calls.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio

from plait.dag import ToolSpec, accepts_value
from plait.runtime.errors import NodeError
from plait.runtime.tool_executor import ToolExecutor
from plait.runtime.tools import Tool, ToolRegistry


@dataclass(frozen=True)
class ClientTool:
    """A tool the caller runs. ``timeout_s``: how long a call waits for its result."""

    spec: ToolSpec
    timeout_s: float

    @property
    def name(self) -> str:
        return self.spec.name

    def argument_problem(self, arguments: dict[str, Any]) -> str | None:
        """Why ``arguments`` (variables substituted) do not fit the declared parameters; None when they do."""
        for name, value in arguments.items():
            schema = self.spec.properties.get(name)
            if schema is not None and not accepts_value(schema, value, root=self.spec.parameters):
                return f"argument {name!r} does not match the declared parameter schema"
        return None

    def result_problem(self, result: Any) -> str | None:
        if self.spec.returns is not None and not accepts_value(self.spec.returns, result, root=self.spec.returns):
            return f"the result does not match the tool's declared 'returns' schema {self.spec.returns}"
        return None


class ProgramTools(ToolRegistry):
    """The server's tools (live: tools registered later are seen) plus one program's client-side tools."""

    def __init__(self, shared: ToolRegistry) -> None:
        super().__init__()
        self._shared = shared
        self._client: dict[str, ClientTool] = {}

    def declare(self, tool: ClientTool) -> None:
        """Add a client tool; ``ValueError`` when its name is a server tool's or already declared differently."""
        if tool.name in self._shared:
            raise ValueError(f"'{tool.name}' is a server-side tool; a client tool needs another name")
        existing = self._client.get(tool.name)
        if existing is not None and existing != tool:
            raise ValueError(f"client tool '{tool.name}' is already declared with another signature")
        self._client[tool.name] = tool

    def withdraw(self, name: str) -> None:
        self._client.pop(name, None)

    def client_tool(self, name: str) -> ClientTool | None:
        return self._client.get(name)

    def get(self, name: str) -> Tool | None:
        client = self._client.get(name)
        return client if client is not None else self._shared.get(name)  # type: ignore[return-value]

    def __contains__(self, name: object) -> bool:
        return name in self._client or name in self._shared

    def __iter__(self) -> Iterator[Tool]:
        yield from self._shared
        yield from self._client.values()  # type: ignore[misc]

    def specs(self) -> dict[str, ToolSpec]:
        return {tool.name: tool.spec for tool in self}


@dataclass
class PendingToolCall:
    """A client tool call waiting for its result."""

    node: str
    tool: str
    arguments: dict[str, Any]
    timeout_s: float
    since: float = field(default_factory=time.time)  # unix time, for status bodies
    answer: asyncio.Future[tuple[Any, str | None]] | None = None
    # The same for every time this call is offered (after a server restart too): a client applies its effect once.
    idempotency_key: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "tool": self.tool,
            "arguments": self.arguments,
            "timeout_s": self.timeout_s,
            "waiting_since": self.since,
            "idempotency_key": self.idempotency_key,
        }


class ToolCallStateError(Exception):
    """A result posted for a node that is not waiting for one (HTTP 409)."""


class ClientToolExecutor(ToolExecutor):
    """One program's tool executor. ``on_wait(call)`` is told when a client call starts waiting (the event stream
    announces it). A client tool is a tool like any other to the planner: while it waits, the program's KV is kept
    by the planner's tool pins (a TTL chosen from that tool's observed durations), not by anything here."""

    def __init__(self, shared: ToolExecutor) -> None:
        super().__init__()
        self._shared = shared
        self.pending: dict[str, PendingToolCall] = {}
        self.answered: set[str] = set()  # nodes whose call got a result or an error (a second answer is a 409)
        self.on_wait: Callable[[PendingToolCall], None] | None = None

    async def run(
        self,
        tool: Tool,
        arguments: dict[str, Any],
        node_id: str,
        on_attempt: Callable[[int], None] | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> Any:
        if not isinstance(tool, ClientTool):
            return await self._shared.run(tool, arguments, node_id, on_attempt, idempotency_key=idempotency_key)
        if on_attempt is not None:
            on_attempt(1)
        problem = tool.argument_problem(arguments)
        if problem is not None:
            raise NodeError(node_id, "tool_arguments", f"client tool {tool.name!r}: {problem}")
        call = PendingToolCall(node_id, tool.name, arguments, tool.timeout_s, idempotency_key=idempotency_key)
        call.answer = asyncio.get_running_loop().create_future()
        self._start_waiting(call)
        try:
            with anyio.fail_after(tool.timeout_s):
                result, error = await call.answer
        except TimeoutError:
            raise NodeError(
                node_id,
                "tool_timeout",
                f"client tool {tool.name!r}: no result was posted within {tool.timeout_s:g}s",
            ) from None
        finally:
            self._stop_waiting(call)
        if error is not None:
            raise NodeError(node_id, "tool_raised", f"client tool {tool.name!r} failed: {error}")
        return result

    def answer(self, node_id: str, result: Any = None, error: str | None = None) -> None:
        """Resume a waiting call. Raises ``ToolCallStateError`` when the node is not waiting."""
        if node_id in self.answered:
            raise ToolCallStateError(f"node '{node_id}' already has a result")
        call = self.pending.get(node_id)
        if call is None or call.answer is None or call.answer.done():
            raise ToolCallStateError(f"node '{node_id}' is not waiting for a tool result")
        self.answered.add(node_id)
        call.answer.set_result((result, error))

    def _start_waiting(self, call: PendingToolCall) -> None:
        self.pending[call.node] = call
        if self.on_wait is not None:
            self.on_wait(call)

    def _stop_waiting(self, call: PendingToolCall) -> None:
        self.pending.pop(call.node, None)
