"""`plait serve --replicas 2` through real Ray on the default model: chats, workflows and OpenAI-API programs are
served; a program stays on its replica; a migrated program answers as an unmigrated one; a killed replica's stream
completes on the other replica with no token repeated."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import httpx
import pytest

from tests.served_process import DEFAULT_MODEL_ARGS, serve

pytest.importorskip("ray", reason="Ray is not installed: pip install 'plait[scale]' (make test installs it)")

KEY = "replicas-key"
OTHER_TENANT_KEY = "replicas-key-2"  # its identical calls are not answered by the first tenant's (dedup is per tenant)
TWO_REPLICAS = ("--replicas", "2", "--no-journal", "--api-keys", f"{KEY}=t,{OTHER_TENANT_KEY}=t2")


def _chat(client: httpx.Client, content: str, program: str | None = None, **extra: Any) -> httpx.Response:
    headers = {"X-Plait-Program-Id": program} if program else {}
    body = {"model": "default", "messages": [{"role": "user", "content": content}], "max_tokens": 16,
            "temperature": 0, **extra}  # fmt: skip
    return client.post("/v1/chat/completions", json=body, headers=headers)


def _replicas(client: httpx.Client) -> dict[str, Any]:
    return client.get("/server_info").json()["replicas"]


def _conversation(client: httpx.Client, program: str, migrate: bool = False) -> list[str]:
    """Two turns of one program; with ``migrate``, the program moves to the other replica between them."""
    first = _chat(client, "Name a colour.", program)
    assert first.status_code == 200, first.text
    reply = first.json()["choices"][0]["message"]["content"]
    if migrate:
        moved = client.post(f"/v1/programs/{program}/migrate", json={"replica": 1})
        assert moved.status_code == 200, moved.text
        if moved.json()["from"] == 1:  # it was there already: move it to the other one
            moved = client.post(f"/v1/programs/{program}/migrate", json={"replica": 0})
            assert moved.status_code == 200 and moved.json()["from"] == 1, moved.text
    messages = [
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": reply},
        {"role": "user", "content": "And another one?"},
    ]
    body = {"model": "default", "messages": messages, "max_tokens": 16, "temperature": 0}
    second = client.post("/v1/chat/completions", json=body, headers={"X-Plait-Program-Id": program})
    assert second.status_code == 200, second.text
    return [reply, second.json()["choices"][0]["message"]["content"]]


def test_two_ray_replicas_serve_route_migrate_and_survive_a_killed_one():
    with serve(*TWO_REPLICAS, api_key=KEY, model_args=DEFAULT_MODEL_ARGS) as served:
        client = httpx.Client(base_url=served.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120)
        replicas = _replicas(client)
        assert [r["alive"] for r in replicas["replicas"]] == [True, True]
        assert replicas["backend"] == "ray" and replicas["routing"] == "program"

        chat = _chat(client, "Say hello.")
        assert chat.status_code == 200 and chat.json()["choices"][0]["message"]["content"]

        workflow = {"name": "two-steps", "inputs": {"topic": "rain"}, "nodes": [
            {"kind": "llm", "id": "idea", "prompt": "One word about {{topic}}:", "output": "idea", "max_tokens": 6},
            {"kind": "llm", "id": "line", "prompt": "A line about {{idea}}:", "output": "line", "max_tokens": 8},
        ]}  # fmt: skip
        created = client.post("/v1/workflows", json=workflow)
        assert created.status_code == 201, created.text
        location = f"/v1/workflows/{created.json()['id']}"
        deadline = time.monotonic() + 60
        while (status := client.get(location).json())["state"] == "running":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert status["state"] == "done", status

        # One program stays on one replica; moved with its KV, it answers as an unmigrated one does.
        bound_before = _replicas(client)["decisions"]["bound"]
        reference = _conversation(client, "stay")
        assert _replicas(client)["decisions"]["bound"] > bound_before  # its second call went where its KV was
        other = httpx.Client(base_url=served.url, headers={"Authorization": f"Bearer {OTHER_TENANT_KEY}"}, timeout=120)
        assert _conversation(other, "migrated", migrate=True) == reference
        migration = _replicas(client)["migrations"][-1]
        assert migration["source"] != migration["target"] and migration["kv_tokens"] > 0
        bad = other.post("/v1/programs/migrated/migrate", json={"replica": 9})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "replica"

        # Kill the replica a streamed call runs on, mid-stream: the stream completes on the other. (The other tenant
        # streams it: the first tenant's identical call would be answered by dedup, not run.)
        unkilled = _chat(client, "Count slowly from one to ten.", max_tokens=48).json()["choices"][0]["message"]
        body = {"model": "default", "messages": [{"role": "user", "content": "Count slowly from one to ten."}],
                "max_tokens": 48, "temperature": 0, "stream": True}  # fmt: skip
        pieces: list[str] = []
        killed = False
        with other.stream("POST", "/v1/chat/completions", json=body, headers={"X-Plait-Program-Id": "victim"}) as s:
            for line in s.iter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = httpx.Response(200, content=line[6:]).json()
                pieces.append(chunk["choices"][0]["delta"].get("content") or "")
                if len(pieces) == 4 and not killed:
                    running = [r for r in _replicas(client)["replicas"] if r["running"] > 0]
                    os.kill(running[0]["pid"], signal.SIGKILL)
                    killed = True
        assert killed and "".join(pieces) == unkilled["content"]
        info = _replicas(client)
        assert sorted(r["alive"] for r in info["replicas"]) == [False, True] and info["failovers"] == 1
        after = _chat(client, "Say hello.")
        assert (
            after.status_code == 200
            and after.json()["choices"][0]["message"]["content"] == chat.json()["choices"][0]["message"]["content"]
        )
