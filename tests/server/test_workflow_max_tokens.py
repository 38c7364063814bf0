"""REST workflows: an LLM node whose ``max_tokens`` cannot fit in the context window after its prompt fails with the
engine's message naming ``max_tokens`` and the numbers (it used to be cut silently to what fits)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from workflow_fixtures import WorkflowServer, workflow_server

from tests.server.conftest import wait_engine_idle


@pytest.fixture(scope="module")
def wf(live_server, api_key_a, api_key_b) -> Iterator[WorkflowServer]:
    yield from workflow_server(live_server, api_key_a, api_key_b)


def test_llm_node_with_max_tokens_over_the_context_fails_naming_it(wf) -> None:
    window = wf.state.engine.core.max_context
    node = {"kind": "llm", "id": "write", "prompt": "One word about the sea:", "output": "text", "stop": ["\n"]}
    body = {"workflow": {"name": "too-long", "nodes": [{**node, "max_tokens": window}], "outputs": ["text"]}}
    response = wf.a.post("/v1/workflows", json=body)
    assert response.status_code == 201, response.text
    status = wf.wait_state(wf.a, response.json()["id"])
    assert status["state"] == "failed", status
    (write,) = status["nodes"]
    assert write["state"] == "failed" and f"max_tokens: {window} tokens do not fit" in write["error"], write
    stats = wait_engine_idle(wf.state)
    assert (stats.running, stats.kv_slots_used) == (0, 0)
