"""Response bodies of the workflow routes: a workflow's status, its list summary, node and final event payloads.

Node records come from the runtime (``NodeRecord.to_dict``: state, timings, tokens, attempts, error); a client tool
call that waits for its result shows as ``"state": "waiting_for_tool"`` with the call (tool and arguments); a node
whose outcome came from the journal (it ran in an earlier process) has ``"replayed": true`` and no timings. Values
are the variables' JSON values; anything that is not JSON (a Python object a tool returned) is shown by its repr.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
from fastapi.responses import Response

from plait.runtime.program_execution import ProgramExecution
from plait.semantic_vars import VarState

if TYPE_CHECKING:
    from plait.server.workflows.registry import WorkflowEntry


def jsonable(value: Any) -> Any:
    """``value`` as JSON-compatible builtins (tuples become lists; unknown objects their repr)."""
    return msgspec.to_builtins(value, enc_hook=repr, str_keys=True)


def json_response(content: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        msgspec.json.encode(jsonable(content)), status_code=status_code, headers=headers, media_type="application/json"
    )


def outputs_of(program: ProgramExecution, *, open_program: bool = False) -> dict[str, Any]:
    """The workflow's output variables bound so far (an open workflow without declared outputs: its sinks)."""
    workflow = program.workflow
    names = workflow.outputs or (workflow.sink_variables() if open_program else [])
    return {name: _value(program, name) for name in names if _is_bound(program, name)}


def variables_of(program: ProgramExecution) -> dict[str, Any]:
    """Every variable a node produced that is bound so far."""
    return {
        name: _value(program, name)
        for name, variable in program.workflow.variables.items()
        if variable.producer is not None and variable.state is VarState.BOUND
    }


def _is_bound(program: ProgramExecution, name: str) -> bool:
    variable = program.workflow.variables.get(name)
    return variable is not None and variable.state is VarState.BOUND


def _value(program: ProgramExecution, name: str) -> Any:
    return jsonable(program.workflow.variables[name].value)  # bound: reading it has no effect on the program


def node_view(entry: WorkflowEntry, node_id: str) -> dict[str, Any]:
    record = entry.program.nodes[node_id]
    node = entry.program.workflow.nodes[node_id]
    data: dict[str, Any] = {**record.to_dict(), "output": node.output}
    if node.kind == "tool":
        data["tool"] = node.tool  # type: ignore[union-attr]
    if node_id in entry.program.replayed:
        data["replayed"] = True
    call = entry.tools.pending.get(node_id)
    if call is not None and not record.state.finished:
        data["state"] = "waiting_for_tool"
        data["tool_call"] = call.to_dict()
    return data


def workflow_status(entry: WorkflowEntry) -> dict[str, Any]:
    """``GET /v1/workflows/{id}``."""
    program = entry.program
    return {
        **workflow_summary(entry),
        "nodes": [node_view(entry, node_id) for node_id in program.nodes],
        "outputs": outputs_of(program, open_program=entry.open),
        "variables": variables_of(program),
        "pending_tool_calls": [call.to_dict() for call in entry.tools.pending.values()],
    }


def workflow_summary(entry: WorkflowEntry) -> dict[str, Any]:
    """One item of ``GET /v1/workflows``."""
    record = entry.program.record
    return {
        "id": entry.id,
        "object": "workflow",
        "name": record.name,
        "state": record.state.value,
        "open": entry.open,
        "created_at": entry.created_at,
        "elapsed_s": record.elapsed_s,
        "error": entry.error,
        "node_count": len(entry.program.nodes),
    }


def node_finished_data(program: ProgramExecution, node_id: str) -> dict[str, Any]:
    """A ``node_finished`` event: the node's state and error, and its output's value when it got one (a fallback
    counts) with the variable's metadata (finish reasons, choice scores)."""
    node = program.workflow.nodes[node_id]
    record = program.nodes[node_id]
    variable = program.workflow.variables[node.output]
    data: dict[str, Any] = {
        "node": node_id,
        "kind": node.kind,
        "state": record.state.value,
        "error": record.error,
        "output": node.output,
        "run_s": record.run_s,
    }
    if variable.state is VarState.BOUND:
        data["value"] = _value(program, node.output)
        data["metadata"] = jsonable(variable.metadata)
    return data


def final_event_data(entry: WorkflowEntry) -> dict[str, Any]:
    """The last event of a stream (``done``, ``failed`` or ``cancelled``)."""
    program = entry.program
    return {"state": program.state.value, "error": entry.error, "outputs": outputs_of(program, open_program=entry.open)}
