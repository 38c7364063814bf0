"""One running program: starts each node as soon as its inputs are bound, binds outputs, applies the failure policy.

Invariants:
- a node runs at most once, and only after every input variable is settled;
- every output variable is settled exactly once (bound, or failed with the reason) by the time the program ends;
- when ``wait()`` returns, none of the program's tasks is left running and its engine requests have been aborted.

Failure policy. ``fail_fast`` (JSON workflows): a node that fails without a fallback fails the whole program at
once, cancelling the rest. Otherwise (Python programs) a failure fails the node's variable; nodes that consume it
are skipped; the program sees the error when it awaits the variable and may handle it with ``try``; a failure no
one looked at fails the program when it returns.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from plait.dag import LLMCall, Node, OnError, ToolCall, Workflow, substitute
from plait.engine import Engine
from plait.runtime.errors import NodeError, ProgramCancelledError, ProgramFailedError
from plait.runtime.llm_runner import run_llm_call
from plait.runtime.planning import Planner
from plait.runtime.request_options import RequestOptions
from plait.runtime.states import NodeRecord, NodeState, ProgramRecord, ProgramState
from plait.runtime.tool_executor import ToolExecutor
from plait.runtime.tools import ToolRegistry
from plait.semantic_vars import Generation, SemanticVariable, VarState


@dataclass
class ExecutionServices:
    """What programs share: the engine, the tools and their executor, and the planner (None: plain requests)."""

    engine: Engine
    tools: ToolRegistry
    tool_executor: ToolExecutor = field(default_factory=ToolExecutor)
    planner: Planner | None = None


@dataclass(frozen=True)
class ProgramEvent:
    """Something that happened in a program: ``node_started``, ``node_finished``, ``program_finished``."""

    kind: str
    program_id: str
    node: str | None = None
    state: str | None = None
    error: str | None = None
    at: float = field(default_factory=time.monotonic)


class ProgramExecution:
    """A program's live state. Create through ``Executor``; runs in the event loop it was started in."""

    def __init__(
        self,
        services: ExecutionServices,
        workflow: Workflow,
        program_id: str,
        *,
        fail_fast: bool,
        options: RequestOptions | None = None,
    ) -> None:
        self.services = services
        self.workflow = workflow
        self.fail_fast = fail_fast
        self.options = options or RequestOptions(program_id)
        self.record = ProgramRecord(program_id, workflow.name)
        self.nodes: dict[str, NodeRecord] = {}
        self.result: Any = None
        self.error: BaseException | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._driver: asyncio.Task[Any] | None = None
        self._body: Coroutine[Any, Any, Any] | None = None
        self._done = asyncio.Event()
        self._listeners: list[Callable[[ProgramEvent], None]] = []
        self.events: list[ProgramEvent] = []  # every event so far, in order
        self.planner = services.planner
        if self.planner is not None:
            priority = self.options.priority
            user_priority = float(priority[0] if isinstance(priority, tuple) else priority)
            self.planner.program_started(program_id, workflow, user_priority=user_priority)

    @property
    def program_id(self) -> str:
        return self.record.program_id

    @property
    def state(self) -> ProgramState:
        return self.record.state

    def subscribe(self, listener: Callable[[ProgramEvent], None]) -> None:
        """Call ``listener`` with every event: those already emitted first (a whole workflow starts its ready nodes
        before its handle is returned), then each new one as it happens."""
        for event in list(self.events):
            listener(event)
        self._listeners.append(listener)

    def _emit(self, kind: str, node: str | None = None, state: str | None = None, error: str | None = None) -> None:
        event = ProgramEvent(kind, self.program_id, node, state, error)
        self.events.append(event)
        for listener in list(self._listeners):
            listener(event)

    # ---- starting work ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start every node whose inputs are bound (a whole workflow); the rest start as their inputs arrive."""
        for node in list(self.workflow.nodes.values()):
            self._track(node)
        self._check_complete()

    def drive(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        """Run a Python program's body: the program ends when it returns (its value is the result)."""
        self._body = coroutine
        self._driver = asyncio.get_running_loop().create_task(self._drive(coroutine), name=f"program-{self.program_id}")

    def add_node(self, node: Node) -> SemanticVariable:
        """Add a node to the running program (a Python program growing its graph)."""
        if self.state.finished:
            raise (
                ProgramCancelledError(self.program_id)
                if self.state is ProgramState.CANCELLED
                else RuntimeError(f"program {self.program_id!r} has already finished")
            )
        output = self.workflow.add_node(node)
        self._track(node)
        return output

    def _track(self, node: Node) -> None:
        self.nodes[node.id] = NodeRecord(node.id, node.kind)
        inputs = self.workflow.inputs_of(node.id)
        for variable in inputs:
            if not variable.is_settled:
                variable.on_settled(lambda _variable, node_id=node.id: self._maybe_start(node_id))
        self._maybe_start(node.id)

    def _maybe_start(self, node_id: str) -> None:
        record = self.nodes[node_id]
        if record.state is not NodeState.PENDING or self.state.finished or not self.workflow.is_ready(node_id):
            return
        node = self.workflow.nodes[node_id]
        inputs = self.workflow.inputs_of(node_id)
        failed = [variable for variable in inputs if variable.state is VarState.FAILED]
        if failed:
            for variable in failed:
                variable.observed = True  # consumed: the failure is accounted for by this node
            reason = f"input {failed[0].name!r} has no value: {failed[0].error.reason if failed[0].error else ''}"
            self._node_failed(node, NodeError(node_id, "upstream", reason), skipped=True)
            if self.planner is not None:
                self.planner.node_finished(self.program_id, node, record)
            return
        values = {variable.name: variable.value for variable in inputs}
        generated = (
            {variable.name: variable.generation for variable in inputs if variable.generation is not None}
            if self._splices_outputs
            else None
        )
        record.state = NodeState.RUNNING
        record.started_at = time.monotonic()
        self._emit("node_started", node_id)
        task = asyncio.get_running_loop().create_task(
            self._run(node, values, generated), name=f"{self.program_id}/{node_id}"
        )
        self._tasks[node_id] = task

    # ---- running a node --------------------------------------------------------------------------------------------

    @property
    def _splices_outputs(self) -> bool:
        """Whether prompts carry the generated ids of the values they embed (``PlanConfig.splice_outputs``, and a
        tokenizer whose pieces join exactly)."""
        planner = self.planner
        return (planner is None or planner.config.splice_outputs) and self.services.engine.tokenizer.joins_pieces

    async def _run(self, node: Node, values: dict[str, Any], generated: dict[str, Generation] | None = None) -> None:
        record = self.nodes[node.id]
        output = self.workflow.variables[node.output]
        planner = self.planner
        if planner is not None:
            planner.node_started(self.program_id, node)
        try:
            if isinstance(node, LLMCall):
                options = self.options
                if planner is not None:
                    options = planner.request_options(self.program_id, node)
                    options.hints = dict(self.options.hints)
                dedup = planner.dedup if planner is not None else None
                value = await run_llm_call(
                    self.services.engine, node, values, output, record, options, dedup, generated
                )
            else:
                value = await self._run_tool(node, values, record)
        except asyncio.CancelledError:
            if not record.state.finished:
                record.finish(NodeState.CANCELLED, "cancelled")
                output.fail("cancelled")
                self._emit("node_finished", node.id, record.state.value, "cancelled")
            raise
        except NodeError as error:
            self._node_failed(node, error)
        except Exception as error:  # a bug or an engine error: fail the node, never the runtime
            self._node_failed(node, NodeError(node.id, "engine", f"{type(error).__name__}: {error}"))
        else:
            record.finish(NodeState.DONE)
            self._emit("node_finished", node.id, record.state.value)  # before binding starts the consumers
            output.bind(value)
        finally:
            self._tasks.pop(node.id, None)
            if planner is not None:
                planner.node_finished(self.program_id, node, record)
        self._check_complete()

    async def _run_tool(self, node: ToolCall, values: dict[str, Any], record: NodeRecord) -> Any:
        tool = self.services.tools.get(node.tool)
        if tool is None:
            raise NodeError(node.id, "tool_arguments", f"unknown tool {node.tool!r}")

        def count(attempt: int) -> None:
            record.attempts = attempt

        return await self.services.tool_executor.run(tool, substitute(node.args, values), node.id, count)

    def _node_failed(self, node: Node, error: NodeError, *, skipped: bool = False) -> None:
        record = self.nodes[node.id]
        output = self.workflow.variables[node.output]
        record.finish(NodeState.SKIPPED if skipped else NodeState.FAILED, str(error))
        self._emit("node_finished", node.id, record.state.value, str(error))
        if node.on_error is OnError.FALLBACK:
            output.bind(node.fallback)
            output.metadata["error"] = str(error)
            return
        output.fail(str(error))
        # A skipped node only echoes its input's failure: the node that failed first ends the program (with its own
        # error as the cause) once its output's consumers have been skipped.
        if self.fail_fast and not skipped:
            self._finish(ProgramState.FAILED, error=error)

    # ---- ending ----------------------------------------------------------------------------------------------------

    def _check_complete(self) -> None:
        """A whole workflow is done when every node has finished."""
        if self._driver is None and not self.state.finished and all(r.state.finished for r in self.nodes.values()):
            unhandled = self._unhandled_failure()
            if unhandled is not None:
                self._finish(ProgramState.FAILED, error=unhandled)
            else:
                self.result = {name: self.workflow.variables[name].value for name in self.workflow.outputs}
                self._finish(ProgramState.DONE)

    async def _drive(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        try:
            value = await coroutine
        except asyncio.CancelledError:
            self._finish(ProgramState.CANCELLED)
            raise
        except Exception as error:  # the program's own exception (including unhandled node failures it awaited)
            self._finish(ProgramState.FAILED, error=error)
            return
        unhandled = self._unhandled_failure()
        if unhandled is not None:
            self._finish(ProgramState.FAILED, error=unhandled)
        else:
            self.result = value
            self._finish(ProgramState.DONE)

    def _unhandled_failure(self) -> BaseException | None:
        for variable in self.workflow.variables.values():
            if variable.state is VarState.FAILED and not variable.observed and variable.producer is not None:
                return variable.error
        return None

    def _finish(self, state: ProgramState, error: BaseException | None = None) -> None:
        if self.state.finished:
            return
        self.record.state = state
        self.record.finished_at = time.monotonic()
        self.error = error
        self.record.error = str(error) if error is not None else None
        current = asyncio.current_task()
        for task in list(self._tasks.values()):
            if task is not current:
                task.cancel()
        # Settle every unfinished node here rather than in its task: a task cancelled before it started never runs
        # its handler, and "program_finished" must be the last event.
        for node_id, record in self.nodes.items():
            if not record.state.finished:
                ran = record.state is NodeState.RUNNING
                reason = "cancelled" if ran else "the program ended before this node ran"
                record.finish(NodeState.CANCELLED, reason)
                self.workflow.variables[self.workflow.nodes[node_id].output].fail(
                    "cancelled" if ran else "the program ended first"
                )
                self._emit("node_finished", node_id, NodeState.CANCELLED.value, reason)
        if self._driver is not None and self._driver is not asyncio.current_task():
            self._driver.cancel()
            if self._body is not None and inspect.getcoroutinestate(self._body) == inspect.CORO_CREATED:
                self._body.close()  # cancelled before it started: it never will ("never awaited" otherwise)
        self._emit("program_finished", state=state.value, error=self.record.error)
        self._done.set()
        if self.planner is not None:
            finished_at = self.record.finished_at or time.monotonic()
            self.planner.program_finished(self.program_id, state.value, self.record.created_at, finished_at)

    def cancel(self) -> None:
        """Stop the program: running engine requests are aborted (their KV freed) and tools cancelled."""
        self._finish(ProgramState.CANCELLED)

    async def wait(self) -> Any:
        """Wait for the end; return the result (a Python program's return value, or a workflow's outputs by name).

        Raises ``ProgramFailedError`` or ``ProgramCancelledError``. When it returns, no task of the program is left.
        """
        try:
            await self._done.wait()
        except asyncio.CancelledError:
            self.cancel()
            await self._drain()
            raise
        await self._drain()
        if self.state is ProgramState.FAILED:
            assert self.error is not None
            raise ProgramFailedError(self.program_id, self.error) from self.error
        if self.state is ProgramState.CANCELLED:
            raise ProgramCancelledError(self.program_id)
        return self.result

    async def _drain(self) -> None:
        pending = [task for task in (*self._tasks.values(), self._driver) if task is not None and not task.done()]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    def status(self) -> dict[str, Any]:
        """State, timings and per-node records, as plain data."""
        return {
            "program_id": self.program_id,
            "name": self.record.name,
            "state": self.state.value,
            "elapsed_s": self.record.elapsed_s,
            "error": self.record.error,
            "nodes": [record.to_dict() for record in self.nodes.values()],
        }
