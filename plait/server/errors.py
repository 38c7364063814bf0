"""Every error the server returns is JSON: ``{"error": {"type", "message", "field", "code"}}``.

``APIError`` is raised by routes; the handlers installed by ``install_error_handlers`` also turn FastAPI's request
validation errors (422, naming the first bad field; a body that is not JSON or is missing is a 400 naming ``body``),
unknown routes, and unexpected exceptions (500, logged) into the same shape. The OpenAI-compatible routes use the
same body, which is what the ``openai`` client parses.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger("plait.server")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}


class APIError(Exception):
    """An error answered with ``status`` and a JSON body; ``field`` names the offending input (dotted path)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        field: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.type = type or _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, field=self.field, type=self.type)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


STARTING_RETRY_AFTER_S = 2  # the Retry-After of 503 answers while the engine loads (loading takes seconds)


class EngineNotLoadedError(APIError):
    """The server is still starting (its engine is loading), or failed to start and is exiting: 503."""

    def __init__(self, *, failed: bool = False) -> None:
        if failed:
            super().__init__(503, "the server failed to start (see its log) and is stopping")
        else:
            message = "the server is starting: the model is loading; retry when GET /ready answers 200"
            super().__init__(503, message, headers={"Retry-After": str(STARTING_RETRY_AFTER_S)})


def error_body(status: int, message: str, *, field: str | None = None, type: str | None = None) -> dict[str, Any]:
    kind = type or _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"type": kind, "message": message, "field": field, "param": field, "code": status}}


def not_found(what: str, ident: str) -> APIError:
    """The 404 for ids that do not exist *or belong to another tenant* (the two are indistinguishable)."""
    return APIError(404, f"{what} '{ident}' not found", field="id")


def _field_path(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def _body_problem(error: dict[str, Any], body: Any) -> str | None:
    """The message for a body that is not JSON (FastAPI reports its parse position as the field) or is missing;
    None for other validation errors. The same words as the REST workflow routes use."""
    loc = tuple(error.get("loc", ()))
    if error.get("type") == "json_invalid" and loc[:1] == ("body",):
        reason = str((error.get("ctx") or {}).get("error", "malformed"))
        where = ""
        if len(loc) > 1 and isinstance(loc[1], int):
            position = loc[1]
            text = body if isinstance(body, str) else ""
            line = text.count("\n", 0, position) + 1
            column = position - (text.rfind("\n", 0, position) + 1) + 1
            where = f" at line {line}, column {column} (character {position})"
        return f"the request body is not valid JSON: {reason}{where}"
    if error.get("type") == "missing" and loc == ("body",):
        return "the request body is empty; send a JSON object"
    return None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        body_problem = _body_problem(first, exc.body)
        if body_problem is not None:
            return JSONResponse(error_body(400, body_problem, field="body"), status_code=400)
        field = _field_path(first.get("loc", ()))
        message = f"{field}: {first.get('msg', 'invalid value')}"
        if len(errors) > 1:
            message += f" (and {len(errors) - 1} more problem(s))"
        return JSONResponse(error_body(422, message, field=field), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        return JSONResponse(error_body(exc.status_code, message), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body(500, f"internal error: {type(exc).__name__}"), status_code=500)
