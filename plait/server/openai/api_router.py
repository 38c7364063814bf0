"""The OpenAI-compatible API: ``GET /v1/models``, ``POST /v1/chat/completions``, ``POST /v1/completions``.

A request's life: the body is validated (``openai_protocol``), turned into a plan (``openai_params``), its prompt is
tokenized and checked against the context window and ``max_prompt_tokens``, a given ``max_tokens`` is checked against
the room the context window leaves (400 over it; an omitted one defaults to what fits), its tokens (prompt +
``max_tokens`` x ``n``) are reserved for the tenant (429 over the limit), and it runs on the engine
(``openai_generation``) for at most the time limit. The route waits for the first update before answering, so every
request error is a 4xx with the field named; the answer is then a whole JSON body or an event stream
(``openai_stream``). The reservation is released exactly once, however the request ends; a client that goes away
aborts the engine request.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from plait.engine import GenerateRequest, InvalidRequestError, check_max_tokens_fit
from plait.server.errors import APIError
from plait.server.openai.chat_output import ChatOutput
from plait.server.openai.completion_output import CompletionOutput
from plait.server.openai.generation import Generation, GenerationFailed, SampleUpdate
from plait.server.openai.logprobs import TokenTexts
from plait.server.openai.models import check_model, model_card
from plait.server.openai.params import DEFAULT_MAX_TOKENS, GenerationPlan, chat_plan, completion_plan
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
from plait.server.openai.stream import CLIENT_CLOSED, EventStream
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
    return await _serve(state, request, tenant, plan, body.model)


@router.post(
    "/v1/completions",
    response_model=None,
    summary="Text completion (OpenAI's legacy completions; streaming)",
    responses=_generation_responses(TextCompletion, TextCompletion),
)
async def completions(body: CompletionRequest, request: Request, tenant: TenantDep) -> Response:
    state: ServerState = request.app.state.plait
    plan = _counted(state, "completions", lambda: completion_plan(body))
    return await _serve(state, request, tenant, plan, body.model)


def _counted(state: ServerState, endpoint: str, make: Any) -> GenerationPlan:
    try:
        return make()
    except APIError as error:
        state.metrics.requests.labels(endpoint, str(error.status)).inc()
        raise


async def _serve(state: ServerState, request: Request, tenant: Tenant, plan: GenerationPlan, model: str) -> Response:
    try:
        served = check_model(state, model)
        prompt_ids = await _prompt_ids(state, plan)
        plan.sampling.max_tokens = _max_new_tokens(state, plan, len(prompt_ids))
        admission = _admit(state, tenant, plan, len(prompt_ids) + plan.sampling.max_tokens * plan.sampling.n)
    except APIError as error:
        state.metrics.requests.labels(plan.endpoint, str(error.status)).inc()
        raise
    prefix = "chatcmpl" if plan.endpoint == "chat" else "cmpl"
    completion_id = f"{prefix}-{secrets.token_hex(12)}"
    engine_request = GenerateRequest(
        prompt_token_ids=prompt_ids,
        sampling=plan.sampling,
        priority=plan.priority,
        request_id=completion_id,
        program_id=plan.program_id,
        hints=plan.hints,
    )
    gen = Generation(state, plan, engine_request, admission, len(prompt_ids), _time_limit_s(state, plan))
    output: ChatOutput | CompletionOutput
    try:
        texts = _token_texts(state)
        if plan.endpoint == "chat":
            output = ChatOutput(gen, completion_id, served, texts)
        else:
            echo = "" if not plan.echo else plan.prompt or state.engine.tokenizer.decode(prompt_ids)
            output = CompletionOutput(gen, completion_id, served, texts, echo)
    except BaseException:
        gen.close(500)
        raise
    updates = gen.updates()
    first = await _first_update(gen, updates)
    if plan.stream:
        return EventStream(gen, output, updates, first).response()
    status = await _run_to_end(request, gen, updates)
    return JSONResponse(dump(output.whole()), status_code=status)


async def _prompt_ids(state: ServerState, plan: GenerationPlan) -> list[int]:
    """Tokenize once (in a worker thread: rendering and tokenizing a long conversation takes a while)."""
    probe = GenerateRequest(messages=plan.messages, prompt=plan.prompt, prompt_token_ids=plan.prompt_token_ids)
    try:
        ids = await anyio.to_thread.run_sync(state.engine.prompt_ids, probe)
    except InvalidRequestError as error:
        raise plan.error(error) from error
    max_context = state.engine.max_context
    limit = min(state.config.max_prompt_tokens or max_context, max_context - 1)
    if len(ids) > limit:
        where = "the server's max_prompt_tokens" if limit < max_context - 1 else "the context window"
        raise APIError(400, f"the prompt has {len(ids)} tokens, over {where} ({limit})", field=plan.prompt_field)
    return ids


def _max_new_tokens(state: ServerState, plan: GenerationPlan, prompt_tokens: int) -> int:
    """The request's ``max_tokens``: a given value over the room the context window leaves is a 400 naming the field
    (OpenAI's and vLLM's answer; lowering it silently would hide the mistake); an omitted one is
    ``DEFAULT_MAX_TOKENS`` capped to that room."""
    max_context = state.engine.max_context
    if plan.requested_max_tokens is None:
        return max(1, min(DEFAULT_MAX_TOKENS, max_context - prompt_tokens))
    try:
        check_max_tokens_fit(plan.requested_max_tokens, prompt_tokens, max_context, plan.max_tokens_field)
    except InvalidRequestError as error:
        raise APIError(400, str(error), field=error.field) from error  # the message names the field too
    return plan.requested_max_tokens


def _time_limit_s(state: ServerState, plan: GenerationPlan) -> float | None:
    """The lower of the server's ``max_request_time_s`` (0: none) and the request's own; None when neither is set."""
    limits = [limit for limit in (state.config.max_request_time_s, plan.deadline_s) if limit]
    return min(limits) if limits else None


def _admit(state: ServerState, tenant: Tenant, plan: GenerationPlan, tokens: int) -> Any:
    try:
        return state.usage.admit(tenant, tokens)
    except APIError as error:
        if error.field == "max_tokens":
            error.field = plan.max_tokens_field
        raise


def _token_texts(state: ServerState) -> TokenTexts:
    texts = state.extras.get("openai_token_texts")
    if texts is None:
        texts = state.extras["openai_token_texts"] = TokenTexts(state.engine.tokenizer)
    return texts


async def _first_update(gen: Generation, updates: AsyncIterator[SampleUpdate]) -> SampleUpdate | None:
    """Start the request and wait for its first update: the engine validates the request (and compiles its grammar)
    on the way, and its errors are still answered as 4xx."""
    try:
        return await anext(updates, None)
    except InvalidRequestError as error:
        gen.close(400)
        raise gen.plan.error(error) from error
    except GenerationFailed as failure:
        gen.close(failure.status)
        raise failure.api_error() from failure
    except Exception:
        await updates.aclose()
        gen.close(500)
        raise
    except BaseException:  # cancelled
        await updates.aclose()
        gen.close(CLIENT_CLOSED)
        raise


async def _run_to_end(request: Request, gen: Generation, updates: AsyncIterator[SampleUpdate]) -> int:
    """Drain ``updates`` (the samples accumulate in ``gen``); stop early, aborting the request, if the client goes."""
    status = 500  # until the generation ends one way or another
    disconnected = False
    failure: GenerationFailed | None = None
    try:
        async with anyio.create_task_group() as group:

            async def watch_disconnect() -> None:
                nonlocal disconnected
                # The body has been read: the next message is the disconnect. (Polling request.is_disconnected()
                # never sees it through BaseHTTPMiddleware, whose receive cannot complete without suspending.)
                while (await request.receive())["type"] != "http.disconnect":
                    pass
                disconnected = True
                group.cancel_scope.cancel()

            group.start_soon(watch_disconnect)
            try:
                async for _ in updates:
                    pass
                status = 200
            except GenerationFailed as error:
                failure, status = error, error.status
            group.cancel_scope.cancel()
        if disconnected and status == 500:
            status = CLIENT_CLOSED
    finally:
        await updates.aclose()
        gen.close(status)
    if failure is not None:
        raise failure.api_error()
    return status
