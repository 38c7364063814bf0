"""The durable REST API on in-process servers (uvicorn on 127.0.0.1, the tiny dummy engine) that share one journal
across "restarts" (a drain, then a new server on the same file and port): Idempotency-Key retries, ids and events
that survive a restart (``Last-Event-ID`` resumes across it), a client-side tool call offered again after a restart
with the same idempotency key, and ``plait.Client`` riding through a restart (reconnect, retry, the same answer)."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

import plait
from plait.engine import EngineConfig
from plait.server import ServerConfig, create_app
from plait.server.app import build_state
from plait.server.uvicorn_thread import UvicornThread
from plait.server.workflows.durability import open_journal
from tests.conftest import TINY
from tests.served_process import REPO_ROOT, TINY_ARGS
from tests.server.workflow_fixtures import read_events

LOOKUP = {
    "name": "lookup",
    "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
    "returns": {"type": "string"},
}


def chain(topic: str = "the sea") -> dict[str, Any]:
    return {
        "workflow": {
            "name": "chain",
            "inputs": {"topic": topic},
            "nodes": [
                {"kind": "llm", "id": "a", "prompt": "{{topic}}:", "output": "x", "max_tokens": 4, "ignore_eos": True},
                {"kind": "llm", "id": "b", "prompt": "{{x}}!", "output": "y", "max_tokens": 4, "ignore_eos": True},
            ],
        }
    }


def with_client_tool() -> dict[str, Any]:
    return {
        "workflow": {
            "name": "asks",
            "inputs": {"q": "where"},
            "nodes": [
                {"kind": "llm", "id": "a", "prompt": "{{q}}?", "output": "x", "max_tokens": 3, "ignore_eos": True},
                {"kind": "tool", "id": "look", "tool": "lookup", "args": {"query": {"$var": "x"}}, "output": "found"},
            ],
        },
        "client_tools": [LOOKUP],
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def durable_server(journal: Path, port: int) -> Iterator[str]:
    """A server on ``port`` with the journal at ``journal``; drained (its running workflows suspended) at exit."""
    state = build_state(ServerConfig(shutdown_grace_s=0.2), EngineConfig(**TINY))
    opened = open_journal(state, journal)
    runner = UvicornThread(create_app(state), port=port)
    try:
        yield runner.start()
    finally:
        runner.stop()
        state.engine.close()
        opened.close()


@pytest.fixture
def journal_path(tmp_path: Path) -> Path:
    return tmp_path / "journal.sqlite3"


def test_idempotency_key_returns_the_same_workflow_and_refuses_another_body(journal_path: Path) -> None:
    with durable_server(journal_path, _free_port()) as url, httpx.Client(base_url=url, timeout=30) as client:
        first = client.post("/v1/workflows", json=chain(), headers={"Idempotency-Key": "k-1"})
        again = client.post("/v1/workflows", json=chain(), headers={"Idempotency-Key": "k-1"})
        assert first.status_code == again.status_code == 201
        assert again.json()["id"] == first.json()["id"] and again.headers["idempotent-replayed"] == "true"
        other = client.post("/v1/workflows", json=chain("the sky"), headers={"Idempotency-Key": "k-1"})
        assert other.status_code == 422 and other.json()["error"]["field"] == "Idempotency-Key"
        assert "different request body" in other.json()["error"]["message"]
        bad = client.post("/v1/workflows", json=chain(), headers={"Idempotency-Key": "k" * 300})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "Idempotency-Key"
        fresh = client.post("/v1/workflows", json=chain(), headers={"Idempotency-Key": "k-2"})
        assert fresh.json()["id"] != first.json()["id"]


def test_ids_events_and_keys_survive_a_restart(journal_path: Path) -> None:
    port = _free_port()
    with durable_server(journal_path, port) as url, httpx.Client(base_url=url, timeout=30) as client:
        workflow_id = client.post("/v1/workflows", json=chain(), headers={"Idempotency-Key": "k"}).json()["id"]
        read_events(client, f"/v1/workflows/{workflow_id}/events")  # to its end
        before = read_events(client, f"/v1/workflows/{workflow_id}/events")  # the finished log (tokens merged)
        status = client.get(f"/v1/workflows/{workflow_id}").json()
    assert before[-1].kind == "done"

    with durable_server(journal_path, port) as url, httpx.Client(base_url=url, timeout=30) as client:
        after = client.get(f"/v1/workflows/{workflow_id}").json()
        assert (after["state"], after["outputs"]) == ("done", status["outputs"])
        assert all(node["replayed"] for node in after["nodes"])
        replay = read_events(client, f"/v1/workflows/{workflow_id}/events")
        assert [(e.id, e.kind) for e in replay] == [(e.id, e.kind) for e in before]  # the merged log, as before
        third = before[2].id
        later = read_events(client, f"/v1/workflows/{workflow_id}/events", headers={"Last-Event-ID": str(third)})
        assert [e.id for e in later] == [e.id for e in before if e.id > third]
        retry = client.post("/v1/workflows", json=chain(), headers={"Idempotency-Key": "k"})
        assert retry.json()["id"] == workflow_id and retry.headers["idempotent-replayed"] == "true"


def test_a_pending_client_tool_call_is_offered_again_after_a_restart(journal_path: Path) -> None:
    port = _free_port()
    with durable_server(journal_path, port) as url, httpx.Client(base_url=url, timeout=30) as client:
        workflow_id = client.post("/v1/workflows", json=with_client_tool()).json()["id"]
        seen = read_events(client, f"/v1/workflows/{workflow_id}/events", stop=lambda e: e.kind == "tool_call")
    # The drain suspended it: its stream ended without a final event, and it is not ended in the journal.
    assert seen[-1].kind == "tool_call"

    with durable_server(journal_path, port) as url, httpx.Client(base_url=url, timeout=30) as client:
        status = client.get(f"/v1/workflows/{workflow_id}").json()
        assert status["state"] == "running" and status["nodes"][0]["replayed"]
        resumed: list[Any] = []

        def answer(event: Any) -> None:
            if event.kind == "tool_call":
                client.post(f"/v1/workflows/{workflow_id}/tool_results", json={"node": "look", "result": "here"})

        path = f"/v1/workflows/{workflow_id}/events"
        resumed = read_events(client, path, headers={"Last-Event-ID": str(seen[-1].id)}, on_event=answer)
    calls = [e for e in resumed if e.kind == "tool_call"]
    assert calls and calls[0].data["idempotency_key"] == seen[-1].data["idempotency_key"] == f"{workflow_id}/look"
    assert all(e.id > seen[-1].id for e in resumed)  # ids keep increasing across the restart
    assert resumed[-1].kind == "done" and resumed[-1].data["outputs"] == {"found": "here"}


def test_the_client_rides_through_a_restart(journal_path: Path) -> None:
    """``plait.Client.run_workflow`` keeps its stream across a restart: it reconnects, the server offers the pending
    local tool call again, and the client answers with the result its tool gave (the tool runs once)."""
    port = _free_port()
    runs: list[str] = []
    first_call, released = threading.Event(), threading.Event()

    @plait.tool(name="lookup")
    def lookup(query: str) -> str:
        runs.append(query)
        first_call.set()
        released.wait(30)  # answers only once the first server has stopped
        return "here"

    outcome: dict[str, Any] = {}

    async def run(url: str) -> None:
        async with plait.Client(url, tools=[lookup], reconnect_s=60.0) as client:
            outcome["outputs"] = await client.run_workflow(with_client_tool()["workflow"])

    server = durable_server(journal_path, port)
    url = server.__enter__()
    thread = threading.Thread(target=lambda: asyncio.run(run(url)), daemon=True)
    try:
        thread.start()
        assert first_call.wait(30)
    finally:
        server.__exit__(None, None, None)  # drained: the workflow is suspended, the client's stream breaks
    released.set()
    time.sleep(0.5)  # the client retries against a closed port meanwhile
    with durable_server(journal_path, port):
        thread.join(60)
    assert not thread.is_alive()
    assert outcome["outputs"] == {"found": "here"}
    assert runs == [runs[0]]  # the local tool ran once; a call offered again got the same answer


def test_a_python_program_on_the_server_continues_across_a_restart(journal_path: Path) -> None:
    """``plait.Client.run``: the server holds the program as an open workflow, journaled batch by batch; restarted
    while the program's local tool runs, it resumes the workflow and the program finishes as it would have."""
    port = _free_port()
    entered, released = threading.Event(), threading.Event()

    @plait.tool(name="pause")
    def pause(text: str) -> str:
        entered.set()
        released.wait(30)
        return text.upper()

    @plait.program
    async def two_steps(p: plait.Program, topic: str) -> dict[str, Any]:
        first = p.gen("{{topic}}:", topic=topic, max_tokens=3, ignore_eos=True, name="first")
        paused = p.tool(pause, text=first, name="paused")
        second = p.gen("{{paused}}!", paused=paused, max_tokens=3, ignore_eos=True, name="second")
        return {"first": await first, "paused": await paused, "second": await second}

    outcome: dict[str, Any] = {}

    async def run(url: str) -> None:
        async with plait.Client(url, tools=[pause], reconnect_s=60.0) as client:
            outcome["result"] = await client.run(two_steps, "rivers")

    server = durable_server(journal_path, port)
    url = server.__enter__()
    thread = threading.Thread(target=lambda: asyncio.run(run(url)), daemon=True)
    try:
        thread.start()
        assert entered.wait(30)
    finally:
        server.__exit__(None, None, None)
    released.set()
    with durable_server(journal_path, port):
        thread.join(60)
    assert not thread.is_alive()
    result = outcome["result"]
    assert result["paused"] == result["first"].upper() and isinstance(result["second"], str)


def test_serve_refuses_a_journal_it_cannot_use(tmp_path: Path) -> None:
    """``plait serve`` on a damaged journal stops at start-up (exit 2) and says which file and what to do."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "journal.sqlite3").write_bytes(b"not a database " * 100)
    command = [sys.executable, "-m", "plait", "serve", "--port", "0", "--data-dir", str(data_dir), *TINY_ARGS]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert f"{data_dir / 'journal.sqlite3'} is not a usable plait journal" in done.stderr
    assert "--no-journal" in done.stderr
