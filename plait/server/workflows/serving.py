"""What the workflow routes do: start a workflow (whole or open), grow an open one, close or cancel one.

Every start is checked completely before anything runs (node limit, client tools, the whole graph), then admitted
(``TenantUsage.admit``: a program slot and a token reservation, released exactly once when the program ends, however
it ends), then started with the program's own tools and tool executor, tagged with its tenant, and recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from typing import Any

import networkx as nx

from plait.dag import (
    LLMCallSpec,
    Problem,
    ToolCallSpec,
    ToolSpec,
    WorkflowError,
    WorkflowSpec,
    node_from_spec,
    to_workflow,
)
from plait.runtime.program_execution import ExecutionServices
from plait.semantic_vars import SemanticVarError, VarState
from plait.server.config import ServerConfig
from plait.server.errors import APIError
from plait.server.state import ServerState
from plait.server.tenants import Tenant
from plait.server.workflows.client_tools import ClientTool, ClientToolExecutor, ProgramTools
from plait.server.workflows.events import EventLog, EventRecorder
from plait.server.workflows.protocol import (
    ClientToolDecl,
    NodeBatch,
    SubmissionOptions,
    WorkflowRejected,
    estimate_tokens,
)
from plait.server.workflows.registry import WorkflowEntry, registry_of

_TOOL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*\Z")


class ReportedFailure(RuntimeError):
    """An open workflow closed with an error by its caller (its Python program failed)."""


def new_workflow_id() -> str:
    return f"wf-{uuid.uuid4().hex[:24]}"


def start_workflow(state: ServerState, tenant: Tenant, spec: WorkflowSpec, options: SubmissionOptions) -> WorkflowEntry:
    """Validate, admit and start ``spec``; raises ``APIError`` (422 with every problem, 413, 429) before anything
    runs."""
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
    try:
        workflow_id = new_workflow_id()
        executor = ClientToolExecutor(state.executor.services.tool_executor)
        services = ExecutionServices(state.engine, tools, executor, state.executor.services.planner)
        log = EventLog(workflow_id)
        common: dict[str, Any] = {
            "program_id": workflow_id,
            "fail_fast": options.fail_fast,
            "priority": options.priority,
            "services": services,
        }
        if options.open:
            program = state.executor.open(spec.name, **common)
            closing: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
            entry = WorkflowEntry(program, tenant.name, log, executor, tools, open=True, closing=closing)
        else:
            program = state.executor.start(workflow, **common)
            entry = WorkflowEntry(program, tenant.name, log, executor, tools)
    except BaseException:
        admission.release()
        raise

    deadline = None
    if options.deadline_s is not None:
        deadline = asyncio.get_running_loop().call_later(options.deadline_s, _expire, entry, options.deadline_s)

    def finished() -> None:
        admission.release()
        if deadline is not None:
            deadline.cancel()

    EventRecorder(entry, on_finished=finished).attach()
    registry_of(state).add(entry, state.owners)
    if options.open:
        for name, value in spec.inputs.items():
            program.workflow.add_input(name, value)
        for node_id in nx.topological_sort(workflow.graph):  # each node's inputs exist before it is added
            program.add_node(workflow.nodes[node_id])
        program.drive(_until_closed(entry))
    return entry


def add_nodes(state: ServerState, entry: WorkflowEntry, batch: NodeBatch) -> list[str]:
    """Add ``batch`` to an open workflow, all or nothing; returns the new node ids."""
    if not entry.open:
        raise APIError(409, f"workflow '{entry.id}' is not open: its nodes were fixed when it was submitted")
    if entry.finished or (entry.closing is not None and entry.closing.done()):
        raise APIError(409, f"workflow '{entry.id}' has ended ({entry.program.state.value}); it takes no more nodes")
    _check_node_limit(len(entry.program.nodes) + len(batch.nodes), state.config)
    workflow = entry.program.workflow
    declared = declare_client_tools(entry.registry, batch.client_tools, state.config)
    added_inputs: list[str] = []
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
    except BaseException:
        for name in added_inputs:
            del workflow.variables[name]
        for name in declared:
            entry.registry.withdraw(name)
        raise
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
        entry.program.cancel()
    await settle(entry)


async def settle(entry: WorkflowEntry) -> None:
    """Wait until the program has ended and none of its tasks is left."""
    with contextlib.suppress(Exception):
        await entry.program.wait()


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
