"""Builds the FastAPI application: error handlers, the body-size limit, the routers, start-up and draining.

Start-up: a state with an engine (``build_state``) is ready as soon as the app starts. ``plait serve`` instead
passes ``create_app(state, load=...)``: the app answers at once and ``load`` runs in a background thread (uvicorn
runs the lifespan start-up before it listens, so loading there would keep the port closed); meanwhile ``/health``
answers 200, ``/ready`` 503 ``starting`` and the API 503 with ``Retry-After``. A failed load is kept in
``state.startup_error``, on which the serving process exits (``DrainingServer``).

Draining (``drain``, run on SIGTERM before the listener closes): new work answers 503, running programs and API
requests get ``config.shutdown_grace_s`` to finish, the rest are cancelled (their engine requests aborted, KV freed,
their event streams ending with ``cancelled``), and an engine the server created is closed, which ends any
completion still streaming with an error event and ``[DONE]``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from plait import __version__
from plait.server import health_routes
from plait.server.body_limit import BodyLimitMiddleware
from plait.server.config import ServerConfig
from plait.server.errors import error_body, install_error_handlers
from plait.server.openai import api_router as openai_api
from plait.server.state import STARTING_RETRY_AFTER_S, ServerState
from plait.server.workflows import api_router as workflows_api

if TYPE_CHECKING:
    from plait.engine import Engine
    from plait.runtime.executor import Executor

logger = logging.getLogger("plait.server")
_DRAIN_EXEMPT = ("/health", "/ready", "/metrics")
_API_PREFIX = "/v1/"
DOCS_ASSETS_URL = "/docs/assets"  # Swagger UI's and ReDoc's scripts, served from the fastapi-offline package
CANCEL_WAIT_S = 5.0  # after the grace: how long cancelled programs get to unwind (abort engine requests, free KV)
STREAM_END_WAIT_S = 2.0  # after the engine closed: how long open responses get to send their final event

Report = Callable[[str], None]


@dataclass
class LoadedEngine:
    engine: Engine
    executor: Executor
    owns_engine: bool


def load_engine(
    config: ServerConfig, engine_source: Any = None, tools: list[Any] | None = None, *, report: Report | None = None
) -> LoadedEngine:
    """The configured tools (loaded first: a bad one fails in milliseconds), then the engine from ``engine_source``
    (see ``open_engine``) and an executor over both. ``report`` gets a line per step with its timing."""
    from plait.runtime import ToolRegistry, open_engine
    from plait.runtime.executor import Executor
    from plait.runtime.tool_loading import load_tools

    say = report or (lambda _: None)
    started = time.perf_counter()
    all_tools = [*load_tools(config.tools), *(tools or [])]
    names = [tool.name for tool in ToolRegistry(all_tools)]  # checks every tool before the engine loads
    if names:
        say(f"tools: {', '.join(names)} ({time.perf_counter() - started:.2f} s)")
    started = time.perf_counter()
    say(f"model: loading {_describe_engine_source(engine_source)} ...")
    engine, owned = open_engine(engine_source)
    try:
        executor = Executor(engine, all_tools)
    except BaseException:
        if owned:
            engine.close()
        raise
    core = engine.core
    say(
        f"model: {core.model_config.name or 'unnamed'} loaded in {time.perf_counter() - started:.1f} s "
        f"({core.device}, {str(core.dtype).removeprefix('torch.')}, {core.kv_slots} KV slots, "
        f"context {core.max_context} tokens)"
    )
    return LoadedEngine(engine, executor, owned)


def build_state(config: ServerConfig, engine_source: Any = None, tools: list[Any] | None = None) -> ServerState:
    """A ready ``ServerState``: the engine from ``engine_source`` (see ``open_engine``) and the configured tools,
    loaded now (in-process servers: tests, ``plait bench serve-load``)."""
    loaded = load_engine(config, engine_source, tools)
    state = ServerState(config)
    state.attach(loaded.engine, loaded.executor, owns_engine=loaded.owns_engine)
    return state


def create_app(state: ServerState, *, load: Callable[[], LoadedEngine] | None = None) -> FastAPI:
    """The plait HTTP application over ``state`` (which it drains when the app stops).

    ``state`` has its engine already, or ``load`` makes it: it runs in a background thread once the app has started.
    """
    if load is None and not state.loaded:
        raise ValueError("create_app: the state has no engine and no load function makes one")

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if load is None:
            state.ready = True
        else:
            _load_in_background(state, load)
        try:
            yield
        finally:
            await drain(state)

    app = FastAPIOffline(
        title="plait",
        version=__version__,
        description=(
            "A serving runtime for agent programs: submit workflows of LLM and tool calls, stream their events, "
            "or use the OpenAI-compatible API with an optional `program_id` for program-level scheduling."
        ),
        lifespan=lifespan,
        static_url=DOCS_ASSETS_URL,
    )
    app.state.plait = state
    install_error_handlers(app)
    app.add_middleware(LifecycleGate, state=state)
    app.add_middleware(BodyLimitMiddleware, max_bytes=state.config.max_body_bytes)
    app.include_router(health_routes.router)
    app.include_router(openai_api.router)
    app.include_router(workflows_api.router)
    return app


class LifecycleGate:
    """ASGI middleware: the API answers 503 while the engine loads (with ``Retry-After``) and refuses new work while
    draining; it counts the API requests in flight, which the drain waits for."""

    def __init__(self, app: Any, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = self.state
        path, method = scope["path"], scope["method"]
        api = path.startswith(_API_PREFIX)
        if api and not state.loaded:
            if state.startup_error is not None:
                await _reject(send, "the server failed to start (see its log)")
            else:
                message = "the server is starting: the model is loading; retry when GET /ready answers 200"
                await _reject(send, message, retry_after_s=STARTING_RETRY_AFTER_S)
            return
        if state.draining and method != "GET" and path not in _DRAIN_EXEMPT:
            await _reject(send, "server is shutting down")
            return
        if not api:
            await self.app(scope, receive, send)
            return
        state.inflight_api_requests += 1
        try:
            await self.app(scope, receive, send)
        finally:
            state.inflight_api_requests -= 1


async def _reject(send: Any, message: str, *, retry_after_s: int | None = None) -> None:
    body = json.dumps(error_body(503, message)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if retry_after_s is not None:
        headers.append((b"retry-after", str(retry_after_s).encode()))
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _load_in_background(state: ServerState, load: Callable[[], LoadedEngine]) -> None:
    """Run ``load`` in a daemon thread (a server stopped while loading does not wait for it) and attach its engine
    on the event loop; a failure is kept in ``state.startup_error``."""
    loop = anyio.lowlevel.current_token()

    def finish(loaded: LoadedEngine | None, error: BaseException | None) -> None:  # on the event loop
        if error is not None:
            state.startup_error = error
        elif loaded is not None and state.draining:  # stopped while loading: nobody will use this engine
            if loaded.owns_engine:
                threading.Thread(target=loaded.engine.close, name="plait-engine-close", daemon=True).start()
        elif loaded is not None:
            state.attach(loaded.engine, loaded.executor, owns_engine=loaded.owns_engine)
            state.ready = True

    def run() -> None:
        loaded: LoadedEngine | None = None
        error: BaseException | None = None
        try:
            loaded = load()
        except BaseException as exc:
            error = exc
        try:
            anyio.from_thread.run_sync(finish, loaded, error, token=loop)
        except RuntimeError:  # the event loop has ended: the server stopped while loading
            if loaded is not None and loaded.owns_engine:
                loaded.engine.close()

    threading.Thread(target=run, name="plait-engine-load", daemon=True).start()


async def drain(state: ServerState) -> None:
    """Stop accepting work, give running programs and API requests the grace period, cancel the rest, close an
    owned engine (ending the streams still open) and wait briefly for responses to end. Safe to call again."""
    state.draining = True
    state.ready = False
    if not state.loaded:
        return
    if not state.drained:
        with anyio.move_on_after(state.config.shutdown_grace_s):
            while state.executor.running() or state.inflight_api_requests:
                await anyio.sleep(0.05)
        for program in state.executor.running():
            program.cancel()
        with anyio.move_on_after(CANCEL_WAIT_S):
            while state.executor.running():
                await anyio.sleep(0.02)
        state.drained = True
    if state.owns_engine:
        await anyio.to_thread.run_sync(state.engine.close)
    with anyio.move_on_after(STREAM_END_WAIT_S):
        while state.inflight_api_requests:
            await anyio.sleep(0.02)


def docs_assets_dir() -> Path:
    """Where the docs pages' scripts and styles are read from (the fastapi-offline package's static files)."""
    import fastapi_offline

    return Path(fastapi_offline.__file__).parent / "static"
