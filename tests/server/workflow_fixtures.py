"""Helpers of the REST workflow tests: server-side test tools, workflow bodies, an SSE reader, and
``workflow_server``: the session's ``live_server`` with those tools registered and a client per tenant."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx

import plait


@plait.tool
def shout(text: str) -> str:
    """Upper-case the text (a server-side tool)."""
    return text.upper()


@plait.tool
def word_total(text: str, bonus: int = 0) -> int:
    """Words in the text, plus a bonus."""
    return len(text.split()) + bonus


LOOKUP_TOOL = {
    "name": "lookup",
    "description": "Look a phrase up in the caller's database.",
    "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
    "returns": {"type": "integer"},
}


@dataclass
class Event:
    id: int
    kind: str
    data: dict[str, Any]


@dataclass
class WorkflowServer:
    """``live_server`` seen from the workflow tests: an httpx client per tenant, and the server state."""

    base_url: str
    state: Any
    a: httpx.Client  # tenant "a"
    b: httpx.Client  # tenant "b"

    def events(self, client: httpx.Client, workflow_id: str, **kwargs: Any) -> list[Event]:
        return read_events(client, f"/v1/workflows/{workflow_id}/events", **kwargs)

    def wait_state(self, client: httpx.Client, workflow_id: str, timeout_s: float = 60.0) -> dict[str, Any]:
        """Poll until the workflow has finished; its status."""
        deadline = time.monotonic() + timeout_s
        while True:
            status = client.get(f"/v1/workflows/{workflow_id}").json()
            if status["state"] != "running" or time.monotonic() > deadline:
                return status
            time.sleep(0.05)

    def wait_waiting(self, client: httpx.Client, workflow_id: str, node: str, timeout_s: float = 60.0) -> dict:
        """Poll until ``node`` waits for a client tool result; the workflow's status."""
        deadline = time.monotonic() + timeout_s
        while True:
            status = client.get(f"/v1/workflows/{workflow_id}").json()
            states = {item["node"]: item["state"] for item in status["nodes"]}
            if states.get(node) == "waiting_for_tool":
                return status
            assert status["state"] == "running" and time.monotonic() < deadline, status
            time.sleep(0.05)


def workflow_server(live_server: Any, api_key_a: str, api_key_b: str) -> Iterator[WorkflowServer]:
    """The session's live server with the test tools registered, and clients for tenants ``a`` and ``b`` (wrap it
    in a fixture: ``yield from workflow_server(live_server, api_key_a, api_key_b)``)."""
    live_server.state.executor.register_tool(shout)
    live_server.state.executor.register_tool(word_total)
    with (
        httpx.Client(base_url=live_server.base_url, headers=live_server.headers(api_key_a), timeout=60) as a,
        httpx.Client(base_url=live_server.base_url, headers=live_server.headers(api_key_b), timeout=60) as b,
    ):
        yield WorkflowServer(live_server.base_url, live_server.state, a, b)


def read_events(
    client: httpx.Client,
    path: str,
    *,
    on_event: Callable[[Event], None] | None = None,
    headers: dict[str, str] | None = None,
    params: dict[str, Any] | None = None,
    stop: Callable[[Event], bool] | None = None,
) -> list[Event]:
    """Read a server-sent-events stream to its end (or until ``stop(event)``), calling ``on_event`` for each."""
    events: list[Event] = []
    fields: dict[str, str] = {}
    timeout = httpx.Timeout(60.0, read=60.0)
    with client.stream("GET", path, headers=headers, params=params, timeout=timeout) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith(":"):
                continue
            if line:
                name, _, value = line.partition(": ")
                fields[name] = value
                continue
            if "data" not in fields:
                continue
            event = Event(int(fields["id"]), fields["event"], json.loads(fields["data"]))
            fields = {}
            events.append(event)
            if on_event is not None:
                on_event(event)
            if stop is not None and stop(event):
                break
    return events


def wait_for(predicate: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def chain_workflow(name: str = "chain", max_tokens: int = 5) -> dict[str, Any]:
    """LLM -> server tool -> LLM."""
    return {
        "name": name,
        "inputs": {"topic": "the sea"},
        "nodes": [
            {"kind": "llm", "id": "write", "prompt": "One word about {{topic}}:", "output": "text", "max_tokens": 4},
            {"kind": "tool", "id": "loud", "tool": "shout", "args": {"text": {"$var": "text"}}, "output": "upper"},
            {
                "kind": "llm",
                "id": "again",
                "prompt": "Repeat: {{upper}}\n",
                "output": "echo",
                "max_tokens": max_tokens,
            },
        ],
        "outputs": ["text", "upper", "echo"],
    }


def client_tool_workflow(name: str = "with-client-tool", timeout_s: float | None = None) -> dict[str, Any]:
    """A server tool whose result a client-side tool consumes (no LLM: fast)."""
    tool = dict(LOOKUP_TOOL)
    if timeout_s is not None:
        tool["timeout_s"] = timeout_s
    return {
        "workflow": {
            "name": name,
            "inputs": {"phrase": "hello there"},
            "nodes": [
                {"kind": "tool", "id": "prepare", "tool": "shout", "args": {"text": {"$var": "phrase"}}, "output": "q"},
                {"kind": "tool", "id": "ask", "tool": "lookup", "args": {"query": {"$var": "q"}}, "output": "hits"},
                {
                    "kind": "tool",
                    "id": "score",
                    "tool": "word_total",
                    "args": {"text": {"$var": "q"}, "bonus": {"$var": "hits"}},
                    "output": "total",
                },
            ],
            "outputs": ["hits", "total"],
        },
        "client_tools": [tool],
    }
