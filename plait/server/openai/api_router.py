"""The OpenAI-compatible API: ``GET /v1/models``, ``POST /v1/chat/completions``, ``POST /v1/completions``.

The body is validated (``protocol``) and turned into a plan (``params``); ``serving`` runs it (checks, admission, the
agent program it joins, the engine run) and the route renders the whole body or the event stream (``stream``). Every
generation response names its program in the ``X-Plait-Program-Id`` header.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from plait.engine import InvalidRequestError
from plait.server.dashboard.program_snapshot import program_trace
from plait.server.errors import APIError
from plait.server.openai.chat_output import ChatOutput
from plait.server.openai.completion_output import CompletionOutput
from plait.server.openai.kv_hints import KVHints, KVHintsEnvelope
from plait.server.openai.models import check_model, model_card
from plait.server.openai.params import GenerationPlan, chat_plan, completion_plan
from plait.server.openai.program_registry import programs_of
from plait.server.openai.programs import ConversationProgram
from plait.server.openai.protocol import ChatCompletionRequest, CompletionRequest
from plait.server.openai.responses import (
    ChatCompletion,
    ChatCompletionChunk,
    ErrorResponse,
    ModelCard,
    ModelList,
    TextCompletion,
    dump,
)
from plait.server.openai.serving import ProgramRequest, run_to_end, start_generation, token_texts
from plait.server.openai.stream import EventStream
from plait.server.state import ServerState
from plait.server.tenants import Tenant, current_tenant

router = APIRouter(tags=["openai"])
TenantDep = Annotated[Tenant, Depends(current_tenant)]

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Invalid request (the body names the field)"},
    401: {"model": ErrorResponse, "description": "Missing or unknown API key"},
    404: {"model": ErrorResponse, "description": "Unknown model"},
    422: {"model": ErrorResponse, "description": "The body does not match the schema (the body names the field)"},
    429: {"model": ErrorResponse, "description": "Over the tenant's limits; see Retry-After"},
    503: {"model": ErrorResponse, "description": "The server is shutting down"},
}


def _generation_responses(whole: type, chunk: type) -> dict[int | str, dict[str, Any]]:
    stream_doc = (
        f"With `stream: true`: server-sent events, each `data: <{chunk.__name__} JSON>`, ending with `data: [DONE]`."
    )
    time_limit_doc = (
        "A request still running at its time limit (the server's `max_request_time_s`, or the request's "
        '`deadline_s` when lower) is stopped and ends as at `max_tokens`: the text so far, `finish_reason: "length"`.'
    )
    return {
        200: {
            "model": whole,
            "description": f"The whole {whole.__name__}. {stream_doc} {time_limit_doc}",
            "content": {"text/event-stream": {"schema": {"type": "string", "description": stream_doc}}},
        },
        **_ERRORS,
    }


@router.get(
    "/v1/models",
    response_model=ModelList,
    summary="The served model",
    responses={401: _ERRORS[401]},
)
async def list_models(request: Request, tenant: TenantDep) -> ModelList:
    state: ServerState = request.app.state.plait
    state.metrics.requests.labels("models", "200").inc()
    return ModelList(data=[model_card(state)])


@router.get(
    "/v1/models/{model_id}",
    response_model=ModelCard,
    summary="One model",
    responses={401: _ERRORS[401], 404: _ERRORS[404]},
)
async def get_model(model_id: str, request: Request, tenant: TenantDep) -> ModelCard:
    state: ServerState = request.app.state.plait
    try:
        check_model(state, model_id)
    except APIError as error:
        state.metrics.requests.labels("models", str(error.status)).inc()
        raise
    state.metrics.requests.labels("models", "200").inc()
    return model_card(state)


@router.post(
    "/v1/chat/completions",
    response_model=None,
    summary="Chat completion (OpenAI-compatible; tools, structured output, streaming)",
    responses=_generation_responses(ChatCompletion, ChatCompletionChunk),
)
async def chat_completions(body: ChatCompletionRequest, request: Request, tenant: TenantDep) -> Response:
    state: ServerState = request.app.state.plait
    plan = _counted(state, "chat", lambda: chat_plan(body))
    messages = [message.model_dump(exclude_none=True) for message in body.messages]
    return await _serve(state, request, tenant, plan, body.model, body.kv_hints, messages)


@router.post(
    "/v1/completions",
    response_model=None,
    summary="Text completion (OpenAI's legacy completions; streaming)",
    responses=_generation_responses(TextCompletion, TextCompletion),
)
async def completions(body: CompletionRequest, request: Request, tenant: TenantDep) -> Response:
    state: ServerState = request.app.state.plait
    plan = _counted(state, "completions", lambda: completion_plan(body))
    return await _serve(state, request, tenant, plan, body.model, body.kv_hints)


def _counted(state: ServerState, endpoint: str, make: Any) -> GenerationPlan:
    try:
        return make()
    except APIError as error:
        state.metrics.requests.labels(endpoint, str(error.status)).inc()
        raise


async def _serve(
    state: ServerState,
    request: Request,
    tenant: Tenant,
    plan: GenerationPlan,
    model: str,
    kv_hints: Any,
    messages: list[dict[str, Any]] | None = None,
) -> Response:
    try:
        program = ProgramRequest.of(request, plan, KVHints.parse(kv_hints), messages)
    except APIError as error:
        state.metrics.requests.labels(plan.endpoint, str(error.status)).inc()
        raise
    prefix = "chatcmpl" if plan.endpoint == "chat" else "cmpl"
    started = await start_generation(state, tenant, plan, model, program, id_prefix=prefix)
    gen = started.gen
    output: ChatOutput | CompletionOutput
    try:
        texts = token_texts(state)
        if plan.endpoint == "chat":
            output = ChatOutput(gen, started.completion_id, started.served_model, texts)
        else:
            echo = "" if not plan.echo else plan.prompt or state.engine.tokenizer.decode(started.prompt_ids)
            output = CompletionOutput(gen, started.completion_id, started.served_model, texts, echo)
    except BaseException:
        await started.updates.aclose()
        gen.close(500)
        raise
    if plan.stream:
        response: Response = EventStream(gen, output, started.updates, started.first).response()
    else:
        status = await run_to_end(request, gen, started.updates)
        response = JSONResponse(dump(output.whole()), status_code=status)
    response.headers.update(started.headers)
    response.headers.update(plan.response_headers)  # what the request asked that was ignored or unenforced
    return response


# ---- agent programs --------------------------------------------------------------------------------------------------

_PROGRAM_ERRORS = {401: _ERRORS[401], 404: {"model": ErrorResponse, "description": "No such program of the caller"}}


def _program_view(state: ServerState, program: ConversationProgram) -> dict[str, Any]:
    """A program's summary, its calls, and its timeline (seconds from its start)."""
    events = []
    for event in state.executor.planner.timeline.events(program.planner_id):
        row: dict[str, Any] = {"kind": event.kind.value, "node": event.node}
        row["start_s"] = event.start - program.started_at
        if event.end is not None:
            row["end_s"] = event.end - program.started_at
        if event.args:
            row["args"] = event.args
        events.append(row)
    return {
        **program.summary(),
        "calls_detail": [log.to_dict() for log in program.calls],
        "timeline": events,
        "trace_url": f"/v1/programs/{program.program_id}/trace",
    }


@router.get("/v1/programs", summary="The caller's agent programs on the OpenAI API, newest first")
async def list_programs(request: Request, tenant: TenantDep, include_ended: bool = False) -> dict[str, Any]:
    state: ServerState = request.app.state.plait
    programs = programs_of(state).of_tenant(tenant.name, ended=include_ended)
    return {"object": "list", "data": [program.summary() for program in programs]}


@router.get("/v1/programs/{program_id}", summary="One program: its calls and timeline", responses=_PROGRAM_ERRORS)
async def get_program(program_id: str, request: Request, tenant: TenantDep) -> dict[str, Any]:
    state: ServerState = request.app.state.plait
    return _program_view(state, programs_of(state).get(tenant.name, program_id, ended=True))


@router.get(
    "/v1/programs/{program_id}/trace",
    summary="A program's timeline as a Chrome trace (chrome://tracing, Perfetto)",
    responses=_PROGRAM_ERRORS,
)
async def get_program_trace(program_id: str, request: Request, tenant: TenantDep) -> Response:
    state: ServerState = request.app.state.plait
    program = programs_of(state).get(tenant.name, program_id, ended=True)
    trace = program_trace(state.executor.planner.timeline, program.planner_id)
    filename = re.sub(r"[^A-Za-z0-9_.-]", "_", f"plait-trace-{program_id}.json")
    return JSONResponse(trace, headers={"Content-Disposition": f'attachment; filename="{filename}"'})


@router.delete(
    "/v1/programs/{program_id}",
    summary="End a program now: its KV pins, reservations and bookkeeping are released",
    responses=_PROGRAM_ERRORS,
)
async def delete_program(program_id: str, request: Request, tenant: TenantDep) -> dict[str, Any]:
    state: ServerState = request.app.state.plait
    programs_of(state).close(tenant.name, program_id)
    return {"id": program_id, "object": "program.deleted", "deleted": True}


@router.post(
    "/v1/programs/{program_id}/kv_hints",
    summary="Apply KV hints to a program now (`retain`, `release`, `prefetch`)",
    responses={**_PROGRAM_ERRORS, 400: _ERRORS[400], 422: _ERRORS[422]},
)
async def program_kv_hints(
    program_id: str, body: KVHintsEnvelope, request: Request, tenant: TenantDep
) -> dict[str, Any]:
    state: ServerState = request.app.state.plait
    programs = programs_of(state)
    program = programs.get(tenant.name, program_id)
    hints = KVHints.parse(body, field="body")
    assert hints is not None
    if hints.retain_s is not None:
        programs.planner.retain(program.planner_id, hints.retain_s)
    if hints.release:
        programs.planner.release(program.planner_id)
    if hints.prefetch:
        programs.planner.prefetch(program.planner_id)
    return {"id": program_id, "object": "program", "applied": [action.type for action in body.actions]}


class MigrateBody(BaseModel):
    """Where to move the program: a replica index of ``/server_info``'s ``replicas``."""

    replica: int


@router.post(
    "/v1/programs/{program_id}/migrate",
    summary="Move a program to another engine replica with its KV (servers started with --replicas)",
    responses={
        **_PROGRAM_ERRORS,
        409: {"model": ErrorResponse, "description": "This server runs one engine (no replicas to move to)"},
        422: {"model": ErrorResponse, "description": "No such live replica (the body names the field)"},
    },
)
async def migrate_program(program_id: str, body: MigrateBody, request: Request, tenant: TenantDep) -> dict[str, Any]:
    state: ServerState = request.app.state.plait
    program = programs_of(state).get(tenant.name, program_id)
    migrate = getattr(state.engine, "migrate", None)
    if migrate is None:
        raise APIError(409, "this server runs one engine: start it with --replicas N to move programs", field="replica")
    try:
        source = await migrate(program.planner_id, body.replica)
    except InvalidRequestError as error:
        raise APIError(422, str(error), field="replica") from None
    return {"id": program_id, "object": "program.migrated", "from": source, "replica": body.replica}
