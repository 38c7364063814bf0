"""Serving one OpenAI-style generation: checks, admission, the program it joins, the engine run, and its end.

A request's life: its prompt is tokenized and checked against the context window and ``max_prompt_tokens``, a given
``max_tokens`` is checked against the room the context window leaves (400 over it; an omitted one defaults to what
fits), its tokens (prompt + ``max_tokens`` x ``n``) are reserved for the tenant (429 over the limit), it joins its
agent program (``programs.py``: explicit id, Responses chain, or a recognised continuation), and it runs on the engine
(``generation.py``) under the planner's priority for at most the time limit. ``start_generation`` waits for the first
update before the route answers, so every request error is a 4xx with the field named; the answer is then a whole JSON
body or an event stream. The admission is released, and the program's call ended, exactly once however the request
ends; a client that goes away aborts the engine request.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anyio
from fastapi import Request

from plait.engine import GenerateRequest, InvalidRequestError, check_max_tokens_fit
from plait.server.errors import APIError
from plait.server.openai.generation import Generation, GenerationFailed, SampleUpdate
from plait.server.openai.kv_hints import KVHints
from plait.server.openai.logprobs import TokenTexts
from plait.server.openai.models import check_model
from plait.server.openai.params import DEFAULT_MAX_TOKENS, GenerationPlan
from plait.server.openai.program_registry import programs_of
from plait.server.openai.programs import CallShape, ProgramCall, ProgramOrigin
from plait.server.openai.stream import CLIENT_CLOSED
from plait.server.state import ServerState
from plait.server.tenants import Tenant

PROGRAM_HEADER = "X-Plait-Program-Id"


@dataclass
class ProgramRequest:
    """How a request names its program: ``program_id`` (body, header, or a Responses chain's) and its origin."""

    program_id: str | None = None
    origin: ProgramOrigin = ProgramOrigin.EXPLICIT
    field: str = "program_id"
    kv_hints: KVHints | None = None
    # The conversation as the client sent it (chat): continuations are recognised on it, not on the rendering (which
    # depends on the request's tools and tool choice).
    messages: list[dict[str, Any]] | None = None
    new_program_id: str | None = None  # the name of the program it starts when it names none and continues none

    @classmethod
    def of(
        cls,
        request: Request,
        plan: GenerationPlan,
        kv_hints: KVHints | None = None,
        messages: list[dict[str, Any]] | None = None,
    ) -> ProgramRequest:
        """The body's ``program_id``, else the ``X-Plait-Program-Id`` header (an invalid one is a 400 naming it)."""
        if plan.program_id is not None:
            return cls(check_program_id(plan.program_id, "program_id"), kv_hints=kv_hints, messages=messages)
        header = request.headers.get(PROGRAM_HEADER)
        if header is None:
            return cls(kv_hints=kv_hints, messages=messages)
        header = check_program_id(header.strip(), PROGRAM_HEADER)
        return cls(header, field=PROGRAM_HEADER, kv_hints=kv_hints, messages=messages)


def check_program_id(program_id: str, field: str) -> str:
    """A program id is 1 to 256 printable ASCII characters (it is sent back in the ``X-Plait-Program-Id`` header);
    ``APIError`` 400 naming ``field`` otherwise."""
    if not (1 <= len(program_id) <= 256 and program_id.isascii() and program_id.isprintable()):
        raise APIError(400, "must be 1 to 256 printable ASCII characters", field=field)
    return program_id


@dataclass
class StartedGeneration:
    """A generation that has produced its first update (or ended): what the route renders."""

    gen: Generation
    updates: AsyncIterator[SampleUpdate]
    first: SampleUpdate | None
    served_model: str
    completion_id: str
    prompt_ids: list[int]

    @property
    def headers(self) -> dict[str, str]:
        call = self.gen.program_call
        return {PROGRAM_HEADER: call.program.program_id} if call is not None else {}


async def start_generation(
    state: ServerState,
    tenant: Tenant,
    plan: GenerationPlan,
    model: str,
    program: ProgramRequest,
    *,
    id_prefix: str,
    completion_id: str | None = None,
) -> StartedGeneration:
    """Check, admit, join the program, start the engine request and wait for its first update (module doc). The
    request's id is ``completion_id`` when given (a caller that names its program after it), else
    ``{id_prefix}-{random hex}``."""
    try:
        served = check_model(state, model)
        prompt_ids = await _prompt_ids(state, plan)
        plan.sampling.max_tokens = _max_new_tokens(state, plan, len(prompt_ids))
        admission = _admit(state, tenant, plan, len(prompt_ids) + plan.sampling.max_tokens * plan.sampling.n)
    except APIError as error:
        state.metrics.requests.labels(plan.endpoint, str(error.status)).inc()
        raise
    try:
        call = _join_program(state, tenant, plan, program, prompt_ids)
    except APIError as error:
        admission.release()
        state.metrics.requests.labels(plan.endpoint, str(error.status)).inc()
        raise
    completion_id = completion_id or f"{id_prefix}-{secrets.token_hex(12)}"
    engine_request = GenerateRequest(
        prompt_token_ids=prompt_ids,
        sampling=plan.sampling,
        priority=programs_of(state).request_priority(call, plan.priority),
        request_id=completion_id,
        program_id=call.planner_id,
        call_id=call.node.id,  # admitting it ends the reservation the planner made for this call
        hints=plan.hints,
    )
    gen = Generation(
        state, plan, engine_request, admission, len(prompt_ids), _time_limit_s(state, plan), program_call=call
    )
    updates = gen.updates()
    first = await _first_update(gen, updates)
    return StartedGeneration(gen, updates, first, served, completion_id, prompt_ids)


def _join_program(
    state: ServerState, tenant: Tenant, plan: GenerationPlan, program: ProgramRequest, prompt_ids: list[int]
) -> ProgramCall:
    messages = program.messages if program.messages is not None else plan.messages
    text = plan.prompt if messages is None else None
    ids = prompt_ids if messages is None and plan.prompt is None else None
    shape = CallShape.of(messages, text, ids)
    call = programs_of(state).begin_call(
        tenant.name,
        shape,
        program_id=program.program_id,
        origin=program.origin,
        max_tokens=plan.sampling.max_tokens,
        ignore_eos=plan.sampling.ignore_eos,
        user_priority=plan.priority,
        program_field=program.field,
        new_program_id=program.new_program_id,
    )
    hints = program.kv_hints
    if hints is not None:
        call.retain_s, call.release = hints.retain_s, hints.release
        if hints.prefetch:
            programs_of(state).planner.prefetch(call.planner_id)
    if isinstance(plan.hints.get("tool"), str) and plan.hints.get("next") == "tool":
        call.gap_tool_hint = plan.hints["tool"][:64]
    return call


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


def token_texts(state: ServerState) -> TokenTexts:
    """The server's cache of token texts (for log-probabilities)."""
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


async def run_to_end(request: Request, gen: Generation, updates: AsyncIterator[SampleUpdate]) -> int:
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
