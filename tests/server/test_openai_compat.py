"""What agent frameworks send must work: presence/frequency penalties, `tool_choice` `required` and named,
`max_completion_tokens`, `stream_options`, `user`, `metadata`; unknown vendor fields ignored and named in
``X-Plait-Ignored-Fields``; JSON-schema ``format`` values the grammar cannot enforce accepted as annotations and named
in ``X-Plait-Unenforced``, the rest of the schema still enforced. On the ``tiny`` dummy shape (random weights: outputs
are checked for what the server guarantees, never for meaning)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
from fastapi.testclient import TestClient

from plait.engine import GenerateRequest, SamplingParams
from tests.conftest import run_to_completion, tiny_core
from tests.server.conftest import tiny_test_client

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
IGNORED = "x-plait-ignored-fields"
UNENFORCED = "x-plait-unenforced"
HI = [{"role": "user", "content": "hi"}]
UNIT = {
    "type": "object",
    "properties": {"unit": {"enum": ["C", "F"]}},
    "required": ["unit"],
    "additionalProperties": False,
}
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": UNIT}}
SEARCH = {
    "type": "function",
    "function": {
        "name": "search",
        "parameters": {
            "type": "object",
            "properties": {"scope": {"enum": ["web", "news"]}},
            "required": ["scope"],
            "additionalProperties": False,
        },
    },
}
PRICE = {
    "type": "object",
    "properties": {
        "price": {"type": "string", "format": "currency", "maxLength": 6},
        "unit": {"enum": ["C", "F"]},
        "day": {"type": "string", "format": "date"},  # enforced by the grammar: neither dropped nor reported
    },
    "required": ["price", "unit", "day"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    yield from tiny_test_client()


def _chat(client: TestClient, **fields: Any) -> Any:
    body = {"model": "default", "messages": HI, "max_tokens": 24, "temperature": 0, "ignore_eos": True, **fields}
    return client.post(CHAT, json={k: v for k, v in body.items() if v is not None})


def _ok(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return response.json()


# --- presence and frequency penalties -------------------------------------------------------------------------------


def test_penalties_change_greedy_output_as_the_engine_computes(client: TestClient) -> None:
    prompt = [72, 105, 33, 32, 72, 105, 33]  # token ids: the same prompt for the server and the reference engine
    body = {"model": "default", "prompt": prompt, "max_tokens": 48, "temperature": 0, "ignore_eos": True}
    plain = _ok(client.post(COMPLETIONS, json=body))["choices"][0]["text"]
    penalised = _ok(client.post(COMPLETIONS, json={**body, "frequency_penalty": 2.0}))["choices"][0]["text"]

    reference = tiny_core()  # the same dummy weights (the same seed) as the server's engine
    sampling = {"temperature": 0.0, "max_tokens": 48, "ignore_eos": True}
    requests = [
        GenerateRequest(prompt_token_ids=prompt, sampling=SamplingParams(**sampling), request_id="plain"),
        GenerateRequest(
            prompt_token_ids=prompt, sampling=SamplingParams(**sampling, frequency_penalty=2.0), request_id="pen"
        ),
    ]
    tokens = run_to_completion(reference, requests)
    assert len(set(tokens["plain"][0])) < 48, "the unpenalised output repeats tokens (else this proves nothing)"
    assert len(set(tokens["pen"][0])) == 48, "a frequency penalty of 2 never repeats a token on this model"
    assert plain == reference.tokenizer.decode(tokens["plain"][0])
    assert penalised == reference.tokenizer.decode(tokens["pen"][0])
    assert penalised != plain


def test_presence_penalty_on_chat_changes_the_output(client: TestClient) -> None:
    plain = _ok(_chat(client, max_tokens=40))["choices"][0]["message"]["content"]
    response = _chat(client, max_tokens=40, presence_penalty=2.0, frequency_penalty=0.5)
    assert response.headers.get(IGNORED) is None
    assert _ok(response)["choices"][0]["message"]["content"] != plain
    zero = _ok(_chat(client, max_tokens=40, presence_penalty=0, frequency_penalty=0))
    assert zero["choices"][0]["message"]["content"] == plain


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"frequency_penalty": -3}, "frequency_penalty"),
        ({"frequency_penalty": "high"}, "frequency_penalty"),
        ({"stream_options": {"include_usage": "please"}}, "stream_options.include_usage"),
        ({"max_completion_tokens": "many"}, "max_completion_tokens"),
        ({"metadata": {"k": 1}}, "metadata.k"),
        ({"user": 7}, "user"),
    ],
)
def test_a_wrong_value_on_a_known_field_is_still_a_422_naming_it(
    client: TestClient, fields: dict[str, Any], field: str
) -> None:
    response = _chat(client, unknown_vendor_field=1, **fields)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == field


# --- unknown fields -------------------------------------------------------------------------------------------------


def test_unknown_fields_are_ignored_and_named_in_a_header(client: TestClient) -> None:
    plain = _chat(client)
    assert plain.headers.get(IGNORED) is None
    vendor = _chat(client, repetition_penalty=1.1, chat_template_kwargs={"enable_thinking": False}, tempurature=0.5)
    assert vendor.headers[IGNORED] == "repetition_penalty, chat_template_kwargs, tempurature"
    assert _ok(vendor)["choices"] == _ok(plain)["choices"]

    completion = client.post(COMPLETIONS, json={"model": "default", "prompt": "hi", "max_tokens": 2, "top_a": 0.1})
    assert completion.status_code == 200 and completion.headers[IGNORED] == "top_a"


def test_unknown_fields_of_a_stream_are_named_too(client: TestClient) -> None:
    stream_options = {"include_usage": True, "continuous_usage_stats": True}
    response = _chat(client, stream=True, stream_options=stream_options, max_tokens=3, vendor=1)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    assert response.headers[IGNORED] == "vendor, stream_options.continuous_usage_stats"
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: {")]
    assert events[-1]["usage"]["completion_tokens"] == 3  # include_usage still honoured


def test_odd_unknown_field_names_cannot_break_the_header(client: TestClient) -> None:
    odd = {"ünïcode": 1, 'quo"te, comma': 2, "line\nbreak": 3, "x" * 100: 4}
    many = {f"f{i}": i for i in range(20)}
    response = _chat(client, **odd, **many)
    header = _ok(response) and response.headers[IGNORED]
    assert header.isascii() and header.isprintable()
    # Names other than plain ones are JSON strings; long ones are cut; 24 names: the first 16 listed.
    assert header.startswith('"\\u00fcn\\u00efcode", "quo\\"te, comma", "line\\nbreak", ' + "x" * 64 + "..., f0, ")
    assert header.endswith(", f11, (+8 more)")


def test_user_metadata_and_max_completion_tokens_are_honoured(client: TestClient) -> None:
    response = _chat(client, max_tokens=None, max_completion_tokens=5, user="alice", metadata={"run": "7"})
    assert response.headers.get(IGNORED) is None
    body = _ok(response)
    assert body["usage"]["completion_tokens"] == 5 and body["choices"][0]["finish_reason"] == "length"
    over = _chat(client, max_tokens=None, max_completion_tokens=10**6)
    assert over.status_code in (400, 422) and over.json()["error"]["field"] == "max_completion_tokens"


# --- JSON-schema formats the grammar cannot enforce -----------------------------------------------------------------


def test_a_currency_format_is_accepted_unenforced_and_the_rest_is_enforced(client: TestClient) -> None:
    response_format = {"type": "json_schema", "json_schema": {"name": "price", "schema": PRICE}}
    response = _chat(client, response_format=response_format, max_tokens=160, ignore_eos=False)
    assert response.headers[UNENFORCED] == "format=currency at $.properties.price"
    choice = _ok(response)["choices"][0]
    assert choice["finish_reason"] == "stop", choice
    # strict=False: the tiny shape's byte-level vocabulary lets raw control characters into strings.
    value = json.loads(choice["message"]["content"], strict=False)
    jsonschema.validate(value, {**PRICE, "properties": {**PRICE["properties"], "price": {"maxLength": 6}}})
    assert len(value["day"]) == 10 and value["day"][4] == value["day"][7] == "-"  # the enforced format: a date


def test_formats_in_tool_parameters_are_reported_with_their_tool(client: TestClient) -> None:
    schema = {**UNIT, "properties": {"unit": {"type": "string", "format": "temperature-unit", "enum": ["C", "F"]}}}
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": schema}}
    response = _chat(client, tools=[tool, SEARCH], tool_choice="required", parallel_tool_calls=False, max_tokens=120)
    assert response.headers[UNENFORCED] == "format=temperature-unit at $.properties.unit (tool get_weather)"
    assert _ok(response)["choices"][0]["finish_reason"] == "tool_calls"


def test_an_unenforceable_keyword_other_than_format_is_still_refused(client: TestClient) -> None:
    schema = {"type": "array", "items": {"type": "string", "format": "currency"}, "uniqueItems": True}
    response = _chat(client, response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "response_format.json_schema.schema"


# --- tool_choice ----------------------------------------------------------------------------------------------------


def test_tool_choice_required_makes_one_call(client: TestClient) -> None:
    response = _chat(client, tools=[WEATHER, SEARCH], tool_choice="required", parallel_tool_calls=False, max_tokens=120)
    choice = _ok(response)["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"].get("content") is None
    (call,) = choice["message"]["tool_calls"]
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, SEARCH)}
    jsonschema.validate(json.loads(call["function"]["arguments"]), schemas[call["function"]["name"]])


@pytest.mark.parametrize("name", ["get_weather", "search"])
def test_a_named_tool_choice_calls_that_function(client: TestClient, name: str) -> None:
    named = {"type": "function", "function": {"name": name}}
    response = _chat(client, tools=[WEATHER, SEARCH], tool_choice=named, max_tokens=120)
    choice = _ok(response)["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    assert call["function"]["name"] == name
    schema = (WEATHER if name == "get_weather" else SEARCH)["function"]["parameters"]
    jsonschema.validate(json.loads(call["function"]["arguments"]), schema)
