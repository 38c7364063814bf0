"""Tenants on the REST workflow API: API keys (401), isolation (another tenant's workflow is a 404 everywhere: read,
list, events, tool results, nodes, close, cancel), and admission (429 with Retry-After over the concurrency limit,
the slot and tokens released exactly once when a workflow ends)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from workflow_fixtures import WorkflowServer, client_tool_workflow, wait_for, workflow_server

from plait.server import TenantLimits
from tests.server.conftest import wait_tenants_released


@pytest.fixture(scope="module")
def wf(live_server, api_key_a, api_key_b) -> Iterator[WorkflowServer]:
    yield from workflow_server(live_server, api_key_a, api_key_b)


def test_missing_or_wrong_key_is_401(wf) -> None:
    for headers in ({}, {"Authorization": "Bearer not-a-key"}, {"Authorization": "Basic abc"}):
        submit = httpx.post(f"{wf.base_url}/v1/workflows", json={"workflow": {"nodes": []}}, headers=headers)
        assert submit.status_code == 401 and submit.json()["error"]["type"] == "authentication_error"
        assert httpx.get(f"{wf.base_url}/v1/workflows", headers=headers).status_code == 401
    by_header = httpx.get(f"{wf.base_url}/v1/workflows", headers={"X-API-Key": wf.a.headers["authorization"][7:]})
    assert by_header.status_code == 200


def test_other_tenants_workflows_are_not_found(wf) -> None:
    workflow_id = wf.a.post("/v1/workflows", json=client_tool_workflow("private")).json()["id"]
    wf.wait_waiting(wf.a, workflow_id, "ask")
    base = f"/v1/workflows/{workflow_id}"
    attempts = {
        "read": wf.b.get(base),
        "events": wf.b.get(f"{base}/events"),
        "tool result": wf.b.post(f"{base}/tool_results", json={"node": "ask", "result": 1}),
        "nodes": wf.b.post(f"{base}/nodes", json={"nodes": []}),
        "close": wf.b.post(f"{base}/close"),
        "cancel": wf.b.delete(base),
        "unknown id": wf.b.get("/v1/workflows/wf-000000000000000000000000"),
    }
    for what, response in attempts.items():
        assert response.status_code == 404, (what, response.text)
        assert "not found" in response.json()["error"]["message"]  # exactly like an unknown id
    listed = wf.b.get("/v1/workflows", params={"limit": 100}).json()["data"]
    assert workflow_id not in {item["id"] for item in listed}
    assert wf.b.get("/v1/workflows", params={"after": workflow_id}).status_code == 400  # not a cursor for b either
    # Nothing b tried had an effect: a's workflow still waits, and a can finish it.
    assert wf.a.get(base).json()["state"] == "running"
    assert wf.a.post(f"{base}/tool_results", json={"node": "ask", "result": 2}).status_code == 200
    assert wf.wait_state(wf.a, workflow_id)["state"] == "done"
    assert workflow_id in {item["id"] for item in wf.a.get("/v1/workflows", params={"limit": 100}).json()["data"]}


def test_concurrency_limit_is_429_and_admission_is_released_once(wf, monkeypatch: pytest.MonkeyPatch) -> None:
    assert wait_tenants_released(wf.state).get("b", (0, 0)) == (0, 0)
    monkeypatch.setitem(wf.state.config.tenant_limits, "b", TenantLimits(max_concurrent_programs=1))
    first = wf.b.post("/v1/workflows", json=client_tool_workflow("holds-the-slot")).json()["id"]
    assert wf.state.usage.snapshot()["b"][0] == 1
    refused = wf.b.post("/v1/workflows", json={"workflow": {"nodes": []}})
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1" and refused.json()["error"]["type"] == "rate_limit_error"
    assert wf.a.post("/v1/workflows", json={"workflow": {"nodes": []}}).status_code == 201  # a is not limited by b
    wf.b.delete(f"/v1/workflows/{first}")
    wait_for(lambda: wf.state.usage.snapshot()["b"] == (0, 0), "b's admission to be released")
    wf.b.delete(f"/v1/workflows/{first}")  # cancelling again releases nothing twice
    assert wf.state.usage.snapshot()["b"] == (0, 0)
    assert wf.b.post("/v1/workflows", json={"workflow": {"nodes": []}}).status_code == 201
    wait_for(lambda: wf.state.usage.snapshot()["b"] == (0, 0), "the empty workflow to end")


def test_token_reservation_over_the_tenant_limit_is_400(wf, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(wf.state.config.tenant_limits, "b", TenantLimits(max_queued_tokens=100))
    body = {"workflow": {"nodes": [{"kind": "llm", "id": "big", "prompt": "Hi", "output": "x", "max_tokens": 500}]}}
    response = wf.b.post("/v1/workflows", json=body)
    assert response.status_code == 400 and response.json()["error"]["field"] == "max_tokens"
    assert wf.state.usage.snapshot().get("b", (0, 0)) == (0, 0)
