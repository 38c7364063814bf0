"""The live dashboard: one page and the bounded JSON endpoints it polls. Read-only, per tenant.

```
GET  /dashboard                          the page (``?key=KEY`` signs in: sets the cookie, redirects without the key);
                                         the login form (401) when the server has API keys and the caller has none
POST /dashboard/login                    form field ``key``: sets the cookie, redirects to /dashboard
POST /dashboard/logout                   clears the cookie
GET  /dashboard/api/overview             KV pool, queue depth and throughput charts (SVG) and the latest sample
GET  /dashboard/api/programs             the caller's REST workflows and OpenAI-API programs: running first, then
                                         newest first;
                                         ``offset``, ``limit`` (at most MAX_PAGE), ``state`` = all|running|finished
GET  /dashboard/api/programs/{id}        one program: summary, node rows (at most MAX_NODES), graph and timeline
GET  /dashboard/api/programs/{id}/trace  its Chrome trace (a download)
GET  /dashboard/api/server_info          what ``GET /server_info`` answers: the effective settings and policy
```
Every route authenticates like the API (header) or by the dashboard's cookie (``dashboard_auth``). Another tenant's
program answers 404 like an unknown id and never appears in a list. Engine-wide numbers (the KV pool, the queue,
throughput, the policy) are the same for every tenant. The routes are not in the OpenAPI schema: they serve the page,
not API clients.
"""

from __future__ import annotations

import re
import time
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from plait.server.dashboard.charts_svg import kv_chart_svg, queue_chart_svg, throughput_chart_svg
from plait.server.dashboard.dashboard_auth import (
    clear_key_cookie,
    dashboard_tenant,
    set_key_cookie,
    tenant_of_key,
)
from plait.server.dashboard.graph_svg import graph_svg
from plait.server.dashboard.kv_history import kv_history_of
from plait.server.dashboard.page import dashboard_page, login_page
from plait.server.dashboard.program_snapshot import MAX_NODES, conversation_snapshot, program_trace, snapshot_of
from plait.server.dashboard.timeline_svg import timeline_svg
from plait.server.errors import APIError
from plait.server.info_routes import server_info
from plait.server.openai.program_registry import programs_of
from plait.server.openai.programs import ConversationProgram
from plait.server.state import ServerState
from plait.server.tenants import Tenant
from plait.server.workflows.registry import WorkflowEntry, registry_of
from plait.server.workflows.views import json_response, node_view

router = APIRouter(include_in_schema=False)
TenantDep = Annotated[Tenant, Depends(dashboard_tenant)]

MAX_PAGE = 100  # programs per list answer
DEFAULT_PAGE = 50
CHART_WINDOW_S = 180.0  # the live charts show this much history
_NO_STORE = {"Cache-Control": "no-store"}
_STATES = ("all", "running", "finished")
_FINISHED_STATES = ("done", "failed", "cancelled")


def _state(request: Request) -> ServerState:
    state = request.app.state.plait
    if not state.loaded:
        raise APIError(503, "the server is starting: the model is loading", headers={"Retry-After": "2"})
    return state


@router.get("/dashboard", response_class=HTMLResponse)
async def dashboard(request: Request, key: str | None = None) -> Response:
    config = request.app.state.plait.config
    if key is not None:
        if not config.auth_enabled:
            return RedirectResponse("/dashboard", status_code=303)
        try:
            tenant_of_key(request, key)
        except APIError as error:
            return HTMLResponse(login_page(error.message), status_code=401, headers=_NO_STORE)
        response = RedirectResponse("/dashboard", status_code=303)  # the key leaves the address bar and history
        set_key_cookie(request, response, key)
        return response
    try:
        tenant = dashboard_tenant(request)
    except APIError:
        return HTMLResponse(login_page(), status_code=401, headers=_NO_STORE)
    signed_in = config.auth_enabled and "authorization" not in request.headers and "x-api-key" not in request.headers
    return HTMLResponse(dashboard_page(tenant.name, signed_in), headers=_NO_STORE)


@router.post("/dashboard/login", response_class=HTMLResponse)
async def login(request: Request) -> Response:
    body = (await request.body())[:4096].decode("utf-8", errors="replace")
    key = (parse_qs(body).get("key") or [""])[0]
    try:
        tenant_of_key(request, key)
    except APIError as error:
        return HTMLResponse(login_page(error.message), status_code=401, headers=_NO_STORE)
    response = RedirectResponse("/dashboard", status_code=303)
    set_key_cookie(request, response, key)
    return response


@router.post("/dashboard/logout")
async def logout() -> Response:
    response = RedirectResponse("/dashboard", status_code=303)
    clear_key_cookie(response)
    return response


@router.get("/dashboard/api/overview")
async def overview(request: Request, tenant: TenantDep) -> Response:
    del tenant  # authentication only: the engine's numbers are the same for every tenant
    state = _state(request)
    history = kv_history_of(state)
    samples = history.samples(since=time.monotonic() - CHART_WINDOW_S)
    latest = history.latest()
    body = {
        "phase": state.phase.value,
        "latest": latest.to_dict() if latest is not None else None,
        "kv_svg": kv_chart_svg(samples),
        "queue_svg": queue_chart_svg(samples),
        "throughput_svg": throughput_chart_svg(samples),
    }
    return JSONResponse(body, headers=_NO_STORE)


def _summary(entry: WorkflowEntry) -> dict[str, Any]:
    program = entry.program
    return {
        "id": entry.id,
        "name": program.record.name,
        "state": program.state.value,
        "created_at": entry.created_at,
        "elapsed_s": program.record.elapsed_s,
        "error": entry.error,
        "nodes": len(program.workflow.nodes),
        "nodes_done": sum(1 for record in program.nodes.values() if record.state.finished),
    }


def _conversation_summary(program: ConversationProgram) -> dict[str, Any]:
    ended = program.state.value != "open"
    calls = [record for record in program.records.values() if record.kind == "llm"]
    return {
        "id": program.program_id,
        "name": f"OpenAI API ({program.origin.value})",
        "state": "done" if ended else "running",
        "created_at": program.created_at,
        "elapsed_s": (program.last_active if ended else time.monotonic()) - program.started_at,
        "error": None,
        "nodes": len(program.records),
        "nodes_done": sum(1 for record in program.records.values() if record.state.finished),
        "calls": len(calls),
    }


@router.get("/dashboard/api/programs")
async def programs(
    request: Request,
    tenant: TenantDep,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = DEFAULT_PAGE,
    state: str = "all",
) -> Response:
    """REST workflows and OpenAI-API programs together: running first, then newest first."""
    if state not in _STATES:
        raise APIError(422, f"state: choose one of {', '.join(_STATES)}", field="state")
    server = _state(request)
    registry = registry_of(server)
    mine, _ = registry.page(tenant.name, limit=len(registry), after=None)  # newest first
    rows = [(entry.created_at, _summary(entry)) for entry in mine]
    rows += [(p.created_at, _conversation_summary(p)) for p in programs_of(server).of_tenant(tenant.name, ended=True)]
    rows.sort(key=lambda row: row[0], reverse=True)
    running = [row for _, row in rows if row["state"] not in _FINISHED_STATES]
    finished = [row for _, row in rows if row["state"] in _FINISHED_STATES]
    chosen = {"all": running + finished, "running": running, "finished": finished}[state]
    body = {
        "tenant": tenant.name,
        "total": len(chosen),
        "running": len(running),
        "offset": offset,
        "limit": limit,
        "programs": chosen[offset : offset + limit],
    }
    return JSONResponse(body, headers=_NO_STORE)


def _conversation(state: ServerState, program_id: str, tenant: Tenant) -> ConversationProgram | None:
    """The tenant's OpenAI-API program ``program_id`` (open or recently ended), or None."""
    try:
        return programs_of(state).get(tenant.name, program_id, ended=True)
    except APIError:
        return None


@router.get("/dashboard/api/programs/{program_id}")
async def program(request: Request, program_id: str, tenant: TenantDep) -> Response:
    state = _state(request)
    timeline = state.executor.planner.timeline
    conversation = _conversation(state, program_id, tenant)
    if conversation is not None:
        summary = _conversation_summary(conversation)
        snapshot = conversation_snapshot(conversation, timeline)
        nodes = [{"node": n.node_id, "kind": n.kind, "state": n.state, "detail": n.detail} for n in snapshot.nodes]
    else:
        entry = registry_of(state).get(program_id, tenant.name)
        summary = _summary(entry)
        nodes = [node_view(entry, node_id) for node_id in list(entry.program.nodes)[:MAX_NODES]]
        waiting = {row["node"]: row["state"] for row in nodes if row["state"] == "waiting_for_tool"}
        snapshot = snapshot_of(entry.program, timeline, states=waiting)
    now = time.monotonic()
    body = {
        "program": summary,
        "nodes": nodes,
        "graph_svg": graph_svg(snapshot.nodes, snapshot.edges, omitted=snapshot.omitted_nodes),
        "timeline_svg": timeline_svg(snapshot, now),
        "trace_url": f"/dashboard/api/programs/{program_id}/trace",
    }
    response = json_response(body)
    response.headers.update(_NO_STORE)
    return response


@router.get("/dashboard/api/programs/{program_id}/trace")
async def program_trace_file(request: Request, program_id: str, tenant: TenantDep) -> Response:
    state = _state(request)
    conversation = _conversation(state, program_id, tenant)
    if conversation is not None:
        trace = program_trace(state.executor.planner.timeline, conversation.planner_id)
    else:
        trace = program_trace(state.executor.planner.timeline, registry_of(state).get(program_id, tenant.name).id)
    filename = re.sub(r"[^A-Za-z0-9_.-]", "_", f"plait-trace-{program_id}.json")
    headers = {"Content-Disposition": f'attachment; filename="{filename}"', **_NO_STORE}
    return json_response(trace, headers=headers)


@router.get("/dashboard/api/server_info")
async def dashboard_server_info(request: Request, tenant: TenantDep) -> dict[str, Any]:
    _state(request)
    return await server_info(request, tenant)
