"""Agent programs over the OpenAI API: explicit ids (body, header), recognised continuations (chat, text), the gap
between calls as a tool node, KV hints, ending programs (DELETE, idle timeout) and what each frees."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
HEADER = "X-Plait-Program-Id"
IDLE_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    """A TestClient over a tiny dummy-model server whose programs end after 1 s idle."""
    from fastapi.testclient import TestClient

    from plait.engine import EngineConfig
    from plait.server import ServerConfig, create_app
    from plait.server.app import build_state
    from tests.conftest import TINY

    config = ServerConfig(shutdown_grace_s=0.5, program_idle_timeout_s=IDLE_TIMEOUT_S)
    state = build_state(config, EngineConfig(**TINY))
    try:
        with TestClient(create_app(state)) as test_client:
            yield test_client
    finally:
        state.engine.close()


def _chat(client: Any, messages: list[dict[str, Any]], **extra: Any) -> Any:
    headers = extra.pop("headers", {})
    body = {"model": "default", "messages": messages, "max_tokens": 4, "temperature": 0, **extra}
    response = client.post(CHAT, json=body, headers=headers)
    assert response.status_code == 200, response.text
    return response


def _programs(client: Any) -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in client.get("/v1/programs").json()["data"]}


def _record_requests(state: Any, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The engine requests ``state``'s engine is given from now on (in order)."""
    submitted: list[Any] = []
    generate = state.engine.generate

    def spy(request: Any) -> Any:
        submitted.append(request)
        return generate(request)

    monkeypatch.setattr(state.engine, "generate", spy)
    return submitted


def test_explicit_program_by_body_and_header(client: Any) -> None:
    messages = [{"role": "user", "content": "explicit one"}]
    first = _chat(client, messages, program_id="agent-1")
    second = _chat(client, [{"role": "user", "content": "unrelated"}], headers={HEADER: "agent-1"})
    assert first.headers[HEADER] == second.headers[HEADER] == "agent-1"
    program = client.get("/v1/programs/agent-1").json()
    assert (program["origin"], program["calls"], program["state"]) == ("explicit", 2, "open")
    (gap_call,) = [call for call in program["calls_detail"] if call["gap_before_s"] is not None]
    assert gap_call["gap_tool"] == "think" and gap_call["gap_before_s"] >= 0
    kinds = {event["kind"] for event in program["timeline"]}
    assert {"prefill", "decode", "tool"} <= kinds, kinds
    trace = client.get("/v1/programs/agent-1/trace").json()
    assert trace["traceEvents"]


def test_chat_continuation_joins_the_program(client: Any) -> None:
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "first question"}]
    first = _chat(client, messages)
    program_id = first.headers[HEADER]
    reply = first.json()["choices"][0]["message"]
    follow_up = [*messages, {"role": "assistant", "content": reply["content"]}, {"role": "user", "content": "and?"}]
    second = _chat(client, follow_up)
    assert second.headers[HEADER] == program_id
    assert _programs(client)[program_id]["origin"] == "implicit"
    # Another conversation that shares only the system prompt starts its own program; so does a repeat of the first.
    other = _chat(client, [messages[0], {"role": "user", "content": "another question"}])
    repeat = _chat(client, messages)
    assert program_id not in (other.headers[HEADER], repeat.headers[HEADER])


def test_tool_reply_names_the_gap_and_the_next_call_continues(client: Any) -> None:
    closed = {"type": "object", "properties": {}, "additionalProperties": False}  # forces short arguments: {}
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": closed}}]
    messages = [{"role": "user", "content": "use the tool"}]
    first = _chat(client, messages, tools=tools, tool_choice="required", max_tokens=96)
    call = first.json()["choices"][0]["message"]["tool_calls"][0]
    follow_up = [
        *messages,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "42"},
    ]
    time.sleep(0.05)
    second = _chat(client, follow_up, tools=tools)
    assert second.headers[HEADER] == first.headers[HEADER]
    program = client.get(f"/v1/programs/{first.headers[HEADER]}").json()
    assert program["tool_gaps"] >= 1
    assert program["calls_detail"][1]["gap_tool"] == "lookup"
    assert program["calls_detail"][1]["gap_before_s"] >= 0.05


def test_text_completion_continuation_joins_the_program(client: Any) -> None:
    prompt = "The first turn of a session. " * 4
    first = client.post(COMPLETIONS, json={"model": "default", "prompt": prompt, "max_tokens": 3, "temperature": 0})
    assert first.status_code == 200
    text = first.json()["choices"][0]["text"]
    body = {"model": "default", "prompt": prompt + text + " observation", "max_tokens": 3, "temperature": 0}
    second = client.post(COMPLETIONS, json=body)
    assert second.headers[HEADER] == first.headers[HEADER]
    # Without the reply (a recorded trace's next prompt), the longest earlier prompt still matches.
    third = client.post(COMPLETIONS, json={**body, "prompt": prompt + " another path"})
    assert third.headers[HEADER] == first.headers[HEADER]


def test_delete_ends_the_program_and_its_id_is_refused(client: Any) -> None:
    _chat(client, [{"role": "user", "content": "to be closed"}], program_id="closing")
    assert client.delete("/v1/programs/closing").json()["deleted"] is True
    assert "closing" not in _programs(client)
    body = {"model": "default", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}
    refused = client.post(CHAT, json={**body, "program_id": "closing"})
    assert refused.status_code == 409 and refused.json()["error"]["param"] == "program_id", refused.text
    header = client.post(CHAT, json=body, headers={HEADER: "closing"})
    assert header.status_code == 409 and header.json()["error"]["param"] == HEADER
    assert client.delete("/v1/programs/never-was").status_code == 404
    assert client.get("/v1/programs/never-was").status_code == 404
    ended = client.get("/v1/programs/closing").json()  # ended programs stay readable for a while
    assert ended["state"] == "closed"


def test_ended_programs_are_forgotten_after_the_retention(client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """An ended program stays readable for ``retain_finished_s`` (as finished workflows do), then it and its timeline
    events are gone."""
    from plait.server.openai.program_registry import programs_of

    state = client.app.state.plait
    programs = programs_of(state)
    monkeypatch.setattr(programs, "ended_retain_s", 0.3)
    _chat(client, [{"role": "user", "content": "soon forgotten"}], program_id="forgotten")
    planner_id = programs.get("default", "forgotten").planner_id
    assert client.delete("/v1/programs/forgotten").status_code == 200
    assert client.get("/v1/programs/forgotten").status_code == 200  # ended, still readable
    assert state.executor.planner.timeline.events(planner_id)
    time.sleep(0.4)
    programs.expire_idle()
    assert client.get("/v1/programs/forgotten").status_code == 404
    assert not state.executor.planner.timeline.events(planner_id)


@pytest.mark.parametrize(
    ("hints", "status", "field"),
    [
        ({"version": 1, "actions": [{"type": "retain"}]}, 400, "kv_hints.actions[0].ttl_s"),
        ({"version": 1, "actions": [{"type": "release", "ttl_s": 3}]}, 400, "kv_hints.actions[0].ttl_s"),
        ({"version": 1, "actions": [{"type": "retain", "ttl_s": 5}, {"type": "release"}]}, 400, "kv_hints.actions"),
        ({"version": 1, "actions": [{"type": "evict"}]}, 422, "kv_hints"),
        ({"version": 2, "actions": [{"type": "release"}]}, 422, "kv_hints"),
        ({"version": 1, "actions": []}, 422, "kv_hints"),
        ({"version": 1, "actions": [{"type": "retain", "ttl_s": -1}]}, 422, "kv_hints"),
    ],
)
def test_malformed_kv_hints_name_the_field(client: Any, hints: dict[str, Any], status: int, field: str) -> None:
    body = {"model": "default", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2, "kv_hints": hints}
    response = client.post(CHAT, json=body)
    assert response.status_code == status, response.text
    assert field in str(response.json()["error"].get("param")) + response.json()["error"]["message"]


def test_bad_program_header_is_a_400(client: Any) -> None:
    body = {"model": "default", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}
    response = client.post(CHAT, json=body, headers={HEADER: " "})
    assert response.status_code == 400 and response.json()["error"]["param"] == HEADER


def _engine_holds(client: Any) -> tuple[int, int]:
    state = client.app.state.plait
    stats = state.engine.core.stats()
    return stats.pinned_slots, stats.kv_slots_reserved


def test_abandoned_programs_free_every_pin_after_the_idle_timeout(client: Any) -> None:
    from plait.server.openai.program_registry import programs_of

    state = client.app.state.plait
    retain = {"version": 1, "actions": [{"type": "retain", "ttl_s": 600}]}
    for i in range(3):  # three conversations, each abandoned after its first reply with a 10-minute retain
        _chat(client, [{"role": "user", "content": f"abandoned conversation {i} " * 8}], kv_hints=retain)
    deadline = time.monotonic() + 5
    while _engine_holds(client)[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _engine_holds(client)[0] > 0, "the retain hints pinned nothing"
    deadline = time.monotonic() + IDLE_TIMEOUT_S + 8
    while (_engine_holds(client) != (0, 0) or len(programs_of(state))) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(programs_of(state)) == 0
    assert _engine_holds(client) == (0, 0)
    assert not state.executor.planner._plans  # the planner forgot every program


def test_out_of_band_kv_hints(client: Any) -> None:
    _chat(client, [{"role": "user", "content": "hinted program " * 8}], program_id="hinted")
    ok = client.post("/v1/programs/hinted/kv_hints", json={"version": 1, "actions": [{"type": "prefetch"}]})
    assert ok.status_code == 200 and ok.json()["applied"] == ["prefetch"]
    release = client.post("/v1/programs/hinted/kv_hints", json={"actions": [{"type": "release"}]})
    assert release.status_code == 200
    missing = client.post("/v1/programs/nope/kv_hints", json={"actions": [{"type": "release"}]})
    assert missing.status_code == 404


def test_calls_carry_the_program_and_its_priority(client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _record_requests(client.app.state.plait, monkeypatch)
    _chat(client, [{"role": "user", "content": "ordered"}], program_id="ordered", priority=3)
    _chat(client, [{"role": "user", "content": "ordered again"}], program_id="ordered", priority=3)
    first, second = seen
    assert first.program_id == second.program_id and first.program_id.startswith("openai/")
    # Program FCFS: both calls carry the program's start as their virtual time.
    assert first.priority[0] == 3 and first.priority == second.priority


def test_a_call_ends_the_reservation_made_for_it(client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The gap after a call reserves memory for the program's next call, keyed by that call's node; the next call's
    engine request names the same node, so admitting it ends the reservation (otherwise it would hold memory from
    every other program's admissions until its TTL)."""
    from plait.engine.commands import Reserve

    state = client.app.state.plait
    requests, reserves = _record_requests(state, monkeypatch), []
    send = state.engine.send

    def spy_send(command: Any) -> None:
        if isinstance(command, Reserve):
            reserves.append(command)
        send(command)

    monkeypatch.setattr(state.engine, "send", spy_send)
    messages = [{"role": "user", "content": "a reserved conversation " * 6}]
    reply = _chat(client, messages, program_id="reserving").json()["choices"][0]["message"]
    assert reserves, "the gap reserved nothing for the next call"
    _chat(client, [*messages, reply, {"role": "user", "content": "go on"}], program_id="reserving")
    reserve, second = reserves[0], requests[1]
    assert (second.program_id, second.call_id) == (reserve.program_id, reserve.call_id)


def test_the_dashboard_lists_and_draws_openai_programs(client: Any) -> None:
    _chat(client, [{"role": "user", "content": "drawn"}], program_id="drawn")
    _chat(client, [{"role": "user", "content": "drawn again"}], program_id="drawn")
    listed = {row["id"]: row for row in client.get("/dashboard/api/programs").json()["programs"]}
    assert listed["drawn"]["calls"] == 2 and listed["drawn"]["state"] == "running"
    page = client.get("/dashboard/api/programs/drawn").json()
    assert [row["node"] for row in page["nodes"]] == ["call_0", "gap_0", "call_1", "gap_1"]  # gap_1: waiting
    assert "<svg" in page["timeline_svg"] and "<svg" in page["graph_svg"]
    trace = client.get(page["trace_url"]).json()
    assert {"decode: call_1", "tool: gap_0"} <= {event.get("name") for event in trace["traceEvents"]}


def test_a_closed_program_is_not_joined_while_its_last_call_runs(client: Any) -> None:
    from plait.server.errors import APIError
    from plait.server.openai.program_registry import programs_of
    from plait.server.openai.programs import CallShape

    programs = programs_of(client.app.state.plait)
    first = CallShape.of([{"role": "user", "content": "closing while running"}], None, None)
    call = programs.begin_call("default", first)
    call.finish(status=200, reply_text="ok")
    follow_up = [*first.messages, {"role": "assistant", "content": "ok"}, {"role": "user", "content": "more"}]
    running = programs.begin_call("default", CallShape.of(follow_up, None, None))
    assert running.program is call.program
    programs.close("default", call.program.program_id)
    assert programs.begin_call("default", CallShape.of(follow_up, None, None)).program is not call.program
    with pytest.raises(APIError, match="was closed"):  # its last call still runs
        programs.get("default", call.program.program_id)
    running.finish(status=200, reply_text="done")


def test_repeated_calls_keep_the_index_exact_and_end_clean(client: Any) -> None:
    from plait.server.openai.program_registry import programs_of
    from plait.server.openai.programs import CallShape

    programs = programs_of(client.app.state.plait)
    shape = CallShape.of(None, "the same prompt, again and again " * 3, None)
    program = None
    for _ in range(6):  # identical calls: the continuation keys stay those of the latest calls
        call = programs.begin_call("default", shape, program_id="repeating")
        call.finish(status=200, reply_text=" and more")
        program = call.program
    assert program is not None and len(program.keys) == 2
    longer = CallShape.of(None, shape.text + " and more, continued", None)
    assert programs.begin_call("default", longer).program is program  # still recognised
    programs.close_all()
    assert programs._index._programs == {} and all(not lengths for lengths in programs._index._lengths.values())


def test_a_new_program_whose_only_call_failed_ends_at_once(client: Any) -> None:
    from plait.server.openai.program_registry import programs_of
    from plait.server.openai.programs import CallShape

    programs = programs_of(client.app.state.plait)
    call = programs.begin_call("default", CallShape.of([{"role": "user", "content": "doomed"}], None, None))
    call.finish(status=499)
    assert call.program.state.value == "expired" and call.program.gap is None
    assert call.program.planner_id not in client.app.state.plait.executor.planner._plans


def test_a_reply_beside_tool_calls_matches_as_the_client_sends_it_back(client: Any) -> None:
    from plait.server.openai.program_registry import programs_of
    from plait.server.openai.programs import CallShape

    programs = programs_of(client.app.state.plait)
    messages = [{"role": "user", "content": "call twice"}]
    calls = [{"name": "f", "arguments": {"x": 1}}, {"name": "f", "arguments": {"x": 2}}]
    call = programs.begin_call("default", CallShape.of(messages, None, None))
    call.finish(status=200, reply_text="\n", reply_calls=calls)  # the newline between two parallel calls
    echoed = {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}},
                       {"id": "c2", "type": "function", "function": {"name": "f", "arguments": '{"x":2}'}}],
    }  # fmt: skip
    follow_up = [*messages, echoed, {"role": "tool", "tool_call_id": "c1", "content": "1"}]
    chain_key = (
        "chat",
        hash((hash((0, ("user", "call twice", ()))), ("assistant", "", (("f", '{"x":1}'), ("f", '{"x":2}'))))),
    )
    assert chain_key in call.program.keys
    assert programs.begin_call("default", CallShape.of(follow_up, None, None)).program is call.program


def test_a_stateless_responses_client_joins_the_program_its_conversation_continues(client: Any) -> None:
    body = {"model": "default", "input": "stateless hello", "max_output_tokens": 3, "temperature": 0}
    first = client.post("/v1/responses", json=body)
    assert first.status_code == 200, first.text
    assert first.headers[HEADER] == first.json()["id"]  # a new chain's program is named after its response
    said = first.json()["output"][0]["content"][0]["text"]
    again = [
        {"role": "user", "content": "stateless hello"},
        {"role": "assistant", "content": said},
        {"role": "user", "content": "and then?"},
    ]
    second = client.post("/v1/responses", json={**body, "input": again, "store": False})
    assert second.status_code == 200, second.text
    assert second.headers[HEADER] == first.headers[HEADER]


def test_identical_deterministic_calls_of_one_tenant_run_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The plan's dedup on the OpenAI API: a temperature-0 call identical to one of the same tenant that ran is
    answered from it (same reply, no engine request); another tenant's identical call runs on its own, and so does a
    sampled one."""
    from fastapi.testclient import TestClient

    from plait.engine import EngineConfig
    from plait.server import ServerConfig, create_app
    from plait.server.app import build_state
    from tests.conftest import TINY

    state = build_state(ServerConfig(api_keys={"key-a": "a", "key-b": "b"}), EngineConfig(**TINY))
    try:
        with TestClient(create_app(state)) as client:
            submitted = _record_requests(state, monkeypatch)
            messages = [{"role": "user", "content": "the same question, asked twice " * 4}]

            def ask(key: str, **extra: Any) -> str:
                headers = {"Authorization": f"Bearer {key}"}
                return _chat(client, messages, headers=headers, max_tokens=6, **extra).json()["choices"][0]["message"]

            first = ask("key-a")
            assert ask("key-a") == first and len(submitted) == 1  # answered from the first call
            ask("key-b")
            assert len(submitted) == 2  # another tenant's call is its own
            ask("key-a", temperature=0.8, seed=1)
            assert len(submitted) == 3  # sampled: not deterministic, never shared
            counters = client.get("/server_info", headers={"Authorization": "Bearer key-a"}).json()["counters"]
            assert counters["planner"]["dedup_shared"] == 1
    finally:
        state.engine.close()
