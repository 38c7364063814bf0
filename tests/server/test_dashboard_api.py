"""The dashboard on a REAL server (uvicorn on 127.0.0.1, the tiny dummy model on CPU, two API keys): signing in by
``?key=``, the form and the cookie; one tenant never sees another's programs; a running workflow's nodes, timeline,
Chrome trace and the KV history as the page reads them; 500 programs answered in bounded pages, quickly; no key
needed on a server without keys; 503 while the engine loads.

``dashboard_server`` is shared with the browser test (``test_dashboard_browser.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

import plait
from plait.server.dashboard.dashboard_auth import COOKIE

KEYS = {"key-a": "a", "key-b": "b"}


@plait.tool
async def hold(text: str, seconds: float = 1.0) -> str:
    """Waits ``seconds`` (at most 30), then returns the text upper-cased: a tool call that takes a while."""
    await asyncio.sleep(min(max(seconds, 0.0), 30.0))
    return text.upper()


@plait.tool
def echo(text: str) -> str:
    """Returns the text: an instant tool."""
    return text


@dataclass
class Served:
    url: str
    state: Any

    def client(self, key: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kwargs)


@contextlib.contextmanager
def dashboard_server(
    api_keys: dict[str, str] | None = None, *, kv_slots: int = 512, tenant_limits: dict[str, Any] | None = None
) -> Iterator[Served]:
    """A real ``plait serve`` app on 127.0.0.1 (a free port) over the tiny dummy model, with the ``hold`` and
    ``echo`` tools; ``api_keys`` None: the two test keys."""
    from plait.engine import EngineConfig
    from plait.server import ServerConfig, create_app
    from plait.server.app import build_state
    from plait.server.uvicorn_thread import UvicornThread

    config = ServerConfig(
        api_keys=dict(KEYS if api_keys is None else api_keys),
        tenant_limits=dict(tenant_limits or {}),
        shutdown_grace_s=1.0,
    )
    config.validate()
    engine = EngineConfig(model="tiny", weights="dummy", device="cpu", dtype="float32", kv_slots=kv_slots)
    state = build_state(config, engine, tools=[hold, echo])
    runner = UvicornThread(create_app(state))
    try:
        url = runner.start()
    except BaseException:
        state.engine.close()
        raise
    try:
        yield Served(url, state)
    finally:
        runner.stop()
        if state.owns_engine:
            state.engine.close()


def tool_workflow(name: str, seconds: float = 0.0) -> dict[str, Any]:
    """One tool call (no LLM): cheap to run by the hundred."""
    tool = {"kind": "tool", "id": "wait", "tool": "hold", "args": {"text": name, "seconds": seconds}, "output": "out"}
    return {"name": name, "nodes": [tool]}


def agent_workflow(name: str = "agent", tool_s: float = 1.0, max_tokens: int = 16) -> dict[str, Any]:
    """LLM -> two tools in parallel (``tool_s`` and 1.5 x ``tool_s``) -> LLM: lasts about 1.5 x ``tool_s``."""
    return {
        "name": name,
        "inputs": {"topic": "the sea"},
        "nodes": [
            {"kind": "llm", "id": "plan", "prompt": "Plan a search about {{topic}}:", "output": "plan",
             "max_tokens": max_tokens},
            {"kind": "tool", "id": "search", "tool": "hold", "args": {"text": {"$var": "plan"}, "seconds": tool_s},
             "output": "found"},
            {"kind": "tool", "id": "browse", "tool": "hold",
             "args": {"text": {"$var": "plan"}, "seconds": 1.5 * tool_s}, "output": "page"},
            {"kind": "llm", "id": "answer", "prompt": "Answer from {{found}} and {{page}}:", "output": "answer",
             "max_tokens": max_tokens},
        ],
    }  # fmt: skip


def submit(client: httpx.Client, body: dict[str, Any]) -> str:
    response = client.post("/v1/workflows", json=body)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def wait_until(predicate: Any, what: str, timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    with dashboard_server() as server:
        yield server


# ---- signing in -----------------------------------------------------------------------------------------------------


def test_page_without_a_key_is_the_login_form_and_a_bad_key_is_refused(served: Served) -> None:
    with served.client() as browser:
        page = browser.get("/dashboard")
        assert page.status_code == 401 and "<form" in page.text and 'name="key"' in page.text
        assert COOKIE not in page.headers.get("set-cookie", "")
        bad = browser.get("/dashboard", params={"key": "nope"})
        assert bad.status_code == 401 and "unknown API key" in bad.text and "set-cookie" not in bad.headers
        data = browser.get("/dashboard/api/programs")
        assert data.status_code == 401 and data.json()["error"]["code"] == 401
        posted = browser.post("/dashboard/login", data={"key": "still wrong"})
        assert posted.status_code == 401 and "unknown API key" in posted.text


def test_key_in_the_address_sets_an_http_only_cookie_and_redirects_it_away(served: Served) -> None:
    with served.client() as browser:
        response = browser.get("/dashboard", params={"key": "key-b"})
        assert response.status_code == 303 and response.headers["location"] == "/dashboard"
        cookie = response.headers["set-cookie"]
        assert cookie.startswith(f"{COOKIE}=key-b;")
        for attribute in ("HttpOnly", "Path=/dashboard", "SameSite=strict"):
            assert attribute.lower() in cookie.lower()
        page = browser.get("/dashboard")  # the client keeps the cookie, like a browser
        assert page.status_code == 200 and '<b id="tenant">b</b>' in page.text and "sign out" in page.text
        assert page.headers["cache-control"] == "no-store"
        assert browser.get("/dashboard/api/programs").json()["tenant"] == "b"
        # A header wins over the cookie: scripts and curl authenticate as usual.
        assert browser.get("/dashboard/api/programs", headers={"X-API-Key": "key-a"}).json()["tenant"] == "a"
        signed_out = browser.post("/dashboard/logout")
        assert signed_out.status_code == 303
        assert browser.get("/dashboard/api/programs").status_code == 401


def test_login_form_sets_the_cookie(served: Served) -> None:
    with served.client() as browser:
        response = browser.post("/dashboard/login", data={"key": "key-a"})
        assert response.status_code == 303 and f"{COOKIE}=key-a" in response.headers["set-cookie"]
        assert browser.get("/dashboard/api/programs").json()["tenant"] == "a"


# ---- tenants --------------------------------------------------------------------------------------------------------


def test_another_tenants_programs_never_appear(served: Served) -> None:
    with served.client("key-a") as a, served.client("key-b") as b, served.client() as b_browser:
        mine = {submit(a, tool_workflow(f"a-{i}")) for i in range(3)}
        theirs = {submit(b, tool_workflow("b-0"))}
        b_browser.get("/dashboard", params={"key": "key-b"})  # b signed in by cookie, as the page is
        for client, own, other in ((a, mine, theirs), (b, theirs, mine), (b_browser, theirs, mine)):
            listed = set()
            for state in ("all", "running", "finished"):
                page = client.get("/dashboard/api/programs", params={"state": state, "limit": 100}).json()
                listed |= {p["id"] for p in page["programs"]}
            assert own <= listed and not listed & other
            for program_id in other:
                for path in (f"/dashboard/api/programs/{program_id}", f"/dashboard/api/programs/{program_id}/trace"):
                    hidden = client.get(path)
                    unknown = client.get(path.replace(program_id, "wf-does-not-exist"))
                    assert hidden.status_code == unknown.status_code == 404
                    assert hidden.json()["error"]["type"] == unknown.json()["error"]["type"]
            for program_id in own:
                assert client.get(f"/dashboard/api/programs/{program_id}").status_code == 200


# ---- live data ------------------------------------------------------------------------------------------------------


def test_a_running_workflow_shows_its_nodes_advance_its_timeline_and_the_kv_history(served: Served) -> None:
    with served.client("key-a") as a:
        first = a.get("/dashboard/api/overview").json()  # starts the KV sampler
        assert first["phase"] == "ready" and "<svg" in first["kv_svg"]
        program_id = submit(a, agent_workflow("live", tool_s=1.0))
        seen: list[dict[str, str]] = []
        timelines: list[str] = []

        def finished() -> bool:
            detail = a.get(f"/dashboard/api/programs/{program_id}").json()
            seen.append({node["node"]: node["state"] for node in detail["nodes"]})
            timelines.append(detail["timeline_svg"])
            return detail["program"]["state"] != "running"

        wait_until(finished, "the workflow to finish")
        assert seen[-1] == dict.fromkeys(("plan", "search", "browse", "answer"), "done")
        assert any(states["search"] == "running" and states["answer"] == "pending" for states in seen)
        assert any("data-kind='running'" in svg for svg in timelines[:-1])  # the tools were drawn while running
        final = timelines[-1]
        for kind in ("queued", "prefill", "decode", "tool", "program"):
            assert f"data-kind='{kind}'" in final, kind
        detail = a.get(f"/dashboard/api/programs/{program_id}").json()
        assert detail["graph_svg"].count("class='node'") == 4 and "data-state='done'" in detail["graph_svg"]
        assert detail["program"]["nodes_done"] == detail["program"]["nodes"] == 4

        trace = a.get(detail["trace_url"])
        assert trace.status_code == 200 and "attachment" in trace.headers["content-disposition"]
        events = trace.json()["traceEvents"]
        processes = {e["args"]["name"] for e in events if e.get("name") == "process_name"}
        assert processes == {program_id}
        assert {e["cat"] for e in events if e["ph"] == "X"} >= {"queued", "prefill", "decode", "tool", "program"}

        def held_kv() -> dict[str, Any] | None:
            latest = a.get("/dashboard/api/overview").json()["latest"]
            return latest if latest and latest["cached"] + latest["running"] > 0 else None

        latest = wait_until(held_kv, "the KV history to show the program's KV", timeout_s=10)
        assert latest["total"] == 512
        overview = a.get("/dashboard/api/overview").json()
        samples = int(overview["kv_svg"].split("data-samples='")[1].split("'")[0])
        assert samples >= 3  # sampled every 0.5 s over the program's few seconds
        info = a.get("/dashboard/api/server_info").json()
        assert info["tenant"] == "a" and info["plan"]["name"] and "engine_policy" in info["plan"]


def test_list_arguments_are_checked(served: Served) -> None:
    with served.client("key-a") as a:
        assert a.get("/dashboard/api/programs", params={"limit": 101}).status_code == 422
        assert a.get("/dashboard/api/programs", params={"offset": -1}).status_code == 422
        bad = a.get("/dashboard/api/programs", params={"state": "sleeping"})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "state"


def test_dashboard_routes_stay_out_of_the_openapi_schema(served: Served) -> None:
    paths = httpx.get(f"{served.url}/openapi.json").json()["paths"]
    assert not [path for path in paths if path.startswith("/dashboard")]


# ---- 500 programs ---------------------------------------------------------------------------------------------------


def test_500_programs_answer_in_bounded_pages_well_under_a_second() -> None:
    from plait.server import TenantLimits

    limits = {"a": TenantLimits(max_concurrent_programs=1000)}
    with dashboard_server(tenant_limits=limits) as server, server.client("key-a") as a, server.client("key-b") as b:
        ids = [submit(a, tool_workflow(f"many-{i}", seconds=20.0)) for i in range(500)]
        submit(b, tool_workflow("other"))
        timings = []
        for _ in range(5):
            started = time.perf_counter()
            response = a.get("/dashboard/api/programs")
            timings.append(time.perf_counter() - started)
            assert response.status_code == 200
        page = response.json()
        assert page["total"] == 500 and page["running"] == 500 and len(page["programs"]) == 50
        assert len(response.content) < 20_000  # a page, not the whole list
        assert max(timings) < 1.0 and statistics.median(timings) < 0.3, timings
        listed = []
        for offset in range(0, 600, 100):
            chunk = a.get("/dashboard/api/programs", params={"offset": offset, "limit": 100}).json()["programs"]
            assert len(chunk) == min(100, max(0, 500 - offset))
            listed += [p["id"] for p in chunk]
        assert sorted(listed) == sorted(ids) and listed[0] == ids[-1]  # all of them once, newest first
        started = time.perf_counter()
        detail = a.get(f"/dashboard/api/programs/{ids[0]}")
        assert detail.status_code == 200 and time.perf_counter() - started < 1.0
        page_started = time.perf_counter()
        assert a.get("/dashboard").status_code == 200 and time.perf_counter() - page_started < 1.0
        for program_id in ids[:3]:  # cancelled programs move to the finished list
            assert a.delete(f"/v1/workflows/{program_id}").status_code == 200
        counts = a.get("/dashboard/api/programs", params={"state": "finished"}).json()
        assert counts["total"] == 3 and counts["running"] == 497


# ---- servers without keys, and starting servers ---------------------------------------------------------------------


def test_without_api_keys_no_key_is_needed() -> None:
    with dashboard_server(api_keys={}) as server, server.client() as anyone:
        page = anyone.get("/dashboard")
        assert page.status_code == 200 and "sign out" not in page.text
        submit(anyone, tool_workflow("open"))
        assert anyone.get("/dashboard/api/programs").json()["total"] == 1
        redirected = anyone.get("/dashboard", params={"key": "anything"})
        assert redirected.status_code == 303 and "set-cookie" not in redirected.headers


def test_data_answers_503_while_the_engine_loads() -> None:
    from fastapi.testclient import TestClient

    from plait.server import ServerConfig, ServerState, create_app

    release = threading.Event()

    def load() -> Any:
        release.wait(30)
        raise RuntimeError("never loads")

    state = ServerState(ServerConfig())
    try:
        with TestClient(create_app(state, load=load)) as client:
            for path in ("/dashboard", "/dashboard/api/overview", "/dashboard/api/programs"):
                response = client.get(path)
                assert response.status_code == 503 and response.headers["retry-after"] == "2", path
    finally:
        release.set()
