"""The Responses API (OpenAI-compatible): ``POST /v1/responses``, ``GET /v1/responses/{id}``,
``DELETE /v1/responses/{id}``.

The body is validated (``protocol``); ``serving`` runs it as a chat generation over the chain's conversation and
renders the whole response or its event stream. A chain of responses (``previous_response_id``) is one agent program,
named in every response's ``X-Plait-Program-Id`` header. Stored responses are per tenant: another tenant's id answers
404, exactly like an unknown one.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from plait.server.openai.responses import ErrorResponse
from plait.server.responses_api.protocol import ResponseCreateRequest, ResponseDeleted, ResponseObject
from plait.server.responses_api.serving import create_response
from plait.server.responses_api.store import store_of
from plait.server.state import ServerState
from plait.server.tenants import Tenant, current_tenant

router = APIRouter(tags=["responses"])
TenantDep = Annotated[Tenant, Depends(current_tenant)]

_STREAM_DOC = (
    "With `stream: true`: server-sent events (`event: TYPE`, `data: {json}` with `type` and `sequence_number`): "
    "`response.created`, `response.in_progress`, then per output item `response.output_item.added`, its content "
    "(`response.content_part.added`, `response.output_text.delta`..., `response.output_text.done`, "
    "`response.content_part.done`; or `response.function_call_arguments.delta` and `.done`) and "
    "`response.output_item.done`, and last `response.completed` (`response.incomplete` when `max_output_tokens` cut "
    "it; `error` and `response.failed` on a failure)."
)
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Invalid request (the body names the field)"},
    401: {"model": ErrorResponse, "description": "Missing or unknown API key"},
    404: {"model": ErrorResponse, "description": "Unknown model or `previous_response_id`"},
    409: {"model": ErrorResponse, "description": "The chain's program was closed (`DELETE /v1/programs/{id}`)"},
    422: {"model": ErrorResponse, "description": "The body does not match the schema (the body names the field)"},
    429: {"model": ErrorResponse, "description": "Over the tenant's limits; see Retry-After"},
    503: {"model": ErrorResponse, "description": "The server is shutting down"},
}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    401: _ERRORS[401],
    404: {"model": ErrorResponse, "description": "No such stored response of the caller"},
}


@router.post(
    "/v1/responses",
    response_model=None,
    summary="Create a model response (OpenAI's Responses API: function tools, previous_response_id, streaming)",
    responses={
        200: {
            "model": ResponseObject,
            "description": f"The whole response. {_STREAM_DOC}",
            "content": {"text/event-stream": {"schema": {"type": "string", "description": _STREAM_DOC}}},
        },
        **_ERRORS,
    },
)
async def post_response(body: ResponseCreateRequest, request: Request, tenant: TenantDep) -> Response:
    state: ServerState = request.app.state.plait
    return await create_response(state, request, tenant, body)


@router.get(
    "/v1/responses/{response_id}",
    response_model=None,
    summary="A stored response",
    responses={200: {"model": ResponseObject, "description": "The response as it was returned"}, **_NOT_FOUND},
)
async def get_response(response_id: str, request: Request, tenant: TenantDep) -> Response:
    state: ServerState = request.app.state.plait
    return JSONResponse(store_of(state).get(tenant.name, response_id).body)


@router.delete(
    "/v1/responses/{response_id}",
    response_model=ResponseDeleted,
    summary="Delete a stored response (it can no longer be fetched nor continued)",
    responses=_NOT_FOUND,
)
async def delete_response(response_id: str, request: Request, tenant: TenantDep) -> ResponseDeleted:
    state: ServerState = request.app.state.plait
    store_of(state).delete(tenant.name, response_id)
    return ResponseDeleted(id=response_id)
