"""The pieces under the workflow routes, without a server: the event log (replay, resume, merged tokens, live
followers), text listeners of variables, all-or-nothing node batches, client tool declarations and the SSE parser."""

from __future__ import annotations

import asyncio

import pytest

from plait.dag import LLMCall, ToolSpec, Workflow
from plait.runtime import ToolRegistry
from plait.sdk.server_events import parse_events
from plait.semantic_vars import SemanticVariable, Template
from plait.server import ServerConfig
from plait.server.errors import APIError
from plait.server.workflows.client_tools import ClientTool, ProgramTools
from plait.server.workflows.events import EventLog
from plait.server.workflows.protocol import ClientToolDecl
from plait.server.workflows.serving import declare_client_tools


def test_event_log_replays_resumes_and_merges_tokens() -> None:
    async def main() -> tuple[list, list, list]:
        log = EventLog("wf-1")
        live: list = []

        async def follow() -> None:
            async for event in log.follow(0, idle_s=0.01):
                if event is not None:
                    live.append((event.seq, event.kind, event.data.get("text")))

        follower = asyncio.get_running_loop().create_task(follow())
        log.append("node_started", {"node": "a"})
        await asyncio.sleep(0.02)
        for piece in ("Hel", "lo"):
            log.append("token", {"node": "a", "text": piece})
        await asyncio.sleep(0.02)  # the follower sees the tokens as they come
        log.append("node_finished", {"node": "a"})
        log.append("done", {})
        log.close()
        await asyncio.wait_for(follower, 1.0)
        replay = [(e.seq, e.kind, e.data.get("text")) async for e in log.follow(0) if e is not None]
        resumed = [e.seq async for e in log.follow(3) if e is not None]
        return live, replay, resumed

    live, replay, resumed = asyncio.run(main())
    tokens = [(2, "token", "Hel"), (3, "token", "lo")]
    assert live == [(1, "node_started", None), *tokens, (4, "node_finished", None), (5, "done", None)]
    assert replay == [(1, "node_started", None), (2, "token", "Hello"), (4, "node_finished", None), (5, "done", None)]
    assert resumed == [4, 5]


def test_text_listeners_see_every_piece_without_observing() -> None:
    variable = SemanticVariable("x", producer="n")
    pieces: list[str] = []
    variable.on_text(pieces.append)
    variable.publish("a")
    variable.publish("b")
    variable.fail("boom")
    variable.publish("c")  # settled: nothing more
    assert pieces == ["a", "b"] and variable.observed is False


def test_node_batches_are_checked_in_order_and_change_nothing() -> None:
    workflow = Workflow("w")
    workflow.add_input("topic", "cats")
    first = LLMCall("first", Template("{{topic}}"), "a")
    second = LLMCall("second", Template("{{a}}"), "b")
    assert workflow.check_new_nodes([first, second]) == []
    backwards = workflow.check_new_nodes([second, first])
    assert [(p.node, p.field) for p in backwards] == [("second", "prompt")]
    assert set(workflow.nodes) == set() and set(workflow.variables) == {"topic"}


def test_client_tool_declarations() -> None:
    shared = ToolRegistry()
    tools = ProgramTools(shared)
    config = ServerConfig(client_tool_timeout_s=10.0)
    decl = ClientToolDecl(name="ask", parameters={"type": "object", "properties": {"q": {"type": "string"}}})
    assert declare_client_tools(tools, [decl], config) == ["ask"]
    assert tools.get("ask") == ClientTool(ToolSpec("ask", decl.parameters), 10.0) and "ask" in tools.specs()
    assert declare_client_tools(tools, [decl], config) == []  # the same declaration again: nothing new
    for bad, field in [
        (ClientToolDecl(name="slow", timeout_s=11.0), "client_tools[1].timeout_s"),
        (ClientToolDecl(name="bad name"), "client_tools[1].name"),
        (ClientToolDecl(name="ask", parameters={"type": "object", "properties": {}}), "client_tools[1].name"),
        (ClientToolDecl(name="odd", parameters={"type": "array"}), "client_tools[1].parameters"),
    ]:
        fresh = ClientToolDecl(name="fresh")
        with pytest.raises(APIError) as refused:
            declare_client_tools(tools, [fresh, bad], config)
        assert refused.value.status == 422 and refused.value.field == field
        assert "fresh" not in tools  # all or nothing
    tool = tools.client_tool("ask")
    assert tool is not None and tool.argument_problem({"q": 1}) and tool.argument_problem({"q": "x"}) is None


def test_parse_server_sent_events() -> None:
    async def lines():
        for line in [": keep-alive", "", "id: 3", "event: token", 'data: {"text": "hi"}', "", "id: 4", "event: done"]:
            yield line
        yield 'data: {"state": "done"}'

    async def main() -> list:
        return [(e.id, e.kind, e.data, e.is_final) async for e in parse_events(lines())]

    assert asyncio.run(main()) == [(3, "token", {"text": "hi"}, False), (4, "done", {"state": "done"}, True)]


def test_finished_workflows_are_forgotten_after_the_retention_with_their_program_and_timeline() -> None:
    """A server's memory for finished work is bounded by age: past ``retain_finished_s`` a finished workflow leaves
    the registry, the executor and the planner's timeline (the journal keeps it exactly as long)."""
    import time

    from fastapi.testclient import TestClient

    from plait.engine import EngineConfig
    from plait.server import create_app
    from plait.server.app import build_state
    from tests.conftest import TINY

    state = build_state(ServerConfig(retain_finished_s=0.5), EngineConfig(**TINY))
    one_call = {"name": "one", "nodes": [{"kind": "llm", "id": "w", "prompt": "hi", "output": "t", "max_tokens": 2}]}
    try:
        with TestClient(create_app(state)) as client:

            def finished(workflow_id: str) -> str:
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    body = client.get(f"/v1/workflows/{workflow_id}").json()
                    if body["state"] != "running":
                        return body["state"]
                    time.sleep(0.05)
                raise AssertionError(f"{workflow_id} did not finish")

            first = client.post("/v1/workflows", json={"workflow": one_call}).json()["id"]
            assert finished(first) == "done"
            assert first in state.executor.programs and state.executor.planner.timeline.events(first)
            time.sleep(0.6)
            second = client.post("/v1/workflows", json={"workflow": one_call}).json()["id"]
            assert first not in state.executor.programs and not state.executor.planner.timeline.events(first)
            assert client.get(f"/v1/workflows/{first}").status_code == 404  # no journal holds it either
            assert finished(second) == "done" and second in state.executor.programs
    finally:
        state.engine.close()
