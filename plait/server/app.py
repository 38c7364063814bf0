"""Builds the FastAPI application: error handlers, the body-size limit, the routers, start-up and shutdown.

Shutdown drains: new work answers 503, running programs get ``config.shutdown_grace_s`` to finish, the rest are
cancelled (their engine requests aborted, KV freed), and an engine the server created is closed last.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from plait import __version__
from plait.runtime.engine_source import open_engine
from plait.runtime.executor import Executor
from plait.server import health_routes
from plait.server.body_limit import BodyLimitMiddleware
from plait.server.config import ServerConfig
from plait.server.errors import error_body, install_error_handlers
from plait.server.openai import api_router as openai_api
from plait.server.state import ServerState
from plait.server.workflows import api_router as workflows_api

logger = logging.getLogger("plait.server")
_DRAIN_EXEMPT = ("/health", "/ready", "/metrics")


def build_state(config: ServerConfig, engine_source: Any = None, tools: list[Any] | None = None) -> ServerState:
    """A ``ServerState`` with an engine from ``engine_source`` (see ``open_engine``) and the configured tools."""
    from plait.runtime.tool_loading import load_tools

    engine, owned = open_engine(engine_source)
    try:
        executor = Executor(engine, [*load_tools(config.tools), *(tools or [])])
    except BaseException:
        if owned:
            engine.close()
        raise
    return ServerState(engine=engine, executor=executor, config=config, owns_engine=owned)


def create_app(state: ServerState) -> FastAPI:
    """The plait HTTP application over ``state`` (which it shuts down when the app stops)."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state.ready = True
        try:
            yield
        finally:
            await drain(state)

    app = FastAPI(
        title="plait",
        version=__version__,
        description=(
            "A serving runtime for agent programs: submit workflows of LLM and tool calls, stream their events, "
            "or use the OpenAI-compatible API with an optional `program_id` for program-level scheduling."
        ),
        lifespan=lifespan,
    )
    app.state.plait = state
    install_error_handlers(app)

    @app.middleware("http")
    async def refuse_while_draining(request: Request, call_next: Any) -> Any:
        if state.draining and request.method != "GET" and request.url.path not in _DRAIN_EXEMPT:
            return JSONResponse(error_body(503, "server is shutting down"), status_code=503)
        return await call_next(request)

    app.add_middleware(BodyLimitMiddleware, max_bytes=state.config.max_body_bytes)
    app.include_router(health_routes.router)
    app.include_router(openai_api.router)
    app.include_router(workflows_api.router)
    return app


async def drain(state: ServerState) -> None:
    """Stop accepting work, give running programs the grace period, cancel the rest, close an owned engine."""
    state.draining = True
    state.ready = False
    with anyio.move_on_after(state.config.shutdown_grace_s):
        while state.executor.running():
            await anyio.sleep(0.05)
    for program in state.executor.running():
        program.cancel()
    with anyio.move_on_after(5.0):
        while state.executor.running():
            await anyio.sleep(0.02)
    if state.owns_engine:
        await anyio.to_thread.run_sync(state.engine.close)
