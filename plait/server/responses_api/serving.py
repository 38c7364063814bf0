"""Serving one ``POST /v1/responses``: the chain's conversation, the chat generation it runs as, its program, the
rendering (whole or streamed) and the store.

A request's life:

1. ``previous_response_id`` names a stored response of the caller (``store``: 404 when unknown or another tenant's,
   400 when it was made with ``store: false``); its chain's turns come first, then this request's ``input``
   (``conversation``), after this request's ``instructions`` as a system message.
2. The whole conversation is planned as a chat completion (``translation``) and started by the chat API's
   ``start_generation``, so checks, admission, tool parsing and grammars are the chat API's, with errors naming the
   Responses fields.
3. Its program: a chain of responses is one agent program. The first response of a chain joins the
   ``program_id`` / ``X-Plait-Program-Id`` it names, else the program its conversation continues (a stateless
   client resending the whole conversation), else starts one named after its response id; each later response
   joins its
   chain's program (``ProgramOrigin.RESPONSES``), so the planner orders the chain's calls as one program and keeps
   its KV across the gaps between them. The response's engine request id is its response id.
4. The output is rendered whole or as events (``output``, ``stream``). A response that ended well is stored before
   the client can read its end (unless ``store: false``: then only its id is remembered).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from plait.server.errors import APIError
from plait.server.openai.generation import SampleUpdate
from plait.server.openai.kv_hints import KVHints
from plait.server.openai.params import GenerationPlan, ignored_fields_headers
from plait.server.openai.programs import ProgramOrigin
from plait.server.openai.protocol import ChatMessage
from plait.server.openai.serving import ProgramRequest, StartedGeneration, run_to_end, start_generation
from plait.server.responses_api.conversation import input_messages, output_turn
from plait.server.responses_api.output import ResponseOutput, new_response_id
from plait.server.responses_api.protocol import ResponseCreateRequest
from plait.server.responses_api.store import StoredResponse, store_of
from plait.server.responses_api.stream import ResponseEventStream
from plait.server.responses_api.translation import ENDPOINT, responses_plan
from plait.server.state import ServerState
from plait.server.tenants import Tenant


async def create_response(
    state: ServerState, request: Request, tenant: Tenant, body: ResponseCreateRequest
) -> Response:
    """Serve ``body`` for ``tenant`` (module doc); request errors raise ``APIError`` naming the field."""
    store = store_of(state)
    response_id = new_response_id()
    try:
        previous = None
        if body.previous_response_id is not None:
            previous = store.previous(tenant.name, body.previous_response_id)
        turns = input_messages(body.input)
        messages = [*(previous.conversation() if previous is not None else []), *turns]
        if body.instructions:
            messages.insert(0, ChatMessage(role="system", content=body.instructions))
        plan = responses_plan(body, messages)
        program = _program(request, plan, body, previous, response_id, messages)
    except APIError as error:
        state.metrics.requests.labels(ENDPOINT, str(error.status)).inc()
        raise
    started = await start_generation(
        state, tenant, plan, body.model, program, id_prefix="resp", completion_id=response_id
    )
    try:
        output = ResponseOutput(response_id, started.served_model, body)
        headers = {**plan.response_headers, **ignored_fields_headers(body.ignored_fields), **started.headers}
        program_id = _program_id(started)
    except BaseException:
        await started.updates.aclose()
        started.gen.close(500)
        raise

    def keep() -> None:
        if not body.store:
            store.note_unstored(tenant.name, response_id)
            return
        stored_turns = (*turns, output_turn(output.items))
        stored = StoredResponse(response_id, program_id, _dump(output), stored_turns, previous)
        store.put(tenant.name, stored)

    if body.stream:
        return ResponseEventStream(started.gen, output, started.updates, started.first, keep).response(headers)
    status = await run_to_end(request, started.gen, _observed(started, output))
    if status == 200:
        output.finish(started.gen)
        keep()
    return JSONResponse(_dump(output), status_code=status, headers=headers)


def _program(
    request: Request,
    plan: GenerationPlan,
    body: ResponseCreateRequest,
    previous: StoredResponse | None,
    response_id: str,
    messages: list[ChatMessage],
) -> ProgramRequest:
    """The program the response joins: its chain's, else the one the request names, else a new one named after it."""
    hints = KVHints.parse(body.kv_hints)
    sent = [message.model_dump(exclude_none=True) for message in messages]
    named = ProgramRequest.of(request, plan, hints, sent)  # program_id, else X-Plait-Program-Id, else none
    if previous is None:
        if named.program_id is not None:
            return named
        # A stateless client resends the whole conversation: it joins the program it continues, if any.
        return ProgramRequest(None, ProgramOrigin.RESPONSES, kv_hints=hints, messages=sent, new_program_id=response_id)
    if named.program_id is not None and named.program_id != previous.program_id:
        message = f"differs from the program of previous_response_id ('{previous.program_id}'); leave it out"
        raise APIError(400, message, field=named.field)
    return ProgramRequest(
        previous.program_id, ProgramOrigin.RESPONSES, field="previous_response_id", kv_hints=hints, messages=sent
    )


def _program_id(started: StartedGeneration) -> str:
    call = started.gen.program_call
    assert call is not None  # start_generation always joins a program
    return call.program.program_id


async def _observed(started: StartedGeneration, output: ResponseOutput) -> AsyncIterator[SampleUpdate]:
    """The generation's updates (the first one included), each added to ``output`` on the way."""
    try:
        if started.first is not None:
            output.feed(started.first)
            yield started.first
        async for update in started.updates:
            output.feed(update)
            yield update
    finally:
        await started.updates.aclose()


def _dump(output: ResponseOutput) -> dict[str, object]:
    return output.response().model_dump(mode="json", by_alias=True)
