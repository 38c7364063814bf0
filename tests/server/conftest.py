"""Shared fixtures of the server tests: one REAL ``plait serve`` (uvicorn on 127.0.0.1, a free port, a background
thread) on the default model, with two API keys (tenants ``a`` and ``b``), for the whole session.

Use ``live_server.base_url`` with httpx or the ``openai`` client and send ``Authorization: Bearer <api_key_a>``;
``live_server.state`` is the ``ServerState`` (engine, executor, usage, metrics) for white-box checks, and
``wait_engine_idle(state)`` waits until the engine holds no request and no KV.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from plait.server.uvicorn_thread import UvicornThread

API_KEY_A = "test-key-a"
API_KEY_B = "test-key-b"


@dataclass
class LiveServer:
    """A running server: where to reach it and its shared state."""

    base_url: str  # "http://127.0.0.1:PORT" (no trailing slash)
    state: Any  # plait.server.ServerState
    app: Any  # the FastAPI application

    def headers(self, api_key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {api_key}"}


@pytest.fixture(scope="session")
def api_key_a() -> str:
    """API key of tenant ``a`` on ``live_server``."""
    return API_KEY_A


@pytest.fixture(scope="session")
def api_key_b() -> str:
    """API key of tenant ``b`` on ``live_server``."""
    return API_KEY_B


@pytest.fixture(scope="session")
def live_server(default_gguf) -> Iterator[LiveServer]:
    """One uvicorn server on the default model (CPU), keys ``api_key_a`` -> tenant ``a``, ``api_key_b`` -> ``b``.

    The server owns its engine and closes it at shutdown (after draining).
    """
    from plait.engine import EngineConfig
    from plait.server import ServerConfig, create_app
    from plait.server.app import build_state

    config = ServerConfig(api_keys={API_KEY_A: "a", API_KEY_B: "b"}, shutdown_grace_s=2.0)
    config.validate()
    state = build_state(config, EngineConfig(model=str(default_gguf), device="cpu"))
    app = create_app(state)
    runner = UvicornThread(app)
    try:
        base_url = runner.start()
    except BaseException:
        state.engine.close()
        raise
    try:
        yield LiveServer(base_url=base_url, state=state, app=app)
    finally:
        runner.stop()
        if state.owns_engine:
            state.engine.close()  # no-op when the drain already closed it


def wait_engine_idle(state: Any, timeout_s: float = 20.0) -> Any:
    """Wait until the engine runs nothing and holds no KV for requests; returns the last ``EngineStats``."""
    deadline = time.monotonic() + timeout_s
    while True:
        stats = state.engine.stats()
        if not _idle(stats):
            # Engine.stats() is refreshed after each step only: an abort that leaves nothing to run is not in it
            # until the next step, so read the core (safe enough in tests: nothing else is submitting).
            stats = state.engine.core.stats()
        if _idle(stats) or time.monotonic() > deadline:
            return stats
        time.sleep(0.02)


def _idle(stats: Any) -> bool:
    return stats.running == 0 and stats.waiting == 0 and stats.kv_slots_used == 0


def wait_tenants_released(state: Any, timeout_s: float = 10.0) -> dict[str, tuple[int, int]]:
    """Wait until no tenant holds an admission (running programs and queued tokens all 0); returns the snapshot."""
    deadline = time.monotonic() + timeout_s
    while True:
        snapshot = state.usage.snapshot()
        if all(value == (0, 0) for value in snapshot.values()) or time.monotonic() > deadline:
            return snapshot
        time.sleep(0.02)


def tiny_test_client() -> Iterator[Any]:
    """A FastAPI ``TestClient`` over a ready server on the tiny dummy shape, no API keys (for module fixtures)."""
    from fastapi.testclient import TestClient

    from plait.engine import EngineConfig
    from plait.server import ServerConfig, create_app
    from plait.server.app import build_state
    from tests.conftest import TINY

    state = build_state(ServerConfig(shutdown_grace_s=0.5), EngineConfig(**TINY))
    try:
        with TestClient(create_app(state)) as test_client:
            yield test_client
    finally:
        state.engine.close()


# ---- the OpenAI-compatible API's tests (test_openai_api.py, test_responses_api.py) -----------------------------------


@pytest.fixture(scope="module")
def client(live_server, api_key_a) -> Any:
    """The official ``openai`` client on ``live_server`` as tenant ``a`` (no retries)."""
    import openai

    return openai.OpenAI(base_url=f"{live_server.base_url}/v1", api_key=api_key_a, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def http(live_server, api_key_a) -> Iterator[Any]:
    """An httpx client on ``live_server`` as tenant ``a``."""
    import httpx

    with httpx.Client(base_url=live_server.base_url, headers=live_server.headers(api_key_a), timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def model_id(http) -> str:
    """The served model's id."""
    return http.get("/v1/models").json()["data"][0]["id"]


def assert_released(state: Any) -> None:
    """Nothing left running in the engine and no tenant reservation held (after a test's requests ended)."""
    stats = wait_engine_idle(state)
    assert (stats.running, stats.waiting, stats.kv_slots_used) == (0, 0, 0)
    assert all(v == (0, 0) for v in wait_tenants_released(state).values())
