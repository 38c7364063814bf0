"""Requests agent frameworks send, as raw HTTP on the tiny model (no framework needed to run these):

- an agent changes ``tool_choice`` between turns of one conversation: the OpenAI Agents SDK resets it to ``auto``
  after a tool call by default (``reset_tool_choice``), and a LangGraph agent that must call a tool first binds
  ``required`` for its first turn only. The conversation is the same, so the next call should find the previous
  call's prompt cached, as it does when ``tool_choice`` stays the same;
- tools and a JSON-schema ``response_format`` in one request (the model either calls a tool or answers in the schema):
  LangChain's ``ChatOpenAI.with_structured_output(schema, method="json_schema", tools=[...], strict=True)`` sends it,
  and so does LangChain's ``create_agent`` with a provider-native response format.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

CHAT = "/v1/chat/completions"
RESIDENT_FRACTION = 0.9
CITY = {"type": "string", "enum": ["paris", "tokyo"]}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": CITY}, "required": ["city"]},
    },
}


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from plait.engine import EngineConfig
    from plait.server import ServerConfig, create_app
    from plait.server.app import build_state
    from tests.conftest import TINY

    state = build_state(ServerConfig(shutdown_grace_s=0.5), EngineConfig(**TINY))
    try:
        with TestClient(create_app(state)) as test_client:
            yield test_client
    finally:
        state.engine.close()


@pytest.mark.parametrize("next_choice", ["required", "auto", "none"])
def test_the_next_turn_finds_the_conversation_cached_whatever_its_tool_choice(client: Any, next_choice: str) -> None:
    messages = [{"role": "user", "content": f"What is the weather in Paris? ({next_choice})"}]
    body = {"model": "default", "messages": messages, "tools": [WEATHER], "max_tokens": 2, "temperature": 0}
    first = client.post(CHAT, json={**body, "tool_choice": "required"})
    assert first.status_code == 200, first.text
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "paris"}'}}
    follow_up = [
        *messages,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21 C."},
    ]
    second = client.post(CHAT, json={**body, "messages": follow_up, "tool_choice": next_choice})
    assert second.status_code == 200, second.text
    prompt_tokens = first.json()["usage"]["prompt_tokens"]
    cached_tokens = second.json()["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached_tokens >= RESIDENT_FRACTION * prompt_tokens, (next_choice, prompt_tokens, cached_tokens)


def test_tools_with_a_json_schema_response_format(client: Any) -> None:
    """The body LangChain's ``with_structured_output(Forecast, method="json_schema", tools=[get_weather],
    strict=True)`` sends (langchain-openai 1.8.1)."""
    parameters = {**WEATHER["function"]["parameters"], "additionalProperties": False}
    strict_weather = {"type": "function", "function": {**WEATHER["function"], "parameters": parameters, "strict": True}}
    forecast = {
        "type": "object",
        "title": "Forecast",
        "properties": {"city": {**CITY, "title": "City"}, "sunny": {"title": "Sunny", "type": "boolean"}},
        "required": ["city", "sunny"],
        "additionalProperties": False,
    }
    body = {
        "model": "default",
        "stream": False,
        "messages": [{"content": "Weather in Paris?", "role": "user"}],
        "max_completion_tokens": 8,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"schema": forecast, "name": "Forecast", "strict": True},
        },
        "temperature": 0.0,
        "tools": [strict_weather],
    }
    response = client.post(CHAT, json=body)
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] in ("stop", "length", "tool_calls"), choice
