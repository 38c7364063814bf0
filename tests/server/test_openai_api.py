"""The OpenAI-compatible API on a real uvicorn server (default model, CPU), driven by httpx and the ``openai`` client.

Outputs of a 135M model are not checked for meaning, only for shape and for what the server guarantees: greedy and
seeded outputs are reproducible, streams add up to the whole response, constrained outputs validate, every request
error is a 4xx naming the field, and KV and tenant reservations are released however a request ends.
"""

from __future__ import annotations

import json
import time

import jsonschema
import openai
import pytest

from tests.server.conftest import assert_released, wait_engine_idle

CHAT = "/v1/chat/completions"
HELLO = [{"role": "user", "content": "Say hello in three words."}]
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20}, "unit": {"enum": ["C", "F"]}},
            "required": ["city", "unit"],
        },
    },
}
SEARCH = {
    "type": "function",
    "function": {
        "name": "search",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string", "maxLength": 30}},
            "required": ["query"],
        },
    },
}
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, SEARCH)}


@pytest.fixture(autouse=True)
def _released(live_server):
    yield
    assert_released(live_server.state)


def sse_events(lines) -> list:
    events = [line[len("data: ") :] for line in lines if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


# ---- models ----------------------------------------------------------------------------------------------------------


def test_models_lists_the_served_slug(http, client, model_id):
    assert model_id == "smollm2-135m-instruct"
    assert [m.id for m in client.models.list()] == [model_id]
    assert http.get(f"/v1/models/{model_id}").json()["id"] == model_id
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=4)
    assert caught.value.body["field"] == "model"


# ---- chat and completions --------------------------------------------------------------------------------------------


def test_chat_completion_with_the_openai_client(client, model_id):
    response = client.chat.completions.create(model=model_id, messages=HELLO, max_tokens=12, temperature=0)
    (choice,) = response.choices
    assert response.object == "chat.completion" and response.model == model_id
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    usage = response.usage
    assert usage.prompt_tokens > 5 and 0 < usage.completion_tokens <= 12
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    again = client.chat.completions.create(model="default", messages=HELLO, max_completion_tokens=12, temperature=0)
    assert again.choices[0].message.content == choice.message.content  # greedy is reproducible


def test_completions_with_logprobs(client, model_id):
    response = client.completions.create(
        model=model_id, prompt="The capital of France is", max_tokens=6, temperature=0, logprobs=3
    )
    (choice,) = response.choices
    lp = choice.logprobs
    assert len(lp.tokens) == response.usage.completion_tokens == len(lp.token_logprobs) == len(lp.top_logprobs)
    assert "".join(lp.tokens) == choice.text
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert logprob <= 0 and len(top) == 3
        assert max(top.values()) == pytest.approx(logprob, abs=1e-4)  # greedy picks the most likely token
        assert token in top
    assert lp.text_offset[0] == 0 and lp.text_offset[1] == len(lp.tokens[0])
    echoed = client.completions.create(
        model=model_id, prompt="The capital of France is", max_tokens=6, echo=True, temperature=0
    )
    assert echoed.choices[0].text == "The capital of France is" + choice.text


def test_chat_logprobs(client, model_id):
    response = client.chat.completions.create(
        model=model_id, messages=HELLO, max_tokens=8, temperature=0, logprobs=True, top_logprobs=2
    )
    content = response.choices[0].logprobs.content
    assert len(content) == response.usage.completion_tokens
    for item in content:
        assert item.logprob <= 0 and [t.logprob for t in item.top_logprobs] == sorted(
            (t.logprob for t in item.top_logprobs), reverse=True
        )
        assert item.top_logprobs[0].token == item.token and bytes(item.bytes).decode() == item.token


def test_stream_adds_up_to_the_whole_response_and_reports_usage(client, model_id):
    whole = client.chat.completions.create(model=model_id, messages=HELLO, max_tokens=12, temperature=0)
    stream = client.chat.completions.create(
        model=model_id,
        messages=HELLO,
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert reasons == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_completions_stream_over_raw_sse(http, model_id):
    body = {
        "model": model_id,
        "prompt": "One, two, three,",
        "max_tokens": 8,
        "temperature": 0,
        "n": 2,
        "logprobs": 1,
        "stream": True,
    }
    with http.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response.iter_lines())
    whole = http.post("/v1/completions", json={**body, "stream": False}).json()
    assert all(e["object"] == "text_completion" and len(e["choices"]) == 1 for e in events)
    for choice in whole["choices"]:
        mine = [e["choices"][0] for e in events if e["choices"][0]["index"] == choice["index"]]
        assert "".join(c["text"] for c in mine) == choice["text"]
        assert [c["finish_reason"] for c in mine if c.get("finish_reason")] == [choice["finish_reason"]]
        streamed_tokens = [t for c in mine for t in c["logprobs"]["tokens"]]
        assert streamed_tokens == choice["logprobs"]["tokens"]
    assert "usage" not in events[-1]  # only with stream_options.include_usage


def test_n_samples_and_seed(client, model_id):
    def sample(seed: int, n: int = 2) -> list[str]:
        response = client.chat.completions.create(
            model=model_id, messages=HELLO, max_tokens=10, temperature=1.0, seed=seed, n=n
        )
        assert [c.index for c in response.choices] == list(range(n))
        assert n <= response.usage.completion_tokens <= 10 * n  # summed over the samples
        return [c.message.content for c in response.choices]

    first = sample(7)
    assert first == sample(7)  # seeded sampling is reproducible
    assert len({*first, *sample(8), *sample(9)}) > 1


def test_stop_strings_cut_the_output(client, model_id):
    prompt = "List: apples, pears, plums, cherries, grapes, figs"
    free = client.completions.create(model=model_id, prompt=prompt, max_tokens=16, temperature=0).choices[0].text
    stop = next(w for w in (",", " ", "\n", "e", "a", "i", "o") if free.find(w) >= 1)
    cut = client.completions.create(model=model_id, prompt=prompt, max_tokens=16, temperature=0, stop=[stop, "zzz"])
    assert cut.choices[0].text == free[: free.find(stop)]
    assert cut.choices[0].finish_reason == "stop"


# ---- structured output and tools -------------------------------------------------------------------------------------


def test_json_schema_output_validates(client, model_id):
    response = client.chat.completions.create(
        model=model_id,
        messages=[{"role": "user", "content": "Invent a person: name and age."}],
        max_tokens=32,
        temperature=0.7,
        seed=1,
        n=2,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}},
    )
    for choice in response.choices:
        assert choice.finish_reason == "stop"
        jsonschema.validate(json.loads(choice.message.content), PERSON)


def test_json_object_output_is_an_object(client, model_id):
    response = client.chat.completions.create(
        model=model_id,
        messages=[{"role": "user", "content": 'Reply with the JSON object {"ok": true} and nothing else.'}],
        max_tokens=24,
        temperature=0,
        response_format={"type": "json_object"},
    )
    content = response.choices[0].message.content
    assert content.startswith("{")
    if response.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(content), dict)


def test_tool_call_round_trip(client, model_id):
    question = [{"role": "user", "content": "What is the weather in Paris? Use the tool."}]
    required = client.chat.completions.create(
        model=model_id,
        messages=question,
        tools=[WEATHER, SEARCH],
        tool_choice="required",
        parallel_tool_calls=False,  # exactly one call (the default lets the model make several)
        max_tokens=64,
        seed=3,
    )
    choice = required.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])

    named = client.chat.completions.create(
        model=model_id,
        messages=question,
        tools=[WEATHER, SEARCH],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=32,
        temperature=0,
    )
    (call,) = named.choices[0].message.tool_calls
    assert call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, SCHEMAS["get_weather"])

    follow_up = [
        *question,
        named.choices[0].message.model_dump(exclude_none=True),  # as an agent framework sends it back
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 18, "unit": "C"})},
    ]
    answer = client.chat.completions.create(
        model=model_id, messages=follow_up, tools=[WEATHER, SEARCH], max_tokens=24, temperature=0
    )
    message = answer.choices[0].message
    assert answer.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert message.content or message.tool_calls


def test_streamed_tool_call(client, model_id):
    stream = client.chat.completions.create(
        model=model_id,
        messages=[{"role": "user", "content": "Search the web for plait."}],
        tools=[WEATHER, SEARCH],
        tool_choice={"type": "function", "function": {"name": "search"}},
        max_tokens=32,
        temperature=0,
        stream=True,
    )
    calls: dict[int, dict] = {}
    reasons = []
    for chunk in stream:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                entry = calls.setdefault(delta.index, {"name": "", "arguments": ""})
                entry["name"] += delta.function.name or ""
                entry["arguments"] += delta.function.arguments or ""
            if choice.finish_reason:
                reasons.append(choice.finish_reason)
    assert reasons == ["tool_calls"]
    assert calls[0]["name"] == "search"
    jsonschema.validate(json.loads(calls[0]["arguments"]), SCHEMAS["search"])


PARIS_CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}</tool_call>'
PLAIT_CALL = '<tool_call>{"name": "search", "arguments": {"query": "plait"}}</tool_call>'


@pytest.fixture
def two_calls_output(live_server, monkeypatch):
    """The engine's output replaced by two parallel calls (a 135M model cannot be relied on to write them), streamed
    in small pieces; the rest of the server path (parsing, whole and streamed rendering) is the real one."""
    from plait.engine import GenerateDelta

    text = f"{PARIS_CALL}\n{PLAIT_CALL}"
    pieces = [text[i : i + 7] for i in range(0, len(text), 7)]

    async def generate(request):
        for k, piece in enumerate(pieces):
            last = k == len(pieces) - 1
            yield GenerateDelta(
                request.request_id, 0, piece, [0], finish_reason="stop" if last else None,
                prompt_tokens=len(request.prompt_token_ids), completion_tokens=k + 1,
            )  # fmt: skip

    monkeypatch.setattr(live_server.state.engine, "generate", generate)


def test_parallel_tool_calls_each_get_an_id_and_index(client, model_id, two_calls_output):
    question = [{"role": "user", "content": "Weather in Paris, and search for plait."}]
    whole = client.chat.completions.create(
        model=model_id, messages=question, tools=[WEATHER, SEARCH], tool_choice="required", max_tokens=64
    )
    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    calls = choice.message.tool_calls
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris", "unit": "C"}),
        ("search", {"query": "plait"}),
    ]
    assert len({c.id for c in calls}) == 2 and all(c.id.startswith("call_") for c in calls)

    stream = client.chat.completions.create(
        model=model_id, messages=question, tools=[WEATHER, SEARCH], tool_choice="required", max_tokens=64, stream=True
    )
    streamed: dict[int, dict] = {}
    reasons = []
    for chunk in stream:
        for delta_choice in chunk.choices:
            assert not delta_choice.delta.content  # the line between the calls is not content
            for delta in delta_choice.delta.tool_calls or []:
                entry = streamed.setdefault(delta.index, {"id": delta.id, "name": "", "arguments": ""})
                entry["name"] += delta.function.name or ""
                entry["arguments"] += delta.function.arguments or ""
            if delta_choice.finish_reason:
                reasons.append(delta_choice.finish_reason)
    assert reasons == ["tool_calls"] and sorted(streamed) == [0, 1]
    assert [(streamed[i]["name"], json.loads(streamed[i]["arguments"])) for i in (0, 1)] == [
        ("get_weather", {"city": "Paris", "unit": "C"}),
        ("search", {"query": "plait"}),
    ]
    assert streamed[0]["id"] != streamed[1]["id"]


def test_parallel_tool_calls_false_gives_one_call(client, model_id):
    response = client.chat.completions.create(
        model=model_id,
        messages=[{"role": "user", "content": "What is the weather in Paris? Use the tool."}],
        tools=[WEATHER, SEARCH],
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=48,
        temperature=0,
    )
    choice = response.choices[0]
    if choice.finish_reason == "tool_calls":  # not cut off by max_tokens
        (call,) = choice.message.tool_calls
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


# ---- the time limit --------------------------------------------------------------------------------------------------

LONG_STORY = "Once upon a time, in a land far away, there lived"


def test_time_limit_ends_a_whole_response_as_at_max_tokens(live_server, client, model_id):
    state = live_server.state
    before = state.engine.core.stats().generated_tokens
    started = time.monotonic()
    response = client.completions.create(
        model=model_id,
        prompt=LONG_STORY,
        max_tokens=3000,
        temperature=0,
        extra_body={"ignore_eos": True, "deadline_s": 1.0},
    )
    assert time.monotonic() - started < 6  # the limit (1 s) plus a slow shared CPU's margin
    choice = response.choices[0]
    assert choice.finish_reason == "length" and response.usage.completion_tokens < 3000
    assert bool(choice.text) == (response.usage.completion_tokens > 0)  # the text so far is kept
    stats = wait_engine_idle(state, timeout_s=3)  # aborted: its KV is freed, not held until 3000 tokens
    assert (stats.running, stats.waiting, stats.kv_slots_used) == (0, 0, 0)
    assert state.engine.core.stats().generated_tokens - before < 3000


def test_time_limit_ends_a_stream_with_a_length_chunk(live_server, client, model_id):
    started = time.monotonic()
    stream = client.chat.completions.create(
        model=model_id,
        messages=HELLO,
        max_tokens=3000,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True, "deadline_s": 1.0},
    )
    chunks = list(stream)  # the openai client reads to [DONE]; an error event would raise here
    assert time.monotonic() - started < 6
    reasons = [c.finish_reason for chunk in chunks for c in chunk.choices if c.finish_reason]
    assert reasons == ["length"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens < 3000
    stats = wait_engine_idle(live_server.state, timeout_s=3)
    assert (stats.running, stats.waiting, stats.kv_slots_used) == (0, 0, 0)


# ---- plait's fields --------------------------------------------------------------------------------------------------


def test_program_fields_reach_the_engine(live_server, http, model_id, monkeypatch):
    seen = []
    engine = live_server.state.engine
    original = engine.generate

    def spy(request):
        seen.append(request)
        return original(request)

    monkeypatch.setattr(engine, "generate", spy)
    body = {
        "model": model_id,
        "messages": HELLO,
        "max_tokens": 4,
        "program_id": "prog-42",
        "hints": {"next": "tool", "tool": "search"},
        "priority": 3,
        "deadline_s": 12.5,
    }
    assert http.post(CHAT, json=body).status_code == 200
    (request,) = seen
    # The program is qualified by the tenant in the engine; the priority is (user priority, the program's start).
    assert request.program_id.startswith("openai/") and request.priority[0] == 3
    assert request.hints == {"next": "tool", "tool": "search"}
    assert request.sampling.max_tokens == 4
