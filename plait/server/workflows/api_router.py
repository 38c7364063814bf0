"""REST workflows: submit, inspect, stream events, cancel, list; client-side tool results; open (growing) workflows.

```
POST   /v1/workflows                      submit (201 {"id", "state", ...}); body: an envelope or a bare spec;
                                          an Idempotency-Key header makes retries return the same workflow
GET    /v1/workflows?limit=&after=        the caller's workflows this process holds, newest first (after a
                                          restart: the resumed ones and those looked up by id since)
GET    /v1/workflows/{id}                 state, per-node states and timings, outputs, pending tool calls, error
GET    /v1/workflows/{id}/events          server-sent events (replayed from the start or from Last-Event-ID,
                                          then live; ends after the final done / failed / cancelled event)
DELETE /v1/workflows/{id}                 cancel; 200 with the final status (also for an already finished one)
POST   /v1/workflows/{id}/tool_results    {"node", "result"} or {"node", "error"} for a waiting client-side tool
POST   /v1/workflows/{id}/nodes           add nodes to an open workflow (all or nothing)
POST   /v1/workflows/{id}/close           end an open workflow ({"error": ...} ends it as failed)
GET    /v1/tools                          the server-side tools workflows may call, with their JSON schemas
```
Every route needs the caller's API key; another tenant's workflow answers 404 like an unknown id. With a journal
(``durability.py``), workflows and their ids survive a restart of the server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import msgspec
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response, StreamingResponse

from plait.dag import ToolCall
from plait.server.errors import APIError
from plait.server.tenants import Tenant, current_tenant
from plait.server.workflows.client_tools import ToolCallStateError
from plait.server.workflows.durability import IDEMPOTENCY_HEADER, check_idempotency_key, request_digest
from plait.server.workflows.protocol import (
    CloseRequest,
    NodeBatch,
    ToolResult,
    WorkflowSubmission,
    convert,
    openapi_body,
    parse_submission,
    path_pointer,
    read_json,
)
from plait.server.workflows.registry import WorkflowEntry
from plait.server.workflows.serving import (
    add_nodes,
    cancel_workflow,
    close_workflow,
    submit_workflow,
    workflows_of,
)
from plait.server.workflows.views import json_response, workflow_status, workflow_summary

router = APIRouter(prefix="/v1", tags=["workflows"])
TenantDep = Annotated[Tenant, Depends(current_tenant)]

KEEPALIVE_S = 15.0  # an SSE comment this often keeps proxies from closing a quiet stream
_NOT_FOUND = {404: {"description": "no such workflow (or another tenant's)"}}
_BAD_BODY = {400: {"description": "not JSON"}, 422: {"description": "invalid; the error names the field"}}


def _entry(request: Request, workflow_id: str, tenant: Tenant) -> WorkflowEntry:
    return workflows_of(request.app.state.plait).get(workflow_id, tenant.name)


@router.post(
    "/workflows",
    status_code=201,
    summary="Submit a workflow",
    description=(
        'Body: `{"workflow": <workflow spec>, "inputs", "client_tools", "fail_fast", "priority", '
        '"deadline_s", "open"}`, or a bare workflow spec (`nodes` at the top level). The whole workflow is '
        "checked first; a 422 lists every problem (`error.problems`: node, field, message). With an "
        "`Idempotency-Key` header, a retry of the same request (same key and body) returns the workflow the first "
        "one created (with `Idempotent-Replayed: true`) instead of starting another; the key with another body is "
        "a 422. A server with a journal answers 201 once the workflow is durable."
    ),
    openapi_extra=openapi_body(WorkflowSubmission, path_pointer("/v1/workflows", "post"), "a workflow to run"),
    responses={
        **_BAD_BODY,
        413: {"description": "too many nodes"},
        429: {"description": "over a tenant limit"},
        503: {"description": "the journal cannot record it"},
    },
)
async def submit(request: Request, tenant: TenantDep) -> Response:
    raw = await read_json(request)
    spec, options = parse_submission(raw)
    key = request.headers.get(IDEMPOTENCY_HEADER)
    digest = None
    if key is not None:
        check_idempotency_key(key)
        digest = request_digest(raw)
    entry, created = await submit_workflow(
        request.app.state.plait, tenant, spec, options, idempotency_key=key, request_digest=digest
    )
    headers = {"Location": f"/v1/workflows/{entry.id}"}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    return json_response(workflow_status(entry), status_code=201, headers=headers)


@router.get("/workflows", summary="List the caller's workflows, newest first")
async def list_workflows(
    request: Request,
    tenant: TenantDep,
    limit: Annotated[int, Query(ge=1, le=100, description="at most this many")] = 20,
    after: Annotated[str | None, Query(description="continue after this workflow id (the page's last_id)")] = None,
) -> Response:
    entries, has_more = workflows_of(request.app.state.plait).page(tenant.name, limit, after)
    data = [workflow_summary(entry) for entry in entries]
    return json_response(
        {
            "object": "list",
            "data": data,
            "has_more": has_more,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }
    )


@router.get("/workflows/{workflow_id}", summary="A workflow's state, nodes, outputs", responses=_NOT_FOUND)
async def get_workflow(request: Request, workflow_id: str, tenant: TenantDep) -> Response:
    return json_response(workflow_status(_entry(request, workflow_id, tenant)))


@router.get(
    "/workflows/{workflow_id}/events",
    summary="Stream a workflow's events (server-sent events)",
    description=(
        "Events: `node_started`, `token` (generated text), `tool_call` (a client-side tool waits), `node_finished` "
        "(with the output's value), then one of `done`, `failed`, `cancelled`, after which the stream ends. Each "
        "has an `id`; a reconnecting client sends `Last-Event-ID` (or `?after=`) to skip what it has seen. Ids "
        "increase across server restarts; a stream that ends without a final event (the server stopped: its last "
        "event is `suspended`) continues after the restart by reconnecting with `Last-Event-ID`."
    ),
    response_class=StreamingResponse,
    responses={**_NOT_FOUND, 200: {"content": {"text/event-stream": {}}}},
)
async def events(
    request: Request,
    workflow_id: str,
    tenant: TenantDep,
    after: Annotated[int, Query(ge=0, description="only events with a larger id")] = 0,
) -> StreamingResponse:
    entry = _entry(request, workflow_id, tenant)
    last_seen = request.headers.get("last-event-id", "")
    start = max(after, int(last_seen) if last_seen.isdigit() else 0)

    async def stream() -> AsyncIterator[bytes]:
        quiet_s = 0.0
        async for event in entry.log.follow(start, idle_s=1.0):
            if event is not None:
                quiet_s = 0.0
                yield event.sse()
                continue
            if await request.is_disconnected():
                return  # the client left: stop its stream (the workflow goes on)
            quiet_s += 1.0
            if quiet_s >= KEEPALIVE_S:
                quiet_s = 0.0
                yield b": keep-alive\n\n"

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)


@router.delete(
    "/workflows/{workflow_id}",
    summary="Cancel a workflow",
    description="Aborts its engine requests (freeing their KV) and tools. Idempotent: a finished workflow is left as "
    "it is and its final status returned.",
    responses=_NOT_FOUND,
)
async def cancel(request: Request, workflow_id: str, tenant: TenantDep) -> Response:
    entry = _entry(request, workflow_id, tenant)
    await cancel_workflow(entry)
    return json_response(workflow_status(entry))


@router.post(
    "/workflows/{workflow_id}/tool_results",
    summary="Answer a client-side tool call",
    openapi_extra=openapi_body(
        ToolResult, path_pointer("/v1/workflows/{workflow_id}/tool_results", "post"), "the result of a tool call"
    ),
    responses={**_NOT_FOUND, **_BAD_BODY, 409: {"description": "the node is not waiting for a result"}},
)
async def tool_result(request: Request, workflow_id: str, tenant: TenantDep) -> Response:
    entry = _entry(request, workflow_id, tenant)
    body = convert(await read_json(request), ToolResult)
    has_result = body.result is not msgspec.UNSET
    if has_result == (body.error is not None):
        raise APIError(422, "give exactly one of 'result' and 'error'", field="result")
    node = entry.program.workflow.nodes.get(body.node)
    if node is None:
        raise APIError(422, f"node: workflow '{entry.id}' has no node '{body.node}'", field="node")
    tool = entry.registry.client_tool(node.tool) if isinstance(node, ToolCall) else None
    if tool is None:
        raise APIError(409, f"node '{body.node}' does not call a client-side tool", field="node")
    if has_result:
        problem = tool.result_problem(body.result)
        if problem is not None:
            raise APIError(422, f"result: {problem}", field="result")
    try:
        entry.tools.answer(body.node, body.result if has_result else None, body.error)
    except ToolCallStateError as error:
        state = entry.program.nodes[body.node].state.value
        raise APIError(409, f"{error} (node state: {state})", field="node") from None
    return json_response({"id": entry.id, "node": body.node, "accepted": True})


@router.post(
    "/workflows/{workflow_id}/nodes",
    summary="Add nodes to an open workflow",
    openapi_extra=openapi_body(
        NodeBatch, path_pointer("/v1/workflows/{workflow_id}/nodes", "post"), "nodes to add, in order"
    ),
    responses={**_NOT_FOUND, **_BAD_BODY, 409: {"description": "not open, or ended"}, 413: {"description": "too many"}},
)
async def grow(request: Request, workflow_id: str, tenant: TenantDep) -> Response:
    entry = _entry(request, workflow_id, tenant)
    batch = convert(await read_json(request), NodeBatch)
    added = await add_nodes(request.app.state.plait, entry, batch)
    return json_response({"id": entry.id, "added": added, "state": entry.program.state.value})


@router.post(
    "/workflows/{workflow_id}/close",
    summary="End an open workflow",
    openapi_extra=openapi_body(
        CloseRequest, path_pointer("/v1/workflows/{workflow_id}/close", "post"), "how the caller's program ended"
    ),
    responses={**_NOT_FOUND, 409: {"description": "not an open workflow"}},
)
async def close(request: Request, workflow_id: str, tenant: TenantDep) -> Response:
    entry = _entry(request, workflow_id, tenant)
    raw = await request.body()
    body = convert(await read_json(request), CloseRequest) if raw.strip() else CloseRequest()
    await close_workflow(entry, body.error)
    return json_response(workflow_status(entry))


@router.get("/tools", summary="Server-side tools that workflows may call")
async def tools(request: Request, tenant: TenantDep) -> Response:
    del tenant  # authentication only: every tenant sees the same server tools
    registry = request.app.state.plait.executor.tools
    data = [
        {
            "name": tool.name,
            "description": tool.description,
            "parameters": tool.spec.parameters,
            "returns": tool.spec.returns,
        }
        for tool in registry
    ]
    return json_response({"object": "list", "data": data})
