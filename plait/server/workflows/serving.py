"""What the workflow routes do: start a workflow (whole or open), grow an open one, close or cancel one; and, with a
journal, resume the accepted unfinished workflows when the server starts and load finished ones on lookup.

Every start is checked completely before anything runs (node limit, client tools, the whole graph), then admitted
(``TenantUsage.admit``: a program slot and a token reservation, released exactly once when the program ends, however
it ends), then, with a journal, committed (``durability.py``), then started with the program's own tools and tool
executor, tagged with its tenant, and recorded. A resumed workflow is built the same way from its journaled
submission: the nodes the journal holds outcomes for are replayed, the others run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sys
import time
import uuid
from typing import Any

import msgspec
import networkx as nx

from plait.dag import (
    LLMCallSpec,
    Problem,
    ToolCallSpec,
    ToolSpec,
    Workflow,
    WorkflowError,
    WorkflowSpec,
    node_from_spec,
    node_spec,
    to_workflow,
)
from plait.runtime.crash_points import crash_point
from plait.runtime.journal import Journal
from plait.runtime.journal_rows import ProgramRow
from plait.runtime.program_execution import ExecutionServices, ProgramExecution
from plait.runtime.program_journal import ProgramJournal
from plait.runtime.states import ProgramState
from plait.semantic_vars import SemanticVarError, VarState
from plait.server.config import DEFAULT_TENANT, ServerConfig, TenantLimits
from plait.server.errors import APIError
from plait.server.state import ServerState
from plait.server.tenants import Admission, Tenant
from plait.server.workflows.client_tools import ClientTool, ClientToolExecutor, ProgramTools
from plait.server.workflows.durability import (
    WORKFLOW_KIND,
    deadline_at,
    event_writer,
    journal_of,
    key_reused,
    read_submission,
    record_accept,
    record_batch,
    record_end,
    restored_events,
)
from plait.server.workflows.events import EventLog, EventRecorder, LoggedEvent
from plait.server.workflows.protocol import (
    ClientToolDecl,
    NodeBatch,
    SubmissionOptions,
    WorkflowRejected,
    estimate_tokens,
)
from plait.server.workflows.registry import WorkflowEntry, WorkflowRegistry, registry_of

logger = logging.getLogger("plait.server")
_TOOL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*\Z")
_RESUMED = "workflows_resumed"  # ServerState.extras flag: the journaled workflows have been resumed
# A resumed workflow was admitted by the process that accepted it: it is admitted again whatever the limits say.
_NO_LIMITS = TenantLimits(max_concurrent_programs=sys.maxsize, max_queued_tokens=sys.maxsize)


class ReportedFailure(RuntimeError):
    """An open workflow closed with an error by its caller (its Python program failed)."""


def new_workflow_id() -> str:
    return f"wf-{uuid.uuid4().hex[:24]}"


def workflows_of(state: ServerState) -> WorkflowRegistry:
    """The workflow registry, once the journaled workflows have resumed (the first caller resumes them)."""
    if journal_of(state) is not None and not state.extras.get(_RESUMED):
        resume_workflows(state)
    return registry_of(state)


async def submit_workflow(
    state: ServerState,
    tenant: Tenant,
    spec: WorkflowSpec,
    options: SubmissionOptions,
    *,
    idempotency_key: str | None = None,
    request_digest: str | None = None,
) -> tuple[WorkflowEntry, bool]:
    """Validate, admit, journal and start ``spec``; ``(entry, created)``. With ``idempotency_key``, a workflow the
    tenant submitted with that key before is returned instead (``created`` False), once its acceptance is durable.
    Raises ``APIError`` (422 with every problem, 413, 429; 422 for a key reused with another body; 503 when the
    journal cannot record it) before anything runs."""
    registry = workflows_of(state)
    if idempotency_key is not None:
        existing = _submitted_with_key(state, registry, tenant.name, idempotency_key)
        if existing is not None:
            if existing.request_digest != request_digest:
                raise key_reused(existing.id)
            if existing.accepted is not None:
                try:
                    await asyncio.shield(existing.accepted)
                except Exception as error:  # the first request's acceptance failed: so does its retry
                    raise APIError(503, f"the journal could not record the workflow: {error}") from None
            return existing, False
    config = state.config
    _check_node_limit(len(spec.nodes), config)
    if options.deadline_s is not None and not options.deadline_s > 0:
        raise APIError(422, f"deadline_s: must be > 0 seconds, got {options.deadline_s}", field="deadline_s")
    tools = ProgramTools(state.executor.tools)
    declare_client_tools(tools, options.client_tools, config)
    try:
        workflow = to_workflow(spec, tools.specs())
    except WorkflowError as error:
        raise WorkflowRejected(error.problems) from None
    admission = state.usage.admit(tenant, estimate_tokens(spec.nodes, spec.inputs))
    journal = journal_of(state)
    try:
        workflow_id = new_workflow_id()
        entry = _create_entry(
            state,
            tenant.name,
            spec,
            options,
            workflow,
            tools,
            workflow_id=workflow_id,
            log=EventLog(workflow_id),
            program_journal=ProgramJournal(journal, workflow_id) if journal is not None else None,
        )
        entry.idempotency_key, entry.request_digest = idempotency_key, request_digest
        entry.deadline_at = deadline_at(options)
    except BaseException:
        admission.release()
        raise
    _attach(state, entry, admission)
    registry.add(entry, state.owners)
    if journal is not None:
        entry.accepted = asyncio.get_running_loop().create_task(record_accept(journal, entry, spec, options))
        try:
            await asyncio.shield(entry.accepted)
        except asyncio.CancelledError:  # the request went away; the workflow starts once its acceptance is durable
            entry.accepted.add_done_callback(lambda task: _launch_accepted(state, entry, spec, options, workflow, task))
            raise
        except Exception as error:
            _abandon(state, entry)
            raise APIError(503, f"the journal could not record the workflow: {error}") from None
        entry.durable = True
        crash_point("after_accept")
    _launch(state, entry, spec, options, workflow)
    return entry, True


def _launch_accepted(
    state: ServerState,
    entry: WorkflowEntry,
    spec: WorkflowSpec,
    options: SubmissionOptions,
    workflow: Workflow,
    accepted: asyncio.Task[None],
) -> None:
    if accepted.cancelled() or accepted.exception() is not None:
        _abandon(state, entry)
        return
    entry.durable = True
    _launch(state, entry, spec, options, workflow)


def _submitted_with_key(
    state: ServerState, registry: WorkflowRegistry, tenant: str, idempotency_key: str
) -> WorkflowEntry | None:
    entry = registry.by_key(tenant, idempotency_key)
    journal = journal_of(state)
    if entry is None and journal is not None:
        row = journal.program_by_key(WORKFLOW_KIND, tenant, idempotency_key)
        if row is not None:
            with contextlib.suppress(APIError):
                entry = registry.get(row.id, tenant)
    return entry


def _create_entry(
    state: ServerState,
    tenant: str,
    spec: WorkflowSpec,
    options: SubmissionOptions,
    workflow: Workflow,
    tools: ProgramTools,
    *,
    workflow_id: str,
    log: EventLog,
    program_journal: ProgramJournal | None,
) -> WorkflowEntry:
    """The workflow's program (registered with the executor, not started) and its entry."""
    executor = ClientToolExecutor(state.executor.services.tool_executor)
    services = ExecutionServices(state.engine, tools, executor, state.executor.services.planner)
    common: dict[str, Any] = {
        "program_id": workflow_id,
        "fail_fast": options.fail_fast,
        "priority": options.priority,
        "services": services,
        "journal": program_journal,
    }
    if options.open:
        program = state.executor.open(spec.name, **common)
        closing: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        return WorkflowEntry(program, tenant, log, executor, tools, open=True, closing=closing)
    program = state.executor.prepare(workflow, **common)
    return WorkflowEntry(program, tenant, log, executor, tools)


def _attach(
    state: ServerState, entry: WorkflowEntry, admission: Admission, logged: set[tuple[str, str]] | None = None
) -> None:
    """Record the program's events (and, when it is durable, journal them and its end); release the admission and
    the deadline when it ends."""
    journal = journal_of(state)

    def finished(final: LoggedEvent | None) -> None:
        admission.release()
        if entry.deadline_timer is not None:
            entry.deadline_timer.cancel()
        if journal is not None and entry.durable and final is not None:
            record_end(journal, entry, final)
            assert entry.ended is not None
            entry.ended.add_done_callback(_log_failed_end)

    def suspended() -> bool:
        """A draining server stops a durable workflow without ending it: it resumes in the next process."""
        return state.draining and entry.durable and not entry.cancel_requested

    durable = None
    if journal is not None:
        write = event_writer(journal, entry.id)

        def durable(event: LoggedEvent) -> None:
            if entry.durable:
                write(event)

    recorder = EventRecorder(entry, on_finished=finished, durable=durable, suspended=suspended, logged=logged)
    recorder.attach()


def _log_failed_end(ended: asyncio.Future[None]) -> None:
    if not ended.cancelled() and ended.exception() is not None:
        logger.error("the journal could not record a workflow's end: %s", ended.exception())


def _launch(
    state: ServerState,
    entry: WorkflowEntry,
    spec: WorkflowSpec,
    options: SubmissionOptions,
    workflow: Workflow,
    batches: list[Any] | None = None,
) -> None:
    """Start the program (an open one gets its inputs and nodes, then the journaled batches) and its deadline."""
    if entry.deadline_at is not None and options.deadline_s is not None:
        remaining = max(0.0, entry.deadline_at - time.time())
        entry.deadline_timer = asyncio.get_running_loop().call_later(remaining, _expire, entry, options.deadline_s)
    program = entry.program
    if not entry.open:
        program.start()
        return
    # Driven first: replayed nodes settle as they are added, and only a program with a body does not end with them.
    program.drive(_until_closed(entry))
    for name, value in spec.inputs.items():
        program.workflow.add_input(name, value)
    for node_id in nx.topological_sort(workflow.graph):  # each node's inputs exist before it is added
        program.add_node(workflow.nodes[node_id])
    try:
        for body in batches or []:
            _apply_batch(state, entry, msgspec.convert(body, NodeBatch))
    except Exception as error:  # a journaled batch that no longer applies: the workflow ends as failed
        assert entry.closing is not None
        if not entry.closing.done():
            entry.closing.set_result(f"the workflow could not be resumed: {error}")


def _abandon(state: ServerState, entry: WorkflowEntry) -> None:
    """Forget a workflow whose acceptance could not be recorded (it never started, and nobody was told its id)."""
    registry_of(state).discard(entry.id)
    if entry.closing is not None and not entry.closing.done():
        entry.closing.cancel()
    entry.program.cancel()


def resume_workflows(state: ServerState) -> int:
    """Continue every accepted, unfinished workflow of the journal (once per process; call in the event loop once the
    engine is loaded); returns how many. One that cannot be built again ends as failed, with the reason."""
    journal = journal_of(state)
    if journal is None or state.extras.get(_RESUMED):
        return 0
    state.extras[_RESUMED] = True
    registry = registry_of(state)
    registry.fallback = lambda workflow_id: load_finished(state, workflow_id)
    resumed = 0
    for row in journal.unfinished(WORKFLOW_KIND):
        if registry.holds(row.id):
            continue
        try:
            _resume(state, journal, row)
            resumed += 1
        except Exception as error:
            logger.error("workflow %s could not be resumed: %s", row.id, error)
            ended = journal.finish(row.id, "failed", error=f"the workflow could not be resumed: {error}")
            ended.add_done_callback(_log_failed_end)  # type: ignore[attr-defined]
    if resumed:
        logger.info("resumed %d workflow(s) from the journal %s", resumed, journal.path)
    return resumed


def _resume(state: ServerState, journal: Journal, row: ProgramRow) -> None:
    record = read_submission(row)
    spec, options = record.workflow, record.options
    tools = ProgramTools(state.executor.tools)
    declare_client_tools(tools, options.client_tools, state.config)
    workflow = to_workflow(spec, tools.specs())
    events = restored_events(journal, row.id)
    log = EventLog(row.id, events, next_seq=journal.resume_seq())
    logged = {(event.kind, event.data["node"]) for event in events if isinstance(event.data.get("node"), str)}
    tenant = Tenant(row.tenant or DEFAULT_TENANT, _NO_LIMITS)
    admission = state.usage.admit(tenant, estimate_tokens(spec.nodes, spec.inputs))
    try:
        program_journal = ProgramJournal(journal, row.id, journal.outcomes(row.id))
        entry = _create_entry(
            state,
            tenant.name,
            spec,
            options,
            workflow,
            tools,
            workflow_id=row.id,
            log=log,
            program_journal=program_journal,
        )
    except BaseException:
        admission.release()
        raise
    entry.created_at, entry.durable, entry.deadline_at = row.created_at, True, record.deadline_at
    entry.idempotency_key, entry.request_digest = row.idempotency_key, row.request_digest
    batches = journal.additions(row.id) if options.open else []
    entry.batches = len(batches)
    _attach(state, entry, admission, logged)
    try:
        _launch(state, entry, spec, options, workflow, batches)
    except BaseException:
        entry.durable = False  # the caller records why it ended
        entry.program.cancel()
        raise
    registry_of(state).add(entry, state.owners)


def load_finished(state: ServerState, workflow_id: str) -> WorkflowEntry | None:
    """A workflow that finished in an earlier process (or was forgotten here), rebuilt from the journal for status
    and events; None when the journal does not hold it finished."""
    journal = journal_of(state)
    row = journal.program(workflow_id) if journal is not None else None
    if journal is None or row is None or row.kind != WORKFLOW_KIND or not row.finished:
        return None
    try:
        record = read_submission(row)
        spec, options = record.workflow, record.options
        tools = ProgramTools(state.executor.tools)
        with contextlib.suppress(APIError):  # settings may have changed since: the view needs no tool checks
            declare_client_tools(tools, options.client_tools, state.config)
        workflow = _rebuild(spec, journal.additions(row.id) if options.open else [])
    except (ValueError, WorkflowError, SemanticVarError) as error:
        logger.warning("workflow %s cannot be rebuilt from the journal: %s", workflow_id, error)
        return None
    executor = ClientToolExecutor(state.executor.services.tool_executor)
    program = ProgramExecution(
        ExecutionServices(state.engine, tools, executor), workflow, row.id, fail_fast=options.fail_fast
    )
    program.restore(journal.outcomes(row.id), ProgramState(row.state), row.error, row.result)
    log = EventLog(row.id, restored_events(journal, row.id))
    log.close()
    entry = WorkflowEntry(program, row.tenant or DEFAULT_TENANT, log, executor, tools, open=options.open)
    entry.created_at, entry.durable = row.created_at, True
    entry.idempotency_key, entry.request_digest = row.idempotency_key, row.request_digest
    registry_of(state).add(entry, state.owners)
    return entry


def _rebuild(spec: WorkflowSpec, batches: list[Any]) -> Workflow:
    """A finished workflow's graph (no tool checks: it will not run): its spec, then its added batches."""
    if not batches:
        return to_workflow(spec, None)
    workflow = Workflow(spec.name)
    for name, value in spec.inputs.items():
        workflow.add_input(name, value)
    for node_spec_ in spec.nodes:
        workflow.add_node(node_from_spec(node_spec_))
    for body in batches:
        batch = msgspec.convert(body, NodeBatch)
        for name, value in batch.inputs.items():
            workflow.add_input(name, value)
        for node_spec_ in batch.nodes:
            workflow.add_node(node_from_spec(node_spec_))
    return workflow


async def add_nodes(state: ServerState, entry: WorkflowEntry, batch: NodeBatch) -> list[str]:
    """Add ``batch`` to an open workflow, all or nothing; returns the new node ids. A batch whose nodes were all
    added already, the same, is a retry: its ids are returned and nothing changes."""
    async with entry.grow_lock:
        if not entry.open:
            raise APIError(409, f"workflow '{entry.id}' is not open: its nodes were fixed when it was submitted")
        repeated = _repeated_batch(entry, batch)
        if repeated is not None:
            return repeated
        if entry.finished or (entry.closing is not None and entry.closing.done()):
            raise APIError(
                409, f"workflow '{entry.id}' has ended ({entry.program.state.value}); it takes no more nodes"
            )
        journal = journal_of(state)
        if journal is not None and entry.durable:
            _apply_batch(state, entry, batch, check_only=True)  # nothing is journaled that would not apply
            try:
                await record_batch(journal, entry, msgspec.to_builtins(batch))
            except Exception as error:
                raise APIError(503, f"the journal could not record the nodes: {error}") from None
            if entry.finished:
                raise APIError(409, f"workflow '{entry.id}' has ended ({entry.program.state.value})")
        return _apply_batch(state, entry, batch)


def _repeated_batch(entry: WorkflowEntry, batch: NodeBatch) -> list[str] | None:
    nodes = entry.program.workflow.nodes
    if not batch.nodes or any(spec.id not in nodes for spec in batch.nodes):
        return None
    for spec in batch.nodes:
        try:
            again = msgspec.to_builtins(node_spec(node_from_spec(spec)))
        except SemanticVarError:
            return None
        if again != msgspec.to_builtins(node_spec(nodes[spec.id])):
            return None
    return [spec.id for spec in batch.nodes]


def _apply_batch(state: ServerState, entry: WorkflowEntry, batch: NodeBatch, *, check_only: bool = False) -> list[str]:
    """Add the batch's inputs, client tools and nodes, all or nothing (``WorkflowRejected`` listing every problem);
    ``check_only``: raise what adding would raise, change nothing. Returns the new node ids."""
    _check_node_limit(len(entry.program.nodes) + len(batch.nodes), state.config)
    workflow = entry.program.workflow
    declared = declare_client_tools(entry.registry, batch.client_tools, state.config)
    added_inputs: list[str] = []
    valid = False
    try:
        nodes, problems = _nodes_of(batch.nodes)
        for name, value in batch.inputs.items():
            try:
                workflow.add_input(name, value)
                added_inputs.append(name)
            except WorkflowError as error:
                problems.extend(error.problems)
        if not problems:
            problems = workflow.check_new_nodes(nodes)
        if problems:
            raise WorkflowRejected(problems)
        valid = True
    finally:
        if check_only or not valid:
            for name in added_inputs:
                del workflow.variables[name]
            for name in declared:
                entry.registry.withdraw(name)
    if not check_only:
        for node in nodes:
            entry.program.add_node(node)
    return [node.id for node in nodes]


def _nodes_of(specs: list[LLMCallSpec | ToolCallSpec]) -> tuple[list[Any], list[Problem]]:
    nodes, problems = [], []
    for index, spec in enumerate(specs):
        try:
            nodes.append(node_from_spec(spec))
        except SemanticVarError as error:
            problems.append(Problem(spec.id or f"nodes[{index}]", error.field, error.message))
    return nodes, problems


async def close_workflow(entry: WorkflowEntry, error: str | None) -> None:
    """End an open workflow (as failed with ``error`` when given); nodes still running are cancelled."""
    if not entry.open:
        raise APIError(409, f"workflow '{entry.id}' is not open; it ends when its nodes do (or DELETE cancels it)")
    if entry.closing is not None and not entry.closing.done():
        entry.closing.set_result(error)
    await settle(entry)


async def cancel_workflow(entry: WorkflowEntry) -> None:
    """Cancel a running workflow (engine requests aborted, their KV freed; tools cancelled); no-op once finished."""
    if not entry.finished:
        entry.cancel_requested = True
        entry.program.cancel()
    await settle(entry)


async def settle(entry: WorkflowEntry) -> None:
    """Wait until the program has ended, none of its tasks is left and, when it is durable, its end is committed."""
    with contextlib.suppress(Exception):
        await entry.program.wait()
    if entry.ended is not None:
        with contextlib.suppress(Exception):
            await asyncio.shield(entry.ended)


async def _until_closed(entry: WorkflowEntry) -> None:
    """The body of an open workflow: it ends when its caller closes it."""
    assert entry.closing is not None
    error = await entry.closing
    if error is not None:
        raise ReportedFailure(error)
    # The caller's program ran to its end: the failures it saw were its to handle (it reports the ones it did not).
    for variable in entry.program.workflow.variables.values():
        if variable.state is VarState.FAILED:
            variable.observed = True


def _expire(entry: WorkflowEntry, deadline_s: float) -> None:
    if not entry.finished:
        entry.note = f"cancelled: the workflow ran past its deadline_s of {deadline_s:g} s"
        entry.cancel_requested = True
        entry.program.cancel()


def _check_node_limit(count: int, config: ServerConfig) -> None:
    if count > config.max_nodes_per_workflow:
        raise APIError(
            413,
            f"the workflow would have {count} nodes; this server accepts at most {config.max_nodes_per_workflow}",
            field="nodes",
        )


def declare_client_tools(tools: ProgramTools, decls: list[ClientToolDecl], config: ServerConfig) -> list[str]:
    """Declare ``decls`` on ``tools`` (422 naming the bad field); returns the names that were new."""
    new: list[str] = []
    try:
        for index, decl in enumerate(decls):
            where = f"client_tools[{index}]"
            if not _TOOL_NAME.match(decl.name):
                raise APIError(
                    422, f"{where}.name: '{decl.name}' must use letters, digits, _ . -", field=f"{where}.name"
                )
            properties = decl.parameters.get("properties", {})
            if decl.parameters.get("type", "object") != "object" or not isinstance(properties, dict):
                raise APIError(
                    422,
                    f"{where}.parameters: must be a JSON schema object with 'properties'",
                    field=f"{where}.parameters",
                )
            timeout_s = config.client_tool_timeout_s if decl.timeout_s is None else decl.timeout_s
            if not 0 < timeout_s <= config.client_tool_timeout_s:
                raise APIError(
                    422,
                    f"{where}.timeout_s: must be in (0, {config.client_tool_timeout_s:g}] seconds, got {timeout_s}",
                    field=f"{where}.timeout_s",
                )
            spec = ToolSpec(decl.name, {**decl.parameters, "type": "object"}, decl.returns, decl.description)
            fresh = tools.client_tool(decl.name) is None
            try:
                tools.declare(ClientTool(spec, timeout_s))
            except ValueError as error:
                raise APIError(422, f"{where}.name: {error}", field=f"{where}.name") from None
            if fresh:
                new.append(decl.name)
    except APIError:
        for name in new:
            tools.withdraw(name)
        raise
    return new
