"""Builds the FastAPI application: error handlers, the body-size limit, the routers, start-up and draining.

Start-up: a state with an engine (``build_state``) is ready as soon as the app starts. ``plait serve`` instead
passes ``create_app(state, load=...)``: the app answers at once and ``load`` runs in a background thread (uvicorn
runs the lifespan start-up before it listens, so loading there would keep the port closed); meanwhile ``/health``
answers 200, ``/ready`` 503 ``starting`` and the API 503 with ``Retry-After``. A failed load is kept in
``state.startup_error``, on which the serving process exits (``DrainingServer``).

Draining (``drain``, run on SIGTERM before the listener closes): new work answers 503, running programs and API
requests get ``config.shutdown_grace_s`` to finish, the rest are stopped (their engine requests aborted, KV freed):
a journaled workflow is suspended (its event stream ends with ``suspended``; it resumes when the server starts
again), one without a journal is cancelled (``cancelled``). OpenAI-API programs end. An engine the server created is
closed, which ends any completion still streaming with an error event and ``[DONE]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from fastapi import APIRouter, FastAPI
from fastapi_offline import FastAPIOffline

from plait import __version__
from plait.server import health_routes
from plait.server.body_limit import BodyLimitMiddleware
from plait.server.config import ServerConfig
from plait.server.errors import APIError, EngineNotLoadedError, install_error_handlers
from plait.server.state import ServerState

if TYPE_CHECKING:
    from plait.engine import Engine
    from plait.runtime.executor import Executor
    from plait.runtime.planning import PlanConfig

logger = logging.getLogger("plait.server")
DOCS_ASSETS_URL = "/docs/assets"  # Swagger UI's and ReDoc's scripts, served from the fastapi-offline package
_DRAIN_EXEMPT = ("/health", "/ready", "/metrics")
_OPEN_WHILE_STARTING = {"/health", "/ready", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
_API_PREFIX = "/v1/"
CANCEL_WAIT_S = 5.0  # after the grace: how long cancelled programs get to unwind (abort engine requests, free KV)
STREAM_END_WAIT_S = 2.0  # after the engine closed: how long open responses get to send their final event

Report = Callable[[str], None]


class StartupError(Exception):
    """Loading failed at ``stage`` (``tools`` or ``model``); the message names the stage and the cause."""

    def __init__(self, stage: str, cause: BaseException) -> None:
        super().__init__(f"{stage}: {cause}")
        self.stage = stage
        self.cause = cause


@dataclass
class LoadedEngine:
    engine: Engine
    executor: Executor
    owns_engine: bool


def load_engine(
    config: ServerConfig,
    engine_source: Any = None,
    tools: list[Any] | None = None,
    *,
    plan: PlanConfig | None = None,
    report: Report | None = None,
) -> LoadedEngine:
    """The configured tools (checked before the model loads, so that a bad one fails fast), then the engine from
    ``engine_source`` (see ``open_engine``) and an executor over both, planning with ``plan`` (default
    ``PlanConfig()``; the executor switches the engine to the plan's policy). ``report`` gets a line per step with
    its timing, then one per enabled feature of the plan. Failures raise ``StartupError`` naming the stage."""
    from plait.runtime import ToolRegistry, open_engine
    from plait.runtime.executor import Executor
    from plait.runtime.tool_loading import load_tools

    say = report or (lambda _: None)
    started = time.perf_counter()
    try:
        all_tools = [*load_tools(config.tools), *(tools or [])]
        names = [tool.name for tool in ToolRegistry(all_tools)]  # checks every tool before the engine loads
    except (ValueError, TypeError) as error:  # a tool that cannot be imported or is not a valid tool
        raise StartupError("tools", error) from error
    if names:
        say(f"tools: {', '.join(names)} ({time.perf_counter() - started:.2f} s)")
    started = time.perf_counter()
    say(f"model: loading {_describe_engine_source(engine_source)} ...")
    try:
        engine, owned = open_engine(engine_source)
    except Exception as error:
        raise StartupError("model", error) from error
    try:
        executor = Executor(engine, all_tools, plan=plan)
    except BaseException:
        if owned:
            engine.close()
        raise
    settings = engine.effective_settings()
    say(
        f"model: {settings['model_name'] or 'unnamed'} loaded in {time.perf_counter() - started:.1f} s "
        f"({settings['device']}, {settings['dtype']}, {settings['kv_slots']} KV slots, "
        f"context {settings['max_context']} tokens"
        + (f", tensor parallel over {settings['tensor_parallel']} ranks" if settings["tensor_parallel"] > 1 else "")
        + ")"
    )
    plan = executor.planner.config
    say(f"plan: {plan.name}")
    for line in plan.describe():
        say(f"  {line}")
    return LoadedEngine(engine, executor, owned)


def _describe_engine_source(source: Any) -> str:
    """What ``open_engine(source)`` loads, for the start-up log: the model file and its size, or the dummy shape."""
    from plait.engine import EngineConfig, ModelNotFoundError, default_model_path
    from plait.runtime.replicas import ReplicatedEngine

    if not isinstance(source, EngineConfig | ReplicatedEngine | str | Path | None):
        return "(an engine passed in)"
    if isinstance(source, ReplicatedEngine):
        spread = source.replicas
        where = "Ray actors" if spread.backend == "ray" else "this process"
        return f"{spread.replicas} replicas ({where}, {spread.routing} routing) of " + _describe_engine_source(
            source.engine
        )
    config = source if isinstance(source, EngineConfig) else EngineConfig(model=str(source or "default"))
    if config.weights == "dummy":
        return f"the '{config.model}' shape with dummy weights"
    if config.model != "default":
        path = Path(config.model)
    else:
        try:
            path = default_model_path()
        except ModelNotFoundError:
            return "the default model"  # opening it raises the error that says how to install it
    return f"{path} ({path.stat().st_size / 2**20:.1f} MiB)" if path.is_file() else str(path)


def build_state(
    config: ServerConfig, engine_source: Any = None, tools: list[Any] | None = None, plan: PlanConfig | None = None
) -> ServerState:
    """A ready ``ServerState``: the engine from ``engine_source`` (see ``open_engine``) and the configured tools,
    loaded now, planning with ``plan`` (in-process servers: tests, ``plait bench serve-load``)."""
    loaded = load_engine(config, engine_source, tools, plan=plan)
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
            _load_in_background(app, state, load)
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
        swagger_ui_parameters={"validatorUrl": None},  # no badge fetched from validator.swagger.io
    )
    app.state.plait = state
    install_error_handlers(app)
    app.add_middleware(LifecycleGate, state=state)
    app.add_middleware(BodyLimitMiddleware, max_bytes=state.config.max_body_bytes)
    app.include_router(health_routes.router)
    if load is None:
        include_api(app, api_routers())
    return app


def api_routers() -> list[APIRouter]:
    """The routers that need the engine. They import it (torch, the runtime), which takes seconds: ``plait serve``
    imports them in the background, after it listens. Add new engine-backed routers here, not at module level."""
    from plait.server import info_routes
    from plait.server.dashboard import api_router as dashboard_api
    from plait.server.openai import api_router as openai_api
    from plait.server.responses_api import api_router as responses_api
    from plait.server.workflows import api_router as workflows_api

    return [openai_api.router, responses_api.router, workflows_api.router, info_routes.router, dashboard_api.router]


def include_api(app: FastAPI, routers: list[APIRouter]) -> None:
    for router in routers:
        app.include_router(router)
    app.openapi_schema = None  # the next /openapi.json lists the new routes


class LifecycleGate:
    """ASGI middleware: while the engine loads, everything but the health, metrics and docs pages answers 503 with
    ``Retry-After``; while draining, new work (anything but GET) answers 503. It counts the API requests in flight,
    which the drain waits for."""

    def __init__(self, app: Any, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = self.state
        path, method = scope["path"], scope["method"]
        refusal: APIError | None = None
        if not state.loaded and not _open_while_starting(path):
            refusal = EngineNotLoadedError(failed=state.startup_error is not None)
        elif state.draining and method != "GET" and path not in _DRAIN_EXEMPT:
            refusal = APIError(503, "server is shutting down")
        if refusal is not None:
            await refusal.response()(scope, receive, send)
            return
        if not path.startswith(_API_PREFIX):
            await self.app(scope, receive, send)
            return
        state.inflight_api_requests += 1
        try:
            await self.app(scope, receive, send)
        finally:
            state.inflight_api_requests -= 1


def _open_while_starting(path: str) -> bool:
    return path in _OPEN_WHILE_STARTING or path.startswith(DOCS_ASSETS_URL + "/")


def _load_in_background(app: FastAPI, state: ServerState, load: Callable[[], LoadedEngine]) -> None:
    """Run ``load`` and import the API in a daemon thread (a server stopped while loading does not wait for it), then
    add the API routes and attach the engine on the event loop; a failure is kept in ``state.startup_error``."""
    loop = asyncio.get_running_loop()

    def finish(loaded: LoadedEngine | None, routers: list[APIRouter], error: BaseException | None) -> None:
        # On the event loop.
        if error is not None:
            state.startup_error = error
        if loaded is not None and (error is not None or state.draining):  # nobody will use this engine
            if loaded.owns_engine:
                threading.Thread(target=loaded.engine.close, name="plait-engine-close", daemon=True).start()
        elif loaded is not None:
            include_api(app, routers)
            state.attach(loaded.engine, loaded.executor, owns_engine=loaded.owns_engine)
            state.ready = True

    def run() -> None:
        loaded: LoadedEngine | None = None
        routers: list[APIRouter] = []
        error: BaseException | None = None
        try:
            loaded = load()
            routers = api_routers()  # imported already when ``load`` imported them first (plait serve does)
        except BaseException as exc:
            error = exc
        try:
            loop.call_soon_threadsafe(finish, loaded, routers, error)
        except RuntimeError:  # the event loop has ended: the server stopped while loading
            if loaded is not None and loaded.owns_engine:
                loaded.engine.close()

    threading.Thread(target=run, name="plait-engine-load", daemon=True).start()


async def drain(state: ServerState) -> int:
    """Stop accepting work, give running programs and API requests the grace period, cancel the rest, close an
    owned engine (ending the streams still open) and wait briefly for responses to end. Safe to call again.
    Returns how many programs it cancelled."""
    state.draining = True
    state.ready = False
    if not state.loaded:
        return 0
    cancelled = 0
    if not state.drained:
        with anyio.move_on_after(state.config.shutdown_grace_s):
            while state.executor.running() or state.inflight_api_requests:
                await anyio.sleep(0.05)
        for program in state.executor.running():
            program.cancel()
            cancelled += 1
        with anyio.move_on_after(CANCEL_WAIT_S):
            while state.executor.running():
                await anyio.sleep(0.02)
        state.drained = True
        from plait.server.openai.program_registry import close_programs  # the runtime is imported by now

        close_programs(state)  # OpenAI programs end: their pins and reservations are released
    if state.owns_engine:
        await anyio.to_thread.run_sync(state.engine.close)
    with anyio.move_on_after(STREAM_END_WAIT_S):
        while state.inflight_api_requests:
            await anyio.sleep(0.02)
    return cancelled
