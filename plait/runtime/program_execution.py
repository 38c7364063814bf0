"""One running program: starts each node as soon as its inputs are bound, binds outputs, applies the failure policy.

Invariants:
- a node runs at most once, and only after every input variable is settled;
- every output variable is settled exactly once (bound, or failed with the reason) by the time the program ends;
- when ``wait()`` returns, none of the program's tasks is left running and its engine requests have been aborted.

Durability (with a ``ProgramJournal``): a node whose outcome an earlier run recorded is replayed (its output settled
from the journal, nothing run); every other node's outcome is committed to the journal before its output is settled,
so no dependent starts on an output a crash could lose (see ``journal.py``). A JSON workflow's replayed nodes settle at
once, in dependency order; a Python program's are settled in the order the recorded run committed them, one at a
time, with the body let run in between, so that a body whose branches run concurrently makes its calls in the same
order as the recorded run did (see ``program_journal.py``).

Failure policy. ``fail_fast`` (JSON workflows): a node that fails without a fallback fails the whole program at
once, cancelling the rest. Otherwise (Python programs) a failure fails the node's variable; nodes that consume it
are skipped; the program sees the error when it awaits the variable and may handle it with ``try``; a failure no
one looked at fails the program when it returns.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from plait.dag import LLMCall, Node, OnError, ToolCall, Workflow, substitute
from plait.engine import Engine
from plait.runtime.crash_points import armed, crash_point
from plait.runtime.errors import NodeError, ProgramCancelledError, ProgramFailedError
from plait.runtime.journal_rows import OutcomeRow
from plait.runtime.llm_runner import run_llm_call
from plait.runtime.planning import Planner
from plait.runtime.program_journal import RECORDED_FAILURES, NonDeterminismError, ProgramJournal
from plait.runtime.request_options import RequestOptions
from plait.runtime.states import NodeRecord, NodeState, ProgramRecord, ProgramState
from plait.runtime.tool_executor import ToolExecutor
from plait.runtime.tools import ToolRegistry
from plait.semantic_vars import Generation, SemanticVariable, VarState

# Loop turns a Python program's body gets between two replayed outcomes: enough for a resumed task, the gather or
# task group around it and its continuation to run up to the body's next wait.
_REPLAY_QUIET_TURNS = 8
# The counters of a node's record that its journaled outcome keeps (shown again by status after a resume).
_RECORD_COUNTERS = (
    "prompt_tokens",
    "cached_tokens",
    "spliced_tokens",
    "completion_tokens",
    "attempts",
    "engine_s",
    "deduplicated",
)


@dataclass
class ExecutionServices:
    """What programs share: the engine, the tools and their executor, and the planner (None: plain requests)."""

    engine: Engine
    tools: ToolRegistry
    tool_executor: ToolExecutor = field(default_factory=ToolExecutor)
    planner: Planner | None = None


@dataclass(frozen=True)
class ProgramEvent:
    """Something that happened in a program: ``node_started``, ``node_finished``, ``program_finished``.
    ``replayed``: the node's outcome came from the journal (it did not run in this process)."""

    kind: str
    program_id: str
    node: str | None = None
    state: str | None = None
    error: str | None = None
    replayed: bool = False
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
        journal: ProgramJournal | None = None,
    ) -> None:
        """``journal``: where outcomes are committed and replayed from (None: not durable)."""
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
        self.journal = journal
        self.replayed: set[str] = set()  # nodes whose outcome came from the journal
        self._positions: dict[str, int] = {}  # node id -> the order in which it was added
        self._signatures: dict[str, str] = {}  # node id -> its call signature (Python programs with a journal)
        self._replay_queue: deque[tuple[Node, OutcomeRow]] = deque()
        self._replaying = False
        # A Python program's replay: recorded outcomes whose node is ready, by position, released in commit order.
        self._releasable: dict[int, tuple[Node, OutcomeRow]] = {}
        self._release_order: deque[int] = deque(journal.commit_order if journal and journal.by_position else ())
        self._release_wakeup = asyncio.Event()
        self._releaser: asyncio.Task[None] | None = None
        self._nondeterminism: NonDeterminismError | None = None
        self._starting = False
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

    def _emit(
        self,
        kind: str,
        node: str | None = None,
        state: str | None = None,
        error: str | None = None,
        *,
        replayed: bool = False,
    ) -> None:
        event = ProgramEvent(kind, self.program_id, node, state, error, replayed)
        self.events.append(event)
        for listener in list(self._listeners):
            listener(event)

    # ---- starting work ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start every node whose inputs are bound (a whole workflow); the rest start as their inputs arrive."""
        self._starting = True  # replayed nodes settle during the loop: the program is complete only after it
        try:
            for node in list(self.workflow.nodes.values()):
                self._track(node)
        finally:
            self._starting = False
        self._check_complete()

    def drive(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        """Run a Python program's body: the program ends when it returns (its value is the result)."""
        self._body = coroutine
        self._driver = asyncio.get_running_loop().create_task(self._drive(coroutine), name=f"program-{self.program_id}")

    def add_node(self, node: Node) -> SemanticVariable:
        """Add a node to the running program (a Python program growing its graph). With a journal that matches by
        position, raises ``NonDeterminismError`` (adding nothing) when the journal recorded another call here."""
        if self.state.finished:
            raise (
                ProgramCancelledError(self.program_id)
                if self.state is ProgramState.CANCELLED
                else RuntimeError(f"program {self.program_id!r} has already finished")
            )
        signature = None
        if self.journal is not None:
            try:
                signature = self.journal.check_call(node, len(self._positions), self.workflow)
            except NonDeterminismError as error:
                self._nondeterminism = self._nondeterminism or error  # fails the program even if the body catches it
                raise
        output = self.workflow.add_node(node)
        self._track(node, signature)
        return output

    def _track(self, node: Node, signature: str | None = None) -> None:
        self._positions[node.id] = len(self._positions)
        if signature is not None:
            self._signatures[node.id] = signature
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
        if self.journal is not None:
            outcome = self.journal.recorded(node_id, self._positions[node_id])
            if outcome is not None and outcome.state in ("done", "failed"):
                self._replay(node, outcome)
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
        if isinstance(node, LLMCall) and armed("mid_decode"):
            output.on_text(lambda _text: crash_point("mid_decode"))
        value: Any = None
        failure: NodeError | None = None
        try:
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
            except NodeError as error:
                failure = error
            except Exception as error:  # a bug or an engine error: fail the node, never the runtime
                failure = NodeError(node.id, "engine", f"{type(error).__name__}: {error}")
            if self.journal is not None:
                failure = await self._commit(node, value, failure, record, output)
                crash_point("after_output")
        except asyncio.CancelledError:
            if not record.state.finished:
                record.finish(NodeState.CANCELLED, "cancelled")
                output.fail("cancelled")
                self._emit("node_finished", node.id, record.state.value, "cancelled")
            raise
        else:
            if failure is not None:
                self._node_failed(node, failure)
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

        key = idempotency_key(self.program_id, node.id)
        return await self.services.tool_executor.run(
            tool, substitute(node.args, values), node.id, count, idempotency_key=key
        )

    async def _commit(
        self, node: Node, value: Any, failure: NodeError | None, record: NodeRecord, output: SemanticVariable
    ) -> NodeError | None:
        """Commit the node's outcome before anything sees it; returns the failure to report (a journal that cannot
        record a value fails the node: an output that is not durable must not be used)."""
        assert self.journal is not None
        if failure is not None and failure.kind not in RECORDED_FAILURES:
            return failure  # the machinery failed, not the step: it runs again on resume
        details: dict[str, Any] = {"stats": {name: getattr(record, name) for name in _RECORD_COUNTERS}}
        if failure is None:
            details["metadata"] = output.metadata
            if output.generation is not None:
                # The prompt the ids continued, too: a replayed output must splice into later prompts exactly as it
                # did in the recorded run, or the calls after a resume would see other token ids than without it.
                details["generation"] = {"prompt": output.generation.prompt, "token_ids": output.generation.token_ids}
        row = OutcomeRow(
            node_id=node.id,
            position=self._positions[node.id],
            state="done" if failure is None else "failed",
            value=value if failure is None else None,
            signature=self._signatures.get(node.id),
            error_kind=failure.kind if failure is not None else None,
            error=failure.message if failure is not None else None,
            details=details,
        )
        try:
            await self.journal.commit(row)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # an output JSON cannot hold, a full disk: the node cannot be made durable
            return NodeError(node.id, "journal", f"the journal could not record the outcome: {error}")
        return failure

    # ---- replaying recorded outcomes -------------------------------------------------------------------------------

    def _replay(self, node: Node, outcome: OutcomeRow) -> None:
        """Settle a ready node from its recorded outcome (see the module's Durability paragraph for the order)."""
        assert self.journal is not None
        if self.journal.by_position:
            self._releasable[outcome.position] = (node, outcome)
            if self._releaser is None:
                self._releaser = asyncio.get_running_loop().create_task(
                    self._release_recorded(), name=f"{self.program_id}/replay"
                )
            self._release_wakeup.set()
            return
        # Settling an output starts its consumers, which may be recorded too: a queue, not recursion, so that a long
        # chain replays in constant stack depth.
        self._replay_queue.append((node, outcome))
        if self._replaying:
            return
        self._replaying = True
        try:
            while self._replay_queue:
                self._apply_outcome(*self._replay_queue.popleft())
        finally:
            self._replaying = False

    async def _release_recorded(self) -> None:
        """Settle a Python program's recorded outcomes in the recorded run's commit order. Before each, the body runs
        until it waits; when the next outcome in that order belongs to a call the body has not made, the earliest
        ready one goes instead (the body took another path, which ``check_call`` judges as it adds calls)."""
        order = self._release_order
        while order:
            for _ in range(_REPLAY_QUIET_TURNS):
                await asyncio.sleep(0)
            ready = [position for position in order if position in self._releasable]
            if not ready:
                self._release_wakeup.clear()
                await self._release_wakeup.wait()
                continue
            position = ready[0]  # the head of the order when it is ready
            order.remove(position)
            self._apply_outcome(*self._releasable.pop(position))

    def _apply_outcome(self, node: Node, outcome: OutcomeRow) -> None:
        record = self.nodes[node.id]
        if record.state is not NodeState.PENDING or self.state.finished:
            return
        self.replayed.add(node.id)
        _restore_counters(record, outcome)
        record.state = NodeState.RUNNING
        self._emit("node_started", node.id, replayed=True)
        output = self.workflow.variables[node.output]
        if outcome.state == "done":
            output.metadata.update(outcome.details.get("metadata") or {})
            generation = outcome.details.get("generation")
            if generation:
                output.generation = Generation(generation["prompt"], generation["token_ids"])
            record.finish(NodeState.DONE)
            self._emit("node_finished", node.id, record.state.value, replayed=True)
            output.bind(outcome.value)
        else:
            error = NodeError(node.id, outcome.error_kind or "tool_raised", outcome.error or "")
            self._node_failed(node, error, replayed=True)
        if self.planner is not None:
            self.planner.node_finished(self.program_id, node, record)  # never started here: no timings to learn
        self._check_complete()

    def _node_failed(self, node: Node, error: NodeError, *, skipped: bool = False, replayed: bool = False) -> None:
        record = self.nodes[node.id]
        output = self.workflow.variables[node.output]
        record.finish(NodeState.SKIPPED if skipped else NodeState.FAILED, str(error))
        self._emit("node_finished", node.id, record.state.value, str(error), replayed=replayed)
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
        if self._starting:
            return
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
            self._finish(ProgramState.FAILED, error=self._nondeterminism or error)
            return
        unhandled = self._nondeterminism or self._unhandled_failure()
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
        if self._releaser is not None and self._releaser is not asyncio.current_task():
            self._releaser.cancel()
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
            if isinstance(self.error, NonDeterminismError):
                raise self.error  # not the program's failure: the body does not match its journal
            raise ProgramFailedError(self.program_id, self.error) from self.error
        if self.state is ProgramState.CANCELLED:
            raise ProgramCancelledError(self.program_id)
        return self.result

    async def _drain(self) -> None:
        tasks = (*self._tasks.values(), self._driver, self._releaser)
        pending = [task for task in tasks if task is not None and not task.done()]
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

    # ---- a finished program, from its journal ----------------------------------------------------------------------

    def restore(self, outcomes: Iterable[OutcomeRow], state: ProgramState, error: str | None, result: Any) -> None:
        """Rebuild a program that finished in an earlier process (for status queries): every node's state and output
        from its recorded outcome; nodes without one were skipped (an input failed) or never ran. Starts nothing."""
        recorded = {row.node_id: row for row in outcomes}
        for node_id in nx.topological_sort(self.workflow.graph):
            node = self.workflow.nodes[node_id]
            record = self.nodes.setdefault(node_id, NodeRecord(node_id, node.kind))
            output = self.workflow.variables[node.output]
            row = recorded.get(node_id)
            if row is not None and row.state in ("done", "failed"):
                self.replayed.add(node_id)
                _restore_counters(record, row)
                if row.state == "done":
                    output.metadata.update(row.details.get("metadata") or {})
                    record.finish(NodeState.DONE)
                    output.bind(row.value)
                    continue
                failure = NodeError(node_id, row.error_kind or "tool_raised", row.error or "")
                record.finish(NodeState.FAILED, str(failure))
                if node.on_error is OnError.FALLBACK:
                    output.bind(node.fallback)
                    output.metadata["error"] = str(failure)
                else:
                    output.fail(str(failure))
                continue
            failed = [v for v in self.workflow.inputs_of(node_id) if v.state is VarState.FAILED]
            if failed:
                record.finish(NodeState.SKIPPED, f"input {failed[0].name!r} has no value")
            else:
                record.finish(NodeState.CANCELLED, "the program ended before this node ran")
            output.fail(record.error or "no value")
        for variable in self.workflow.variables.values():
            variable.observed = True
        self.record.state = state
        self.record.error = error
        self.record.finished_at = time.monotonic()
        self.result = result
        self.error = ProgramFailedError(self.program_id, RuntimeError(error or "failed")) if error else None
        self._done.set()


def idempotency_key(program_id: str, node_id: str) -> str:
    """What a tool that declares an ``idempotency_key`` parameter receives: the same for every attempt of the node,
    in this process and after a resume."""
    return f"{program_id}/{node_id}"


def _restore_counters(record: NodeRecord, outcome: OutcomeRow) -> None:
    for name, value in (outcome.details.get("stats") or {}).items():
        if name in _RECORD_COUNTERS:
            setattr(record, name, value)
