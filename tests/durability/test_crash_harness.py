"""Acceptance (issue 40): ``kill -9`` the server mid-run, restart it, and nothing accepted is lost.

A real ``plait serve`` (the default model, float32, temperature 0) gets 30 workflows, each a fan-out with a tool that
sleeps and has a side effect (``crash_tools.slow_upper``), submitted with an ``Idempotency-Key`` and re-submitted
with the same key until acknowledged. The server is killed ten times: at the named crash points (after a workflow's
acceptance is committed but before its 201; mid-decode; after a step's output is committed but before its
dependents start; after a tool's effect but before its result is committed) and at random moments; after each kill
it is restarted on the same data directory. Then it runs to the end, and:

- every acknowledged id reaches exactly one terminal state (``done``): one row, one final event; each key one id;
- no node has two committed outputs, and every node of every workflow has one;
- the outputs equal those of a run without crashes (a separate server, same model and workflows);
- each tool's effect counter is one per node (it ran at least once; its idempotency key kept the effect single);
- a client-side tool call pending at a crash is offered again after the restart, with the same idempotency key.
"""

from __future__ import annotations

import collections
import contextlib
import os
import random
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.durability.server_process import ServerProcess

WORKFLOWS = 30
TOPICS = ("a fruit", "a colour", "an animal", "a city", "a planet", "a metal")
# The ten crashes: named points (the N-th time the point is reached) and random kills (None), in this order.
CRASHES: tuple[str | None, ...] = (
    "after_accept:2",
    "mid_decode:2",
    "after_output:3",
    "mid_tool:1",
    None,
    "after_output:6",
    None,
    "mid_decode:5",
    "mid_tool:2",
    None,
)
WAVE = 3  # new workflows submitted per run (with the unacknowledged ones), so that every run has work to crash in
CRASH_WAIT_S = 15.0  # a crash point not reached by then: killed anyway
FINISH_TIMEOUT_S = 120.0
SEED = int(os.environ.get("PLAIT_CRASH_SEED", "40"))
LOOKUP_TOOL = {
    "name": "lookup",
    "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
    "returns": {"type": "string"},
}


def workflow(index: int) -> dict[str, Any]:
    """A fan-out: ask -> (shout: a tool with a sleep and a side effect, explain: an LLM call) -> join."""
    return {
        "workflow": {
            "name": f"crash-{index}",
            "inputs": {"topic": TOPICS[index % len(TOPICS)], "n": str(index)},
            "nodes": [
                {"kind": "llm", "id": "ask", "prompt": "Request {{n}}: name {{topic}}.\nAnswer:", "output": "answer",
                 "max_tokens": 4, "temperature": 0},
                {"kind": "tool", "id": "shout", "tool": "slow_upper", "output": "loud",
                 "args": {"text": {"$var": "answer"}, "delay_s": 0.2 + 0.2 * (index % 4)}},
                {"kind": "llm", "id": "explain", "prompt": "{{n}}. Why {{answer}}?", "output": "why", "max_tokens": 4,
                 "temperature": 0},
                {"kind": "llm", "id": "join", "prompt": "{{loud}} / {{why}} /", "output": "final", "max_tokens": 3,
                 "temperature": 0},
            ],
            "outputs": ["final", "loud", "why"],
        }
    }  # fmt: skip


def client_tool_workflow() -> dict[str, Any]:
    """One LLM call feeding a client-side tool that the test answers only after a restart."""
    return {
        "workflow": {
            "name": "client-tool",
            "inputs": {"q": "Name a river."},
            "nodes": [
                {"kind": "llm", "id": "ask", "prompt": "{{q}}\nAnswer:", "output": "answer", "max_tokens": 4,
                 "temperature": 0},
                {"kind": "tool", "id": "look", "tool": "lookup", "args": {"query": {"$var": "answer"}},
                 "output": "found"},
            ],
        },
        "client_tools": [LOOKUP_TOOL],
    }  # fmt: skip


class Submitter:
    """Submits every workflow until acknowledged (201), always with its own Idempotency-Key."""

    def __init__(self, bodies: dict[str, dict[str, Any]]) -> None:
        self.bodies = bodies
        self.sent: set[str] = set()
        self.acked: dict[str, str] = {}  # key -> workflow id
        self.answers: dict[str, set[str]] = collections.defaultdict(set)  # key -> every id a 201 named

    def submit_pending(self, url: str, new: int | None = None) -> None:
        """Submit the workflows sent before but not acknowledged, then up to ``new`` others (None: all)."""
        with httpx.Client(base_url=url, timeout=30) as client:
            for key, body in self.bodies.items():
                if key in self.acked:
                    continue
                if key not in self.sent:
                    if new is not None and new <= 0:
                        return
                    new = None if new is None else new - 1
                    self.sent.add(key)
                try:
                    response = client.post("/v1/workflows", json=body, headers={"Idempotency-Key": key})
                except httpx.TransportError:
                    return  # the server died: the rest goes to the next run
                assert response.status_code == 201, response.text
                self.acked[key] = response.json()["id"]
                self.answers[key].add(response.json()["id"])


def wait_all_finished(url: str, ids: list[str], timeout_s: float) -> dict[str, dict[str, Any]]:
    """The final status of every workflow in ``ids``. Polls one list page (cheap for the server): it holds the
    workflows of this process; one that finished in an earlier one is loaded from the journal by its id."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=url, timeout=30) as client:
        while True:
            page = client.get("/v1/workflows", params={"limit": 100}).json()["data"]
            states = {item["id"]: item["state"] for item in page}
            running = [workflow_id for workflow_id in ids if states.get(workflow_id) == "running"]
            if not running:
                return {workflow_id: client.get(f"/v1/workflows/{workflow_id}").json() for workflow_id in ids}
            assert time.monotonic() < deadline, f"unfinished: {running}"
            time.sleep(0.5)


def reference_outputs(tmp_path: Path, bodies: dict[str, dict[str, Any]], log: list[str]) -> dict[str, Any]:
    """The outputs of a run without crashes."""
    server = ServerProcess(tmp_path / "reference-data", _dir(tmp_path / "reference-effects"), log=log)
    assert server.start(), "".join(log[-40:])
    try:
        submitter = Submitter(bodies)
        submitter.submit_pending(server.url)
        statuses = wait_all_finished(server.url, list(submitter.acked.values()), FINISH_TIMEOUT_S)
    finally:
        server.stop()
    return {key: statuses[workflow_id]["outputs"] for key, workflow_id in submitter.acked.items()}


def _dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.mark.slow
def test_kill_9_and_restart_ten_times_loses_nothing_accepted(tmp_path: Path) -> None:
    started = time.monotonic()
    rng = random.Random(SEED)
    bodies = {f"key-{index:02d}": workflow(index) for index in range(WORKFLOWS)}
    log: list[str] = []
    expected = reference_outputs(tmp_path, bodies, log)
    reference_s = time.monotonic() - started

    data_dir, effects_dir = tmp_path / "data", _dir(tmp_path / "effects")
    submitter = Submitter(bodies)
    client_tool_id = ""
    for cycle, crash in enumerate(CRASHES):
        server = ServerProcess(data_dir, effects_dir, crash_point=crash, log=log)
        if server.start():
            submitter.submit_pending(server.url, new=WAVE)
            if cycle >= 1 and not client_tool_id:  # a client-side tool call that waits across the next crashes
                with httpx.Client(base_url=server.url, timeout=30) as client, contextlib.suppress(httpx.TransportError):
                    headers = {"Idempotency-Key": "client-tool"}
                    response = client.post("/v1/workflows", json=client_tool_workflow(), headers=headers)
                    client_tool_id = response.json()["id"]
            if crash is None:
                time.sleep(rng.uniform(0.3, 2.5))
            elif server.wait(CRASH_WAIT_S) is None:
                log.append(f"crash point {crash} not reached in {CRASH_WAIT_S} s: killed\n")
        server.kill()
        assert server.process is not None and server.process.returncode == -9, "".join(log[-40:])
        print(f"cycle {cycle} ({crash}): {time.monotonic() - started:.1f} s, acknowledged {len(submitter.acked)}")

    server = ServerProcess(data_dir, effects_dir, log=log)
    assert server.start(), "".join(log[-40:])
    try:
        submitter.submit_pending(server.url)
        assert len(submitter.acked) == WORKFLOWS
        statuses = wait_all_finished(server.url, list(submitter.acked.values()), FINISH_TIMEOUT_S)
        pending = _answer_client_tool(server.url, client_tool_id)
    finally:
        assert server.stop() == 0, "".join(log[-40:])
    elapsed_s = time.monotonic() - started
    print(f"crash harness: {elapsed_s:.1f} s (reference run {reference_s:.1f} s), seed {SEED}")

    # Each key named one workflow, and each acknowledged workflow finished once, as it would have without crashes.
    assert all(len(ids) == 1 for ids in submitter.answers.values()), submitter.answers
    for key, workflow_id in submitter.acked.items():
        assert statuses[workflow_id]["state"] == "done", statuses[workflow_id]
        assert statuses[workflow_id]["outputs"] == expected[key], key
    _check_journal(data_dir / "journal.sqlite3", set(submitter.acked.values()), client_tool_id)
    _check_effects(effects_dir, set(submitter.acked.values()))
    assert pending["idempotency_key"] == f"{client_tool_id}/look"
    reached = [line for line in log if "crash point" in line and "reached" in line]
    assert len(reached) >= 5, reached  # most named points struck (a run may end before its point: then killed)


def _answer_client_tool(url: str, workflow_id: str) -> dict[str, Any]:
    """The client tool call the server offers again after the restarts; answered, its workflow completes."""
    with httpx.Client(base_url=url, timeout=30) as client:
        deadline = time.monotonic() + 60
        while not (status := client.get(f"/v1/workflows/{workflow_id}").json())["pending_tool_calls"]:
            assert status["state"] == "running" and time.monotonic() < deadline, status
            time.sleep(0.1)
        call = status["pending_tool_calls"][0]
        answer = client.post(f"/v1/workflows/{workflow_id}/tool_results", json={"node": "look", "result": "found"})
        assert answer.status_code == 200, answer.text
    assert wait_all_finished(url, [workflow_id], 30)[workflow_id]["outputs"] == {"found": "found"}
    return call


def _check_journal(path: Path, acked: set[str], client_tool_id: str) -> None:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = dict(db.execute("SELECT id, state FROM programs WHERE kind = 'workflow'").fetchall())
        assert set(rows) == acked | {client_tool_id}  # nothing accepted beyond what was acknowledged
        assert set(rows.values()) == {"done"}
        twice = db.execute(
            "SELECT program_id, node_id, COUNT(*) FROM outcomes GROUP BY program_id, node_id HAVING COUNT(*) > 1"
        ).fetchall()
        assert twice == []
        outcomes = collections.Counter(row[0] for row in db.execute("SELECT program_id FROM outcomes"))
        assert all(outcomes[workflow_id] == 4 for workflow_id in acked), outcomes
        finals = collections.Counter(
            row[0] for row in db.execute("SELECT program_id FROM events WHERE kind IN ('done', 'failed', 'cancelled')")
        )
        assert all(finals[workflow_id] == 1 for workflow_id in rows), finals
    finally:
        db.close()


def _check_effects(effects_dir: Path, acked: set[str]) -> None:
    effects = collections.Counter((effects_dir / "effects.log").read_text(encoding="utf-8").split())
    attempts = collections.Counter((effects_dir / "attempts.log").read_text(encoding="utf-8").split())
    assert set(effects) == {f"{workflow_id}/shout" for workflow_id in acked}
    assert set(effects.values()) == {1}  # one effect per node, however many times it ran
    assert all(attempts[key] >= 1 for key in effects)
