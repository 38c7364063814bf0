"""REST workflows on a real server (uvicorn on 127.0.0.1, the default model): submit -> events -> result, replay for
late subscribers, client-side tools, cancel frees KV, validation errors naming node and field, the node limit,
pagination, open workflows and deadlines."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from workflow_fixtures import (
    LOOKUP_TOOL,
    WorkflowServer,
    chain_workflow,
    client_tool_workflow,
    wait_for,
    workflow_server,
)

from tests.server.conftest import wait_engine_idle


@pytest.fixture(scope="module")
def wf(live_server, api_key_a, api_key_b) -> Iterator[WorkflowServer]:
    yield from workflow_server(live_server, api_key_a, api_key_b)


def test_submit_stream_and_result(wf) -> None:
    response = wf.a.post("/v1/workflows", json={"workflow": chain_workflow()})
    assert response.status_code == 201, response.text
    created = response.json()
    workflow_id = created["id"]
    assert created["state"] == "running" and response.headers["location"] == f"/v1/workflows/{workflow_id}"

    events = wf.events(wf.a, workflow_id)
    kinds = [(event.kind, event.data.get("node")) for event in events]
    assert kinds[0] == ("node_started", "write")
    assert kinds[-1] == ("done", None)
    assert [event.id for event in events] == sorted(event.id for event in events)
    assert all(event.data["workflow"] == workflow_id for event in events)
    # Each node: started, (tokens,) finished; a consumer starts only after its producer finished.
    order = [kind for kind in kinds if kind[0] in ("node_started", "node_finished")]
    assert order == [
        ("node_started", "write"),
        ("node_finished", "write"),
        ("node_started", "loud"),
        ("node_finished", "loud"),
        ("node_started", "again"),
        ("node_finished", "again"),
    ]
    finished = {event.data["node"]: event.data for event in events if event.kind == "node_finished"}
    streamed = "".join(
        event.data["text"] for event in events if event.kind == "token" and event.data["node"] == "write"
    )
    assert streamed == finished["write"]["value"] and finished["write"]["state"] == "done"
    assert finished["loud"]["value"] == finished["write"]["value"].upper()
    assert "finish_reasons" in finished["again"]["metadata"]
    outputs = events[-1].data["outputs"]
    assert outputs == {
        name: finished[node]["value"] for name, node in [("text", "write"), ("upper", "loud"), ("echo", "again")]
    }

    status = wf.a.get(f"/v1/workflows/{workflow_id}").json()
    assert status["state"] == "done" and status["error"] is None and status["outputs"] == outputs
    nodes = {node["node"]: node for node in status["nodes"]}
    assert nodes["write"]["kind"] == "llm" and nodes["write"]["ttft_s"] > 0 and nodes["write"]["completion_tokens"] >= 1
    assert nodes["loud"]["tool"] == "shout" and nodes["loud"]["attempts"] == 1 and nodes["loud"]["run_s"] >= 0
    assert all(node["state"] == "done" for node in nodes.values())

    # A late subscriber gets the whole story again (tokens merged per node), the final event last; resuming after an
    # event id skips what was seen.
    replay = wf.events(wf.a, workflow_id)
    assert [(e.kind, e.data.get("node")) for e in replay if e.kind != "token"] == [k for k in kinds if k[0] != "token"]
    assert [e.data["text"] for e in replay if e.kind == "token" and e.data["node"] == "write"] == [streamed]
    tail = wf.events(wf.a, workflow_id, headers={"Last-Event-ID": str(replay[-2].id)})
    assert [event.kind for event in tail] == ["done"]


def test_client_side_tool_round_trip(wf) -> None:
    workflow_id = wf.a.post("/v1/workflows", json=client_tool_workflow()).json()["id"]
    calls = []

    def answer(event) -> None:
        if event.kind != "tool_call":
            return
        calls.append(event.data)
        status = wf.a.get(f"/v1/workflows/{workflow_id}").json()
        waiting = {node["node"]: node for node in status["nodes"]}["ask"]
        assert waiting["state"] == "waiting_for_tool" and waiting["tool_call"]["arguments"] == {"query": "HELLO THERE"}
        assert [call["node"] for call in status["pending_tool_calls"]] == ["ask"]
        post = lambda body: wf.a.post(f"/v1/workflows/{workflow_id}/tool_results", json=body)  # noqa: E731
        wrong_node = post({"node": "nope", "result": 1})
        assert wrong_node.status_code == 422 and wrong_node.json()["error"]["field"] == "node"
        server_tool = post({"node": "prepare", "result": 1})
        assert server_tool.status_code == 409 and "client-side tool" in server_tool.json()["error"]["message"]
        not_yet = post({"node": "score", "result": 1})
        assert not_yet.status_code == 409
        wrong_type = post({"node": "ask", "result": "many"})
        assert wrong_type.status_code == 422 and wrong_type.json()["error"]["field"] == "result"
        both = post({"node": "ask", "result": 1, "error": "x"})
        assert both.status_code == 422
        accepted = post({"node": "ask", "result": 3})
        assert accepted.status_code == 200 and accepted.json()["accepted"] is True
        again = post({"node": "ask", "result": 3})
        assert again.status_code == 409 and "already has a result" in again.json()["error"]["message"]

    events = wf.events(wf.a, workflow_id, on_event=answer)
    assert calls == [
        {
            "workflow": workflow_id,
            "node": "ask",
            "tool": "lookup",
            "arguments": {"query": "HELLO THERE"},
            "timeout_s": calls[0]["timeout_s"],
            "waiting_since": calls[0]["waiting_since"],
            "idempotency_key": f"{workflow_id}/ask",  # the same when the call is offered again after a restart
        }
    ]
    assert events[-1].kind == "done" and events[-1].data["outputs"] == {"hits": 3, "total": 5}
    kinds = [(event.kind, event.data.get("node")) for event in events]
    assert (
        kinds.index(("node_started", "ask")) < kinds.index(("tool_call", "ask")) < kinds.index(("node_finished", "ask"))
    )


def _end_openai_programs(wf) -> None:
    """End the OpenAI-API programs earlier tests left open on the shared server (their gaps may hold pins)."""
    for client in (wf.a, wf.b):
        for program in client.get("/v1/programs").json()["data"]:
            client.delete(f"/v1/programs/{program['id']}")
    wait_for(lambda: wf.state.engine.core.stats().pinned_slots == 0, "the programs' pins released")


def test_a_client_tool_is_pinned_by_the_planner_not_by_a_policy_of_its_own(wf) -> None:
    """A client tool is a tool to the planner: nothing after it reads the program's KV here, so nothing is pinned
    while it waits (a fixed-TTL pin of the client-tool path used to hold it anyway)."""
    _end_openai_programs(wf)
    body = client_tool_workflow("not-pinned")
    body["workflow"]["nodes"].insert(
        0, {"kind": "llm", "id": "think", "prompt": "Say hi to {{phrase}}:", "output": "hi", "max_tokens": 3}
    )
    body["workflow"]["nodes"][1]["args"]["text"] = {"$var": "hi"}
    counters = wf.state.executor.planner.counters
    considered = counters.pins + counters.pins_declined
    workflow_id = wf.a.post("/v1/workflows", json=body).json()["id"]
    wf.wait_waiting(wf.a, workflow_id, "ask")
    wait_engine_idle(wf.state)
    assert wf.state.engine.stats().pinned_slots == 0
    assert counters.pins + counters.pins_declined == considered  # no later call continues the KV: not considered
    wf.a.post(f"/v1/workflows/{workflow_id}/tool_results", json={"node": "ask", "error": "database offline"})
    status = wf.wait_state(wf.a, workflow_id)
    assert status["state"] == "failed"
    assert "client tool 'lookup' failed: database offline" in status["error"]


def test_a_client_tool_before_a_continuing_call_gets_the_planners_pin_decision(wf) -> None:
    """When the call after the client tool continues the conversation before it, the planner weighs a pin for the
    tool's expected duration, as for a server tool; a pin it takes ends when the result arrives."""
    _end_openai_programs(wf)
    body = client_tool_workflow("continues")
    nodes = body["workflow"]["nodes"]
    nodes[:] = [
        {"kind": "llm", "id": "think", "prompt": "Question: {{phrase}}\nThought:", "output": "q", "max_tokens": 3},
        nodes[1],  # ask: lookup(query=q), a client tool
        {
            "kind": "llm",
            "id": "answer",
            "prompt": "Question: {{phrase}}\nThought:{{q}}\nFound: {{hits}}\nAnswer:",
            "output": "total",
            "max_tokens": 3,
        },
    ]
    counters = wf.state.executor.planner.counters
    considered = counters.pins + counters.pins_declined
    workflow_id = wf.a.post("/v1/workflows", json=body).json()["id"]
    wf.wait_waiting(wf.a, workflow_id, "ask")
    assert counters.pins + counters.pins_declined == considered + 1
    wf.a.post(f"/v1/workflows/{workflow_id}/tool_results", json={"node": "ask", "result": 3})
    assert wf.wait_state(wf.a, workflow_id)["state"] == "done"
    wait_for(lambda: wf.state.engine.stats().pinned_slots == 0, "no pin left")


def test_client_tool_timeout_fails_the_node(wf) -> None:
    workflow_id = wf.a.post("/v1/workflows", json=client_tool_workflow("slow", timeout_s=0.3)).json()["id"]
    status = wf.wait_state(wf.a, workflow_id)
    nodes = {node["node"]: node for node in status["nodes"]}
    assert status["state"] == "failed" and nodes["ask"]["state"] == "failed"
    assert "no result was posted within 0.3s" in nodes["ask"]["error"] and "tool_timeout" in nodes["ask"]["error"]
    late = wf.a.post(f"/v1/workflows/{workflow_id}/tool_results", json={"node": "ask", "result": 1})
    assert late.status_code == 409
    events = wf.events(wf.a, workflow_id)
    assert events[-1].kind == "failed" and "no result was posted" in events[-1].data["error"]


def test_undeclared_tools_are_still_rejected(wf) -> None:
    body = client_tool_workflow()
    body["client_tools"] = []
    response = wf.a.post("/v1/workflows", json=body)
    assert response.status_code == 422
    assert {(p["node"], p["field"]) for p in response.json()["error"]["problems"]} == {("ask", "tool")}
    clash = client_tool_workflow()
    clash["client_tools"].append({"name": "shout"})
    response = wf.a.post("/v1/workflows", json=clash)
    assert response.status_code == 422 and response.json()["error"]["field"] == "client_tools[1].name"


def test_cancel_mid_generation_frees_kv(wf) -> None:
    body = {
        "workflow": {
            "name": "long",
            "nodes": [
                {"kind": "llm", "id": "count", "prompt": "Count to 500: 1, 2, 3,", "output": "n", "max_tokens": 1500}
            ],
        }
    }
    workflow_id = wf.a.post("/v1/workflows", json=body).json()["id"]
    cancelled = {}

    def cancel_on_first_token(event) -> None:
        if event.kind == "token" and not cancelled:
            response = wf.a.delete(f"/v1/workflows/{workflow_id}")
            assert response.status_code == 200
            cancelled.update(response.json())

    events = wf.events(wf.a, workflow_id, on_event=cancel_on_first_token)
    assert cancelled["state"] == "cancelled" and cancelled["nodes"][0]["state"] == "cancelled"
    assert events[-1].kind == "cancelled"
    stats = wait_engine_idle(wf.state)
    assert stats.kv_slots_used == 0 and stats.running == 0
    again = wf.a.delete(f"/v1/workflows/{workflow_id}")  # idempotent: the final state
    assert again.status_code == 200 and again.json()["state"] == "cancelled"


def test_cancelling_a_finished_workflow_returns_its_final_state(wf) -> None:
    workflow_id = wf.a.post("/v1/workflows", json={"workflow": {"name": "empty", "nodes": []}}).json()["id"]
    response = wf.a.delete(f"/v1/workflows/{workflow_id}")
    assert response.status_code == 200 and response.json()["state"] == "done"


def test_validation_errors_name_node_and_field(wf) -> None:
    bad = {
        "workflow": {
            "nodes": [
                {"kind": "llm", "id": "a", "prompt": "{{missing}}", "output": "x", "max_tokens": 0},
                {"kind": "tool", "id": "t", "tool": "shout", "args": {"txt": "hi"}, "output": "y"},
            ]
        }
    }
    response = wf.a.post("/v1/workflows", json=bad)
    assert response.status_code == 422
    error = response.json()["error"]
    found = {(p["node"], p["field"]) for p in error["problems"]}
    assert {("a", "prompt"), ("a", "max_tokens"), ("t", "args.txt"), ("t", "args.text")} <= found
    assert "node 'a'" in error["message"] and "max_tokens" in error["message"]

    wire = wf.a.post("/v1/workflows", json={"workflow": {"nodes": [{"kind": "llm", "id": "a", "max_tokens": "x"}]}})
    assert wire.status_code == 422 and wire.json()["error"]["problems"][0]["field"].startswith("nodes[0]")
    option = wf.a.post("/v1/workflows", json={"workflow": {"nodes": []}, "priority": "high"})
    assert option.status_code == 422 and option.json()["error"]["field"] == "priority"
    unknown = wf.a.post("/v1/workflows", json={"workflow": {"nodes": []}, "colour": 1})
    assert unknown.status_code == 422 and unknown.json()["error"]["field"] == "colour"
    not_json = wf.a.post("/v1/workflows", content=b"{nope", headers={"Content-Type": "application/json"})
    assert not_json.status_code == 400 and not_json.json()["error"]["field"] == "body"
    no_workflow = wf.a.post("/v1/workflows", json={"inputs": {}})
    assert no_workflow.status_code == 422 and no_workflow.json()["error"]["field"] == "workflow"
    bare = wf.a.post("/v1/workflows", json={"name": "bare", "nodes": []})  # a spec without the envelope
    assert bare.status_code == 201


def test_node_limit(wf, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wf.state.config, "max_nodes_per_workflow", 2)
    response = wf.a.post("/v1/workflows", json={"workflow": chain_workflow()})
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["field"] == "nodes" and "at most 2" in error["message"]


def test_pagination_newest_first(wf) -> None:
    ids = [wf.b.post("/v1/workflows", json={"workflow": {"name": f"p{i}", "nodes": []}}).json()["id"] for i in range(3)]
    first = wf.b.get("/v1/workflows", params={"limit": 2}).json()
    assert [item["id"] for item in first["data"]] == [ids[2], ids[1]]
    assert first["has_more"] is True and first["last_id"] == ids[1]
    assert first["data"][0]["name"] == "p2" and first["data"][0]["state"] == "done"
    second = wf.b.get("/v1/workflows", params={"limit": 2, "after": first["last_id"]}).json()
    assert second["data"][0]["id"] == ids[0]
    assert wf.b.get("/v1/workflows", params={"after": "wf-unknown"}).status_code == 400
    assert wf.b.get("/v1/workflows", params={"limit": 0}).status_code == 422


def test_open_workflow_grows_all_or_nothing_and_closes(wf) -> None:
    opened = wf.a.post("/v1/workflows", json={"workflow": {"name": "grow", "nodes": []}, "open": True}).json()
    workflow_id = opened["id"]
    grow = lambda body: wf.a.post(f"/v1/workflows/{workflow_id}/nodes", json=body)  # noqa: E731
    first = grow(
        {
            "nodes": [
                {"kind": "tool", "id": "one", "tool": "shout", "args": {"text": {"$var": "w"}}, "output": "big"},
                {"kind": "tool", "id": "two", "tool": "word_total", "args": {"text": {"$var": "big"}}, "output": "n"},
            ],
            "inputs": {"w": "a b c"},
        }
    )
    assert first.status_code == 200 and first.json()["added"] == ["one", "two"]
    wait_for(lambda: "n" in wf.a.get(f"/v1/workflows/{workflow_id}").json()["variables"], "both nodes to run")
    rejected = grow(
        {
            "nodes": [
                {"kind": "tool", "id": "three", "tool": "shout", "args": {"text": {"$var": "v"}}, "output": "big2"},
                {"kind": "tool", "id": "four", "tool": "shout", "args": {"text": 5}, "output": "big3"},
            ],
            "inputs": {"v": "x"},
        }
    )
    assert rejected.status_code == 422 and rejected.json()["error"]["problems"][0]["node"] == "four"
    status = wf.a.get(f"/v1/workflows/{workflow_id}").json()
    assert status["state"] == "running" and [node["node"] for node in status["nodes"]] == ["one", "two"]
    assert status["variables"] == {"big": "A B C", "n": 3}
    closed = wf.a.post(f"/v1/workflows/{workflow_id}/close").json()
    assert closed["state"] == "done" and closed["outputs"] == {"n": 3}
    assert grow({"nodes": []}).status_code == 409
    whole = wf.a.post("/v1/workflows", json={"workflow": {"nodes": []}}).json()["id"]
    assert wf.a.post(f"/v1/workflows/{whole}/nodes", json={"nodes": []}).status_code == 409
    assert wf.a.post(f"/v1/workflows/{whole}/close").status_code == 409


def test_deadline_cancels_the_workflow(wf) -> None:
    body = client_tool_workflow("deadline")
    body["deadline_s"] = 0.3
    workflow_id = wf.a.post("/v1/workflows", json=body).json()["id"]
    status = wf.wait_state(wf.a, workflow_id)
    assert status["state"] == "cancelled" and "deadline_s of 0.3 s" in status["error"]


def test_events_of_a_running_workflow_stop_when_the_client_leaves(wf) -> None:
    workflow_id = wf.a.post("/v1/workflows", json=client_tool_workflow("leave")).json()["id"]
    seen = wf.events(wf.a, workflow_id, stop=lambda event: event.kind == "tool_call")
    assert seen[-1].kind == "tool_call"
    status = wf.a.get(f"/v1/workflows/{workflow_id}").json()
    assert status["state"] == "running"  # the stream closing did not touch the workflow
    wf.a.post(f"/v1/workflows/{workflow_id}/tool_results", json={"node": "ask", "result": 0})
    assert wf.wait_state(wf.a, workflow_id)["state"] == "done"


def test_tools_listing_and_openapi(wf) -> None:
    tools = {tool["name"]: tool for tool in wf.a.get("/v1/tools").json()["data"]}
    assert tools["shout"]["parameters"]["properties"]["text"] == {"type": "string"}
    spec = wf.a.get("/openapi.json").json()
    body = spec["paths"]["/v1/workflows"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "workflow" in body["properties"] and "client_tools" in body["properties"]
    assert LOOKUP_TOOL["name"] not in tools
    refs = _refs(body)
    assert refs and all(ref.startswith("#/paths/~1v1~1workflows/post/requestBody/") for ref in refs)
    for ref in refs:  # every reference resolves inside the document
        target = spec
        for part in ref[2:].split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]


def _refs(schema) -> list[str]:
    if isinstance(schema, dict):
        return [schema["$ref"]] if "$ref" in schema else [ref for value in schema.values() for ref in _refs(value)]
    if isinstance(schema, list):
        return [ref for item in schema for ref in _refs(item)]
    return []
