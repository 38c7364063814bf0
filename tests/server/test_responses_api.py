"""The Responses API (``/v1/responses``) on a real uvicorn server (default model, CPU), driven by the official
``openai`` client: text responses, a chain of responses as one program (KV reused), function tools and their
outputs, streaming (the client's event types and its stream helper), the store (``store: false``, GET, DELETE),
per-tenant isolation, and request errors named by field.

Outputs of a 135M model are not checked for meaning, only for shape and for what the server guarantees.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import jsonschema
import openai
import pytest

from plait.engine import ToolCall
from plait.server.openai.generation import SampleUpdate
from plait.server.openai.protocol import ChatMessage
from plait.server.responses_api.output import ResponseOutput
from plait.server.responses_api.protocol import ResponseCreateRequest
from plait.server.responses_api.store import ResponseStore, StoredResponse
from tests.server.conftest import assert_released

HEADER = "X-Plait-Program-Id"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"enum": ["Paris", "Oslo"]}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def client_b(live_server, api_key_b) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live_server.base_url}/v1", api_key=api_key_b, max_retries=0, timeout=60)


@pytest.fixture(autouse=True)
def _released(live_server):
    yield
    assert_released(live_server.state)


def _create(client: openai.OpenAI, model_id: str, **kwargs: Any) -> tuple[Any, str]:
    """A response and its program id (header)."""
    raw = client.responses.with_raw_response.create(model=model_id, temperature=0, **kwargs)
    return raw.parse(), raw.headers[HEADER]


def test_text_response_is_stored_fetched_and_deleted(client, model_id, http) -> None:
    response, program_id = _create(client, model_id, input="Say hello.", max_output_tokens=8)
    assert response.object == "response" and response.id.startswith("resp_")
    assert program_id == response.id  # a chain's program is named after its first response
    assert response.status in ("completed", "incomplete")
    assert isinstance(response.output_text, str) and response.output_text
    (message,) = response.output
    assert message.type == "message" and message.role == "assistant" and message.content[0].type == "output_text"
    usage = response.usage
    assert usage.input_tokens > 0 and 0 < usage.output_tokens <= 8
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens

    fetched = client.responses.retrieve(response.id)
    assert fetched.id == response.id and fetched.output_text == response.output_text
    client.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError) as missing:
        client.responses.retrieve(response.id)
    assert missing.value.param == "response_id"
    with pytest.raises(openai.NotFoundError) as deleted:
        client.responses.create(model=model_id, input="again", previous_response_id=response.id, max_output_tokens=2)
    assert deleted.value.param == "previous_response_id"
    # An unknown vendor field is ignored and named in a header.
    raw = http.post("/v1/responses", json={"model": model_id, "input": "hi", "max_output_tokens": 1, "vendor_x": 1})
    assert raw.status_code == 200 and raw.headers["X-Plait-Ignored-Fields"] == "vendor_x"


def test_chain_of_three_is_one_program_reusing_its_kv(client, model_id, http) -> None:
    instructions = "You are a terse assistant. Answer in a few words."
    first, program_id = _create(client, model_id, instructions=instructions, input="Name a color.", max_output_tokens=6)
    second, second_program = _create(
        client, model_id, instructions=instructions, input="Another one.", previous_response_id=first.id,
        max_output_tokens=6,
    )  # fmt: skip
    third, third_program = _create(
        client, model_id, instructions=instructions, input="And one more.", previous_response_id=second.id,
        max_output_tokens=6,
    )  # fmt: skip
    assert second_program == third_program == program_id == first.id
    assert second.previous_response_id == first.id and third.previous_response_id == second.id
    # Each response reads its whole chain, and the chain's KV is reused.
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    assert third.usage.input_tokens > second.usage.input_tokens + second.usage.output_tokens
    assert second.usage.input_tokens_details.cached_tokens > first.usage.input_tokens // 2
    assert third.usage.input_tokens_details.cached_tokens > second.usage.input_tokens // 2

    program = http.get(f"/v1/programs/{program_id}").json()
    assert (program["origin"], program["calls"], program["state"]) == ("responses", 3, "open")
    assert [call["status"] for call in program["calls_detail"]] == [200, 200, 200]
    # Forking the chain from its first response joins the same program, with the first response's conversation only.
    fork, fork_program = _create(client, model_id, input="A fork.", previous_response_id=first.id, max_output_tokens=2)
    assert fork_program == program_id
    assert fork.usage.input_tokens < third.usage.input_tokens


def test_function_call_then_its_output(client, model_id, http) -> None:
    call_response, program_id = _create(
        client, model_id, input="What is the weather in Paris?", tools=[WEATHER], tool_choice="required",
        max_output_tokens=48,
    )  # fmt: skip
    calls = [item for item in call_response.output if item.type == "function_call"]
    assert calls, call_response.output
    call = calls[0]
    assert call.name == "get_weather" and call.call_id.startswith("call_") and call.status == "completed"
    jsonschema.validate(json.loads(call.arguments), WEATHER["parameters"])

    answer, answer_program = _create(
        client, model_id, previous_response_id=call_response.id, tools=[WEATHER],
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "18 C and sunny"}],
        max_output_tokens=6,
    )  # fmt: skip
    assert answer_program == program_id
    assert answer.status in ("completed", "incomplete") and isinstance(answer.output_text, str)
    assert answer.usage.input_tokens_details.cached_tokens > 0
    program = http.get(f"/v1/programs/{program_id}").json()
    assert program["tool_gaps"] == 1 and program["calls_detail"][1]["gap_tool"] == "get_weather"

    # Stateless form: the call echoed back as an input item, no previous_response_id.
    echoed = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "18 C and sunny"},
    ]
    stateless, _ = _create(client, model_id, input=echoed, tools=[WEATHER], max_output_tokens=2)
    assert stateless.status in ("completed", "incomplete")


def test_streaming_adds_up_to_the_whole_response(client, model_id) -> None:
    kwargs: dict[str, Any] = {"model": model_id, "input": "Count to five.", "max_output_tokens": 10, "temperature": 0}
    whole = client.responses.create(**kwargs)
    # The same conversation through the chat API generates the same text (one engine path for both).
    chat = client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": "Count to five."}], max_tokens=10, temperature=0
    )
    assert chat.choices[0].message.content == whole.output_text
    events = list(client.responses.create(stream=True, **kwargs))
    assert [event.sequence_number for event in events] == list(range(len(events)))
    kinds = [event.type for event in events]
    assert kinds[:4] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
    ]  # fmt: skip
    assert kinds[-4:] == [
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        f"response.{whole.status}",
    ]  # fmt: skip
    text = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    final = events[-1].response
    assert text == final.output_text == whole.output_text
    assert events[0].response.id == final.id != whole.id
    assert client.responses.retrieve(final.id).output_text == text  # stored before the stream ended

    # The client's stream helper accumulates the same events (it checks their order and identities), here with a call.
    with client.responses.stream(
        model=model_id, input="Weather in Oslo?", tools=[WEATHER], tool_choice="required", max_output_tokens=48,
        temperature=0,
    ) as stream:  # fmt: skip
        streamed = list(stream)
    names = {event.type for event in streamed}
    assert {"response.function_call_arguments.delta", "response.function_call_arguments.done"} <= names
    done = [event.item for event in streamed if event.type == "response.output_item.done"]
    assert any(item.type == "function_call" and item.name == "get_weather" for item in done)


def test_structured_output_follows_the_schema(client, model_id) -> None:
    text_format = {"format": {"type": "json_schema", "name": "person", "schema": PERSON, "strict": True}}
    response, _ = _create(client, model_id, input="Invent a person.", text=text_format, max_output_tokens=40)
    assert response.text.format.type == "json_schema"
    if response.status == "completed":
        jsonschema.validate(json.loads(response.output_text), PERSON)


def test_chains_are_per_tenant_and_unstored_responses_cannot_continue(client, client_b, model_id) -> None:
    secret, _ = _create(client, model_id, input="The password is swordfish.", max_output_tokens=2)
    with pytest.raises(openai.NotFoundError) as other:
        client_b.responses.create(model=model_id, input="What was it?", previous_response_id=secret.id)
    assert other.value.param == "previous_response_id" and "swordfish" not in str(other.value)
    with pytest.raises(openai.NotFoundError):
        client_b.responses.retrieve(secret.id)
    with pytest.raises(openai.NotFoundError):
        client_b.responses.delete(secret.id)

    unstored, _ = _create(client, model_id, input="Forget this.", store=False, max_output_tokens=2)
    assert unstored.store is False
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model=model_id, input="next", previous_response_id=unstored.id)
    assert refused.value.param == "previous_response_id" and "store: false" in str(refused.value)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)
    with pytest.raises(openai.NotFoundError) as unknown:
        client.responses.create(model=model_id, input="next", previous_response_id="resp_unknown")
    assert unknown.value.param == "previous_response_id"


@pytest.mark.parametrize(
    ("extra", "status", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, 422, "tools.0.type"),
        ({"tools": [{"type": "function", "name": "bad name!"}]}, 422, "tools.0.name"),
        ({"tools": [{"type": "function", "name": "f", "parameters": {"type": "nonsense"}}]}, 400, "tools"),
        ({"tool_choice": "required"}, 400, "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "name": "other"}}, 400, "tool_choice"),
        ({"input": [{"role": "user", "content": [{"type": "input_image"}]}]}, 400, "input[0].content[0]"),
        ({"max_output_tokens": 1_000_000}, 400, "max_output_tokens"),
        ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": 7}}}}, 400, "text.format.schema"),
        ({"background": True}, 400, "background"),
        ({"kv_hints": {"version": 1, "actions": [{"type": "retain"}]}}, 400, "kv_hints.actions[0].ttl_s"),
    ],
)  # fmt: skip
def test_request_errors_name_the_field(http, model_id, extra, status, param) -> None:
    body = {"model": model_id, "input": "hi", "max_output_tokens": 2, **extra}
    response = http.post("/v1/responses", json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"].startswith(param), response.text


def test_program_id_of_a_chain_cannot_change(client, model_id) -> None:
    first, program_id = _create(
        client, model_id, input="hi", extra_body={"program_id": "agent-responses-1"}, max_output_tokens=1
    )
    assert program_id == "agent-responses-1"
    _, second_program = _create(client, model_id, input="more", previous_response_id=first.id, max_output_tokens=1)
    assert second_program == program_id
    with pytest.raises(openai.BadRequestError) as changed:
        client.responses.create(
            model=model_id, input="x", previous_response_id=first.id, extra_body={"program_id": "another"}
        )
    assert changed.value.param == "program_id"


def test_store_forgets_the_oldest_but_chains_keep_their_turns() -> None:
    store = ResponseStore(max_per_tenant=2)
    user = (ChatMessage(role="user", content="one"),)
    first = StoredResponse("resp_1", "p", {}, user)
    store.put("a", first)
    second = StoredResponse("resp_2", "p", {}, (ChatMessage(role="user", content="two"),), previous=first)
    store.put("a", second)
    store.put("a", StoredResponse("resp_3", "q", {}, user))
    store.note_unstored("a", "resp_4")
    assert len(store) == 2
    with pytest.raises(Exception, match="not found"):
        store.previous("a", "resp_1")  # forgotten: the oldest
    assert [turn.content for turn in store.previous("a", "resp_2").conversation()] == ["one", "two"]
    with pytest.raises(Exception, match="store: false"):
        store.previous("a", "resp_4")
    with pytest.raises(Exception, match="not found"):
        store.previous("b", "resp_2")  # another tenant's


def test_output_items_follow_generation_order_and_hold_back_whitespace() -> None:
    output = ResponseOutput("resp_x", "m", ResponseCreateRequest(model="m", input="hi"))
    events = output.start()
    events += output.feed(SampleUpdate(0, content="Let me "))
    events += output.feed(SampleUpdate(0, content="check.", tool_calls=[ToolCall("lookup", {"q": "a"})]))
    events += output.feed(SampleUpdate(0, content="\n", tool_calls=[ToolCall("lookup", {"q": "b"})]))
    events += output.feed(SampleUpdate(0, content="\n"))  # trailing whitespace after the calls: no message
    sample = SimpleNamespace(finish_reason="tool_calls")
    gen = SimpleNamespace(samples={0: sample}, prompt_tokens=5, cached_tokens=0, completion_tokens=9)
    events += output.finish(gen)  # type: ignore[arg-type]
    events.append(output.final_event())

    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    response = output.response()
    assert [item.type for item in response.output] == ["message", "function_call", "function_call"]
    assert response.output[0].content[0].text == "Let me check."
    assert [json.loads(item.arguments) for item in response.output[1:]] == [{"q": "a"}, {"q": "b"}]
    assert response.status == "completed" and events[-1]["type"] == "response.completed"
    deltas = "".join(event["delta"] for event in events if event["type"] == "response.output_text.delta")
    assert deltas == "Let me check."
