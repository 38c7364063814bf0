"""Tools with a JSON ``response_format`` in one chat request (or ``text.format`` in a Responses request): the model
either calls tools (per ``tool_choice``) or answers, and an answer follows the format, as OpenAI's API does.

LangChain's ``ChatOpenAI.with_structured_output(Model, method="json_schema", tools=[...], strict=True)`` and its
``create_agent`` with a provider-native response format send this. With ``tool_choice`` ``auto`` the output is calls or
JSON valid for the schema; with ``required`` (or a named function) only calls; with ``none`` only the JSON answer.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import pytest

from plait.server.openai.tool_stream import ToolCallStream
from tests.server.conftest import tiny_test_client, wait_engine_idle

CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"
CITY = {"enum": ["paris", "tokyo"], "type": "string"}
FORECAST = {
    "properties": {"city": CITY, "sunny": {"type": "boolean"}},
    "required": ["city", "sunny"],
    "type": "object",
    "additionalProperties": False,
}
WEATHER_PARAMETERS = {
    "properties": {"city": CITY},
    "required": ["city"],
    "type": "object",
    "additionalProperties": False,
}
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_PARAMETERS, "strict": True}}
# The body LangChain sends.
LANGCHAIN_BODY: dict[str, Any] = {
    "model": "default",
    "messages": [{"content": "Weather in Paris?", "role": "user"}],
    "max_completion_tokens": 8,
    "response_format": {"type": "json_schema", "json_schema": {"schema": FORECAST, "name": "Forecast", "strict": True}},
    "temperature": 0.0,
    "tools": [WEATHER],
}


def _body(**overrides: Any) -> dict[str, Any]:
    return {**LANGCHAIN_BODY, "max_completion_tokens": 96, "parallel_tool_calls": False, **overrides}


def _check_calls(message: dict[str, Any]) -> None:
    assert message.get("content") is None, message
    assert message["tool_calls"], message
    for call in message["tool_calls"]:
        assert call["function"]["name"] == "get_weather"
        jsonschema.validate(json.loads(call["function"]["arguments"]), WEATHER_PARAMETERS)


def _check_calls_or_answer(choice: dict[str, Any]) -> str:
    """Which the finished choice is (``calls`` or ``answer``), after checking it is well formed."""
    message = choice["message"]
    if choice["finish_reason"] == "tool_calls":
        _check_calls(message)
        return "calls"
    assert choice["finish_reason"] == "stop", choice
    assert not message.get("tool_calls"), message
    jsonschema.validate(json.loads(message["content"]), FORECAST)
    return "answer"


# ---- the tiny dummy model --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    yield from tiny_test_client()


def test_the_langchain_request_is_answered(client: Any) -> None:
    response = client.post(CHAT, json=LANGCHAIN_BODY)
    assert response.status_code == 200, response.text
    (choice,) = response.json()["choices"]
    assert choice["finish_reason"] in ("stop", "length", "tool_calls"), choice


def test_auto_gives_calls_or_an_answer_in_the_schema(client: Any) -> None:
    seen = set()
    for seed in range(4):
        response = client.post(CHAT, json=_body(temperature=1.0, seed=seed, n=4))
        assert response.status_code == 200, response.text
        seen |= {_check_calls_or_answer(choice) for choice in response.json()["choices"]}
    assert seen == {"calls", "answer"}  # the random tiny model takes both branches of the union


def test_json_object_with_tools(client: Any) -> None:
    response = client.post(CHAT, json=_body(response_format={"type": "json_object"}, temperature=1.0, seed=1, n=4))
    assert response.status_code == 200, response.text
    for choice in response.json()["choices"]:  # any object may run past max_tokens ("length"): not checked
        if choice["finish_reason"] == "tool_calls":
            _check_calls(choice["message"])
        elif choice["finish_reason"] == "stop":
            assert isinstance(json.loads(choice["message"]["content"]), dict)
        else:
            assert choice["message"]["content"].startswith("{"), choice


@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_required_or_named_gives_only_calls(client: Any, tool_choice: Any) -> None:
    response = client.post(CHAT, json=_body(tool_choice=tool_choice, temperature=1.0, seed=2, n=4))
    assert response.status_code == 200, response.text
    for choice in response.json()["choices"]:
        assert choice["finish_reason"] == "tool_calls", choice
        _check_calls(choice["message"])


def test_none_gives_only_the_answer(client: Any) -> None:
    response = client.post(CHAT, json=_body(tool_choice="none", temperature=1.0, seed=3, n=4))
    assert response.status_code == 200, response.text
    for choice in response.json()["choices"]:
        assert _check_calls_or_answer(choice) == "answer"


def test_the_stream_sends_the_answer_as_content_and_calls_whole(client: Any) -> None:
    kinds = set()
    for seed in range(4):
        body = _body(temperature=1.0, seed=seed, n=2, stream=True)
        content: dict[int, str] = {}
        calls: dict[int, list[dict[str, Any]]] = {}
        reasons: dict[int, str] = {}
        with client.stream("POST", CHAT, json=body) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                for choice in json.loads(line[len("data: ") :])["choices"]:
                    i, delta = choice["index"], choice["delta"]
                    content[i] = content.get(i, "") + (delta.get("content") or "")
                    calls.setdefault(i, []).extend(delta.get("tool_calls") or [])
                    if choice.get("finish_reason"):
                        reasons[i] = choice["finish_reason"]
        for i, reason in reasons.items():
            message = {"content": content[i] or None, "tool_calls": calls[i] or None}
            kinds.add(_check_calls_or_answer({"finish_reason": reason, "message": message}))
    assert kinds == {"calls", "answer"}


def test_the_responses_api_takes_tools_with_a_text_format(client: Any) -> None:
    tool = {"type": "function", "name": "get_weather", "parameters": WEATHER_PARAMETERS, "strict": True}
    body = {
        "model": "default",
        "input": "Weather in Paris?",
        "tools": [tool],
        "text": {"format": {"type": "json_schema", "name": "Forecast", "schema": FORECAST, "strict": True}},
        "parallel_tool_calls": False,
        "max_output_tokens": 96,
        "temperature": 1.0,
    }
    kinds = set()
    for _ in range(6):
        response = client.post(RESPONSES, json=body)
        assert response.status_code == 200, response.text
        output = response.json()["output"]
        if output and output[0]["type"] == "function_call":
            assert all(item["type"] == "function_call" for item in output), output
            for item in output:
                jsonschema.validate(json.loads(item["arguments"]), WEATHER_PARAMETERS)
            kinds.add("calls")
        else:
            (message,) = output
            (part,) = message["content"]
            jsonschema.validate(json.loads(part["text"]), FORECAST)
            kinds.add("answer")
    assert kinds  # either is right; the union's exactness is checked on the chat API above
    required = client.post(RESPONSES, json={**body, "tool_choice": "required"})
    assert required.status_code == 200, required.text
    assert [item["type"] for item in required.json()["output"]] == ["function_call"]


# ---- the stream parser -----------------------------------------------------------------------------------------------


def _feed(stream: ToolCallStream, pieces: list[str]) -> tuple[list[str], list[Any]]:
    content, calls = [], []
    for piece in pieces:
        text, more = stream.feed(piece)
        content.append(text)
        calls += more
    text, more = stream.finish()
    return [*content, text], calls + more


def test_the_stream_parser_tells_the_branches_by_the_first_character() -> None:
    # An answer streams through untouched, even a string holding what looks like a call.
    answer = ['{"note": "<tool', '_call>{\\"name\\": \\"get_weather\\"}</tool_call>", ', '"ok": true}']
    content, calls = _feed(ToolCallStream("auto", json_answer=True), answer)
    assert content[: len(answer)] == answer and "".join(content) == "".join(answer) and calls == []
    # Calls come out whole, and the line breaks between them are not content.
    call = '<tool_call>{"name": "get_weather", "arguments": {"city": "paris"}}</tool_call>'
    content, calls = _feed(ToolCallStream("auto", json_answer=True), [call[:7], call[7:], "\n", call])
    assert "".join(content) == ""
    assert [(c.name, c.arguments) for c in calls] == [("get_weather", {"city": "paris"})] * 2


# ---- the real default model ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def http(live_server: Any, api_key_a: str) -> Iterator[httpx.Client]:
    headers = live_server.headers(api_key_a)
    with httpx.Client(base_url=live_server.base_url, headers=headers, timeout=120) as c:
        yield c
    stats = wait_engine_idle(live_server.state)
    assert (stats.running, stats.waiting, stats.kv_slots_used) == (0, 0, 0)


def test_the_default_model_answers_the_langchain_request(http: httpx.Client) -> None:
    response = http.post(CHAT, json=LANGCHAIN_BODY)
    assert response.status_code == 200, response.text
    (choice,) = response.json()["choices"]
    assert choice["finish_reason"] in ("stop", "length", "tool_calls"), choice
    # With room to finish, the output is calls or an answer valid for the schema.
    response = http.post(CHAT, json=_body(n=2, temperature=0.8, seed=5))
    assert response.status_code == 200, response.text
    for choice in response.json()["choices"]:
        _check_calls_or_answer(choice)
    # After the tool's result, the answer (tool_choice none is what an agent's last turn may send; auto may call
    # again or answer) follows the schema.
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "paris"}'}}
    messages = [
        *LANGCHAIN_BODY["messages"],
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21 C."},
    ]
    for tool_choice in ("auto", "none"):
        response = http.post(CHAT, json=_body(messages=messages, tool_choice=tool_choice))
        assert response.status_code == 200, response.text
        kind = _check_calls_or_answer(response.json()["choices"][0])
        assert tool_choice == "auto" or kind == "answer"


def test_the_default_model_with_required_only_calls(http: httpx.Client) -> None:
    response = http.post(CHAT, json=_body(tool_choice="required"))
    assert response.status_code == 200, response.text
    (choice,) = response.json()["choices"]
    assert choice["finish_reason"] == "tool_calls", choice
    _check_calls(choice["message"])
