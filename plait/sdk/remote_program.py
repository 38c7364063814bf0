"""A Python program whose body runs here and whose calls run on a plait server (``plait.Client.run``).

``RemoteProgram`` stands in for the runtime's ``ProgramExecution`` inside the ``Program`` handle, so programs are the
same code whichever way they run. The server holds the program as one *open* workflow:

- ``p.gen`` / ``p.select`` / ``p.tool`` check the node here (the same validation, against the server's tools and the
  local ones) and return its output variable at once; nodes added before the body next waits are sent together;
- the server runs each node as soon as its inputs are bound, so dependent calls start there without a round trip,
  and every call carries the program's id (one program for scheduling and the KV cache);
- the workflow's event stream brings the generated text (``variable.stream()``), the values (which the body awaits
  to branch and loop) and the calls of local Python tools, which run here and are answered as client-side tools;
- when the body returns, the workflow is closed (as failed if the program failed).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from plait.dag import Node, ToolCall, ToolSpec, Workflow, node_spec
from plait.runtime import NodeError, Tool
from plait.sdk.server_events import ServerEvent
from plait.semantic_vars import SemanticVariable, VarState

if TYPE_CHECKING:
    from plait.sdk.client import Client


class ToolSpecs:
    """The tools a remote program may call, by name: the server's, then the client's local Python tools."""

    def __init__(self, server: Mapping[str, ToolSpec], local: Any) -> None:
        self._server = server
        self._local = local  # a ToolRegistry (tools registered later are seen)

    def get(self, name: str, default: Any = None) -> ToolSpec | None:
        if name in self._server:
            return self._server[name]
        tool = self._local.get(name)
        return tool.spec if tool is not None else default

    def __contains__(self, name: object) -> bool:
        return name in self._server or name in self._local

    def __iter__(self) -> Iterator[str]:
        yield from self._server
        yield from (tool.name for tool in self._local if tool.name not in self._server)


class RemoteProgram:
    def __init__(self, client: Client, workflow_id: str, name: str, server_tools: Mapping[str, ToolSpec]) -> None:
        self.client = client
        self.workflow_id = workflow_id
        self.server_tools = server_tools
        self.workflow = Workflow(name, tools=ToolSpecs(server_tools, client.tools))
        self.final: ServerEvent | None = None
        self._outbox: list[Node] = []
        self._sent_inputs: set[str] = set()
        self._declared: set[str] = set()
        self._send_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._listener: asyncio.Task[None] | None = None

    # ---- what Program calls ----------------------------------------------------------------------------------------

    @property
    def program_id(self) -> str:
        return self.workflow_id

    def add_node(self, node: Node) -> SemanticVariable:
        """Check ``node`` here (raises ``WorkflowError`` like the runtime) and queue it for the server."""
        output = self.workflow.add_node(node)
        self._outbox.append(node)
        if len(self._outbox) == 1:
            self._spawn(self._send())
        return output

    def register_tool(self, tool: Tool | Callable[..., Any]) -> Tool:
        return self.client.register_tool(tool)

    # ---- lifetime --------------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._listener = asyncio.get_running_loop().create_task(self._listen(), name=f"events-{self.workflow_id}")

    async def finish(self, error: str | None = None) -> None:
        """Send what is queued, close the workflow (failed with ``error`` when given) and wait for its end."""
        try:
            await self._send()
            await self.client.close_workflow(self.workflow_id, error=error)
            if self._listener is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._listener), timeout=30.0)
        finally:
            await self._stop()

    async def cancel(self) -> None:
        try:
            await self.client.cancel(self.workflow_id)
        finally:
            await self._stop()

    async def _stop(self) -> None:
        tasks = [task for task in (*self._tasks, self._listener) if task is not None and not task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._fail_unsettled("the program ended first")

    @property
    def cancelled(self) -> bool:
        """The server cancelled the workflow (DELETE, a deadline, shutdown)."""
        return self.final is not None and self.final.kind == "cancelled"

    def unhandled_failure(self) -> BaseException | None:
        """A node failure the program never looked at (it fails the program, as in the runtime)."""
        for variable in self.workflow.variables.values():
            if variable.state is VarState.FAILED and not variable.observed and variable.producer is not None:
                return variable.error
        return None

    # ---- sending nodes ---------------------------------------------------------------------------------------------

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self) -> None:
        async with self._send_lock:  # batches go out in the order their nodes were added
            nodes, self._outbox = self._outbox, []
            if not nodes:
                return
            try:
                body = self._batch(nodes)
                await self.client.add_nodes(self.workflow_id, **body)
            except Exception as error:  # the server refused or could not be reached: those calls have no value
                for node in nodes:
                    self._variable_of(node.id).fail(f"node {node.id!r} could not be sent to the server: {error}")
                return
            self._sent_inputs.update(body["inputs"])  # a refused batch added nothing (batches are all or nothing)
            self._declared.update(tool["name"] for tool in body["client_tools"])

    def _batch(self, nodes: list[Node]) -> dict[str, Any]:
        inputs: dict[str, Any] = {}
        tools: list[dict[str, Any]] = []
        for node in nodes:
            for name in node.input_variables():
                variable = self.workflow.variables[name]
                if variable.producer is None and name not in self._sent_inputs:
                    inputs[name] = msgspec.to_builtins(variable.value)
            if not isinstance(node, ToolCall) or node.tool in self.server_tools or node.tool in self._declared:
                continue
            if all(tool["name"] != node.tool for tool in tools):  # a local tool the server does not know yet
                tools.append(self.client.client_tool_decl(node.tool))
        specs = [msgspec.to_builtins(node_spec(node)) for node in nodes]
        return {"nodes": specs, "inputs": inputs, "client_tools": tools}

    # ---- receiving events ------------------------------------------------------------------------------------------

    async def _listen(self) -> None:
        try:
            async for event in self.client.events(self.workflow_id):
                self._on_event(event)
                if event.is_final:
                    self.final = event
                    break
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the stream broke: nothing more will arrive, so nothing may wait forever
            self._fail_unsettled(f"lost the server's event stream: {error}")
            return
        reason = (self.final.data.get("error") if self.final else None) or "the program ended first"
        self._fail_unsettled(reason)

    def _on_event(self, event: ServerEvent) -> None:
        data = event.data
        node_id = data.get("node")
        if node_id not in self.workflow.nodes:
            return
        variable = self._variable_of(node_id)
        if event.kind == "token":
            variable.publish(data.get("text", ""))
        elif event.kind == "node_finished" and not variable.is_settled:
            if "value" in data:
                variable.metadata.update(data.get("metadata") or {})
                variable.bind(data["value"])
            else:
                variable.fail(data.get("error") or f"node {node_id!r} ended {data.get('state')}")
        elif event.kind == "tool_call" and data.get("tool") not in self.server_tools:
            self._spawn(self.client.answer_tool_call(self.workflow_id, data))

    def _variable_of(self, node_id: str) -> SemanticVariable:
        return self.workflow.variables[self.workflow.nodes[node_id].output]

    def _fail_unsettled(self, reason: str) -> None:
        for variable in self.workflow.variables.values():
            if variable.producer is not None and not variable.is_settled:
                variable.fail(reason)


def tool_failure_text(error: BaseException) -> str:
    """What a client-side tool's failure tells the server (the runtime's own message for tool errors)."""
    if isinstance(error, NodeError):
        return error.message
    return f"{type(error).__name__}: {error}"
