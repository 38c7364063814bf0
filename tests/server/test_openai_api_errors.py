"""The OpenAI-compatible API's failure paths: bad bodies (4xx naming the field, never 5xx), authentication, tenant
limits, draining, clients that go away mid-request (the engine request is aborted and its KV freed), metrics and the
OpenAPI description of the bodies."""

from __future__ import annotations

import copy
import time

import httpx
import jsonschema
import openai
import pytest
from fastapi.testclient import TestClient

from plait.server import Tenant
from tests.server.conftest import wait_engine_idle, wait_tenants_released

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
HELLO = [{"role": "user", "content": "Say hello."}]
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
}
UNENFORCEABLE = {"type": "array", "uniqueItems": True}
LONG_STORY = "Once upon a time, in a land far away, there lived"


@pytest.fixture(scope="module")
def http(live_server, api_key_a):
    with httpx.Client(base_url=live_server.base_url, headers=live_server.headers(api_key_a), timeout=60) as c:
        yield c


@pytest.fixture(autouse=True)
def _released(live_server):
    yield
    stats = wait_engine_idle(live_server.state)
    assert (stats.running, stats.waiting, stats.kv_slots_used) == (0, 0, 0)
    assert all(v == (0, 0) for v in wait_tenants_released(live_server.state).values())


def _chat(**fields) -> dict:
    return {"model": "default", "messages": HELLO, "max_tokens": 2, **fields}


def _completion(**fields) -> dict:
    return {"model": "default", "prompt": "Hello", "max_tokens": 2, **fields}


BAD_BODIES = [
    (CHAT, _chat(n=0), 422, "n"),
    (CHAT, _chat(n=17), 422, "n"),
    (CHAT, _chat(temperature=3), 422, "temperature"),
    (CHAT, _chat(top_p=0), 422, "top_p"),
    (CHAT, _chat(max_tokens=0), 422, "max_tokens"),
    (CHAT, _chat(max_tokens=10**9), 422, "max_tokens"),
    (CHAT, _chat(seed=2**64), 422, "seed"),
    (CHAT, _chat(stop=[""]), 422, "stop"),
    (CHAT, _chat(foo=1, n="two"), 422, "n"),  # an unknown field is ignored; a known one with a wrong type is not
    (CHAT, _chat(model=""), 422, "model"),
    (CHAT, _chat(hints="fast"), 422, "hints"),
    (CHAT, _chat(priority=10**6), 422, "priority"),
    (CHAT, _chat(stream_options={"include_usage": "please"}), 422, "stream_options.include_usage"),
    (CHAT, _chat(messages=[]), 422, "messages"),
    (CHAT, _chat(messages=[{"role": "wizard", "content": "x"}]), 422, "messages.0.role"),
    (CHAT, _chat(messages=[{"role": "user"}]), 400, "messages[0].content"),
    (CHAT, _chat(messages=[{"role": "user", "content": [{"type": "image_url"}]}]), 400, "messages[0].content[0]"),
    (CHAT, _chat(presence_penalty=2.5), 422, "presence_penalty"),
    (CHAT, _chat(frequency_penalty="high"), 422, "frequency_penalty"),
    (CHAT, _chat(logit_bias={"42": -100}), 400, "logit_bias"),
    (CHAT, _chat(top_logprobs=2), 400, "top_logprobs"),
    (CHAT, _chat(logprobs=True, top_logprobs=21), 422, "top_logprobs"),
    (CHAT, _chat(max_tokens=5, max_completion_tokens=6), 400, "max_completion_tokens"),
    (CHAT, _chat(max_tokens=9000, temperature=0), 400, "max_tokens"),  # over the 8192-token context window
    (CHAT, _chat(max_tokens=None, max_completion_tokens=9000, temperature=0), 400, "max_completion_tokens"),
    (CHAT, _chat(deadline_s=0), 422, "deadline_s"),
    (CHAT, _chat(parallel_tool_calls="both"), 422, "parallel_tool_calls"),
    (CHAT, _chat(response_format={"type": "xml"}), 422, "response_format"),
    (
        CHAT,
        _chat(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": UNENFORCEABLE}}),
        400,
        "response_format.json_schema.schema",
    ),
    (CHAT, _chat(tool_choice="required"), 400, "tool_choice"),
    (
        CHAT,
        _chat(tools=[{"type": "function", "function": {"name": "f", "parameters": UNENFORCEABLE}}]),
        400,
        "tools",
    ),
    (CHAT, _chat(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "nope"}}), 400, "tool_choice"),
    (
        CHAT,
        _chat(
            tools=[WEATHER],
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": UNENFORCEABLE}},
        ),
        400,
        "response_format.json_schema.schema",
    ),
    (COMPLETIONS, _completion(prompt=[]), 422, "prompt"),
    (COMPLETIONS, _completion(prompt=""), 400, "prompt"),
    (COMPLETIONS, _completion(prompt=["a", "b"]), 422, "prompt"),
    (COMPLETIONS, _completion(prompt=[10**7]), 400, "prompt"),
    (COMPLETIONS, _completion(prompt="hello " * 9000), 400, "prompt"),
    (COMPLETIONS, _completion(suffix="x"), 400, "suffix"),
    (COMPLETIONS, _completion(best_of=3), 400, "best_of"),
    (COMPLETIONS, _completion(logprobs=2, echo=True), 400, "echo"),
    (COMPLETIONS, _completion(logprobs=21), 422, "logprobs"),
    (COMPLETIONS, _completion(frequency_penalty=-2.5, vendor_field=1), 422, "frequency_penalty"),
    (COMPLETIONS, _completion(max_tokens=9000, temperature=0), 400, "max_tokens"),
]


@pytest.mark.parametrize(("path", "body", "status", "field"), BAD_BODIES)
def test_bad_bodies_name_the_field(http, path, body, status, field):
    response = http.post(path, json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["field"].startswith(field), error
    assert error["code"] == status and error["message"]


def test_max_tokens_over_the_context_gives_the_numbers(live_server, api_key_a):
    client = openai.OpenAI(base_url=f"{live_server.base_url}/v1", api_key=api_key_a, max_retries=0, timeout=60)
    window = live_server.state.engine.core.max_context
    prompt_tokens = len(live_server.state.engine.tokenizer.encode("Hello"))
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="default", prompt="Hello", max_tokens=window, temperature=0)
    error = caught.value.body
    assert error["field"] == "max_tokens"
    assert error["message"].startswith(f"max_tokens: {window} tokens do not fit")
    assert f"({window} > {window} - {prompt_tokens})" in error["message"]
    # Omitted, max_tokens still defaults to what fits; exactly the room left is allowed.
    room = window - prompt_tokens
    with pytest.raises(openai.BadRequestError, match=f"{room + 1} > {window} - {prompt_tokens}"):
        client.completions.create(model="default", prompt="Hello", max_tokens=room + 1, temperature=0)


def test_mutated_bodies_never_answer_5xx(http):
    """A small fuzz: every top-level field set to odd values (except the token limits, which keep runs short)."""
    odd = [None, -1, "x", [], {}, 10**20, 1e308]
    for path, base in ((CHAT, _chat(logprobs=True)), (COMPLETIONS, _completion(logprobs=1, stop=["x"]))):
        fields = [*base, "n", "temperature", "top_p", "seed", "stop", "response_format", "tools", "tool_choice"]
        for name in fields:
            if name in ("max_tokens", "model"):
                continue
            for value in odd:
                body = copy.deepcopy(base)
                body[name] = value
                response = http.post(path, json=body)
                assert response.status_code < 500, (name, value, response.text)
    assert http.post(CHAT, content=b"[1, 2]", headers={"content-type": "application/json"}).status_code == 422
    assert http.post(CHAT, content=b"{not json", headers={"content-type": "application/json"}).status_code == 400


def test_authentication(live_server, api_key_b):
    url = f"{live_server.base_url}/v1"
    with pytest.raises(openai.AuthenticationError) as caught:
        openai.OpenAI(base_url=url, api_key="wrong", max_retries=0).models.list()
    assert caught.value.status_code == 401
    assert httpx.post(f"{live_server.base_url}{CHAT}", json=_chat()).status_code == 401
    other = openai.OpenAI(base_url=url, api_key=api_key_b, max_retries=0)
    assert other.completions.create(model="default", prompt="Hi", max_tokens=2).choices[0].text is not None


def test_rate_limited_tenant_gets_429_with_retry_after(live_server, api_key_a, api_key_b):
    state = live_server.state
    limits = state.config.limits_for("a")
    held = [state.usage.admit(Tenant("a", limits), 1) for _ in range(limits.max_concurrent_programs)]
    try:
        client = openai.OpenAI(base_url=f"{live_server.base_url}/v1", api_key=api_key_a, max_retries=0)
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model="default", messages=HELLO, max_tokens=2)
        assert caught.value.response.headers["retry-after"] == "1"
        other = openai.OpenAI(base_url=f"{live_server.base_url}/v1", api_key=api_key_b, max_retries=0)
        assert other.chat.completions.create(model="default", messages=HELLO, max_tokens=2).choices
    finally:
        for admission in held:
            admission.release()


@pytest.fixture
def small_server(live_server):
    """A second app on the same engine (not owned, so not closed) with tiny limits, through ``TestClient``."""
    from plait.runtime.executor import Executor
    from plait.server import ServerConfig, ServerState, TenantLimits, create_app

    engine = live_server.state.engine
    config = ServerConfig(
        api_keys={"small-key": "s"},
        limits=TenantLimits(max_concurrent_programs=1, max_queued_tokens=300),
        max_prompt_tokens=64,
    )
    state = ServerState(engine=engine, executor=Executor(engine), config=config)
    with TestClient(create_app(state), headers={"Authorization": "Bearer small-key"}) as client:
        yield client, state


def test_the_servers_time_limit_stops_a_request(live_server):
    from plait.runtime.executor import Executor
    from plait.server import ServerConfig, ServerState, create_app

    engine = live_server.state.engine
    config = ServerConfig(api_keys={"k": "t"}, max_request_time_s=0.5)
    state = ServerState(engine=engine, executor=Executor(engine), config=config)
    with TestClient(create_app(state), headers={"Authorization": "Bearer k"}) as client:
        started = time.monotonic()
        body = _completion(prompt=LONG_STORY, max_tokens=3000, temperature=0, ignore_eos=True)
        response = client.post(COMPLETIONS, json=body)
        assert time.monotonic() - started < 6
        assert response.status_code == 200, response.text
        choice = response.json()["choices"][0]
        assert choice["finish_reason"] == "length" and response.json()["usage"]["completion_tokens"] < 3000
        # A request may ask for less, never for more.
        response = client.post(COMPLETIONS, json={**body, "deadline_s": 60})
        assert time.monotonic() - started < 12 and response.json()["choices"][0]["finish_reason"] == "length"
    stats = wait_engine_idle(live_server.state, timeout_s=3)
    assert (stats.running, stats.kv_slots_used) == (0, 0)
    assert state.usage.snapshot()["t"] == (0, 0)


def test_tenant_and_prompt_limits(small_server):
    client, state = small_server
    response = client.post(COMPLETIONS, json=_completion(prompt="word " * 100))
    assert (response.status_code, response.json()["error"]["field"]) == (400, "prompt")
    assert "max_prompt_tokens" in response.json()["error"]["message"]
    response = client.post(CHAT, json=_chat(max_completion_tokens=290))
    assert (response.status_code, response.json()["error"]["field"]) == (400, "max_completion_tokens")
    held = state.usage.admit(Tenant("s", state.config.limits_for("s")), 1)
    try:
        response = client.post(CHAT, json=_chat())
        assert response.status_code == 429 and response.headers["retry-after"] == "1"
    finally:
        held.release()
    assert client.post(CHAT, json=_chat()).status_code == 200
    assert state.usage.snapshot()["s"] == (0, 0)


def test_draining_server_refuses_new_work(live_server, http):
    live_server.state.draining = True
    try:
        response = http.post(CHAT, json=_chat())
        assert response.status_code == 503 and response.json()["error"]["type"] == "service_unavailable"
        assert http.get("/v1/models").status_code == 200
    finally:
        live_server.state.draining = False


def _requests_counted(http, endpoint: str, status: str) -> float:
    prefix = f'plait_requests_total{{endpoint="{endpoint}",status="{status}"}} '
    lines = [line for line in http.get("/metrics").text.splitlines() if line.startswith(prefix)]
    return float(lines[0].split()[-1]) if lines else 0.0


def test_client_disconnect_mid_stream_aborts_and_frees_kv(live_server, http):
    state = live_server.state
    before = state.engine.core.stats().generated_tokens
    closed = _requests_counted(http, "completions", "499")
    body = _completion(prompt=LONG_STORY, max_tokens=400, temperature=0, stream=True)
    with http.stream("POST", COMPLETIONS, json=body) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        assert sum(1 for _, line in zip(range(6), lines, strict=False) if line.startswith("data: ")) >= 3
    # leaving the block closed the connection mid-stream
    stats = wait_engine_idle(state, timeout_s=5)
    assert (stats.running, stats.kv_slots_used) == (0, 0)
    assert stats.generated_tokens - before < 100  # stopped long before max_tokens
    assert state.usage.snapshot()["a"] == (0, 0)
    assert _requests_counted(http, "completions", "499") == closed + 1
    http.post(COMPLETIONS, json=_completion())  # a step refreshes the engine's published stats
    public = state.engine.stats()
    assert (public.running, public.kv_slots_used) == (0, 0)


def test_client_disconnect_before_a_whole_response_aborts(live_server):
    state = live_server.state
    before = state.engine.core.stats().generated_tokens
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{live_server.base_url}{COMPLETIONS}",
            json=_completion(prompt=LONG_STORY, max_tokens=400, temperature=0),
            headers=live_server.headers("test-key-a"),
            timeout=1.0,
        )
    stats = wait_engine_idle(state, timeout_s=5)
    assert (stats.running, stats.kv_slots_used) == (0, 0)
    assert stats.generated_tokens - before < 200 and time.monotonic() - started < 8


def test_metrics_count_requests_and_latencies(http):
    assert http.post(CHAT, json=_chat()).status_code == 200
    text = http.get("/metrics").text
    assert _requests_counted(http, "chat", "200") >= 1
    assert 'plait_time_to_first_token_seconds_count{endpoint="chat"}' in text
    assert 'plait_request_duration_seconds_count{endpoint="chat"}' in text


def test_openapi_describes_the_bodies(http):
    spec = http.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    for path, model in ((CHAT, "ChatCompletionRequest"), (COMPLETIONS, "CompletionRequest")):
        operation = spec["paths"][path]["post"]
        body = operation["requestBody"]["content"]["application/json"]["schema"]
        assert body["$ref"] == f"#/components/schemas/{model}"
        assert {"200", "400", "401", "422", "429"} <= set(operation["responses"])
        assert all("description" in prop for prop in schemas[model]["properties"].values())
    for schema in schemas.values():
        jsonschema.Draft202012Validator.check_schema(schema)
    chat = jsonschema.Draft202012Validator({"$ref": "#/components/schemas/ChatCompletionRequest", **spec})
    assert chat.is_valid(_chat(n=2, stop="x", tools=[WEATHER], tool_choice="auto", hints={"next": "tool"}))
    assert not chat.is_valid(_chat(n=0)) and not chat.is_valid(_chat(temperature=5))
    assert "/v1/models" in spec["paths"]
