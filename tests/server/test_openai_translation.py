"""The OpenAI layer's pure pieces (no model): reading tool calls out of streamed text, rendering chat messages for
the template, request plans, model ids."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from plait.server import ServerConfig
from plait.server.errors import APIError
from plait.server.openai.messages import template_messages
from plait.server.openai.models import model_slug
from plait.server.openai.params import DEFAULT_MAX_TOKENS, GenerationPlan, chat_plan
from plait.server.openai.protocol import ChatCompletionRequest, ChatMessage, ChatTool
from plait.server.openai.serving import _max_new_tokens, _time_limit_s
from plait.server.openai.tool_stream import ToolCallStream

CALL = '<tool_call>{"name": "search", "arguments": {"query": "plait"}}</tool_call>'
TOOL = ChatTool.model_validate({"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}})


def _feed_all(stream: ToolCallStream, pieces: list[str]) -> tuple[str, list]:
    content, calls = [], []
    for piece in pieces:
        text, new = stream.feed(piece)
        content.append(text)
        calls += new
    text, new = stream.finish()
    return "".join(content) + text, calls + new


@pytest.mark.parametrize("size", [1, 3, 7, 1000])
def test_auto_mode_holds_back_calls_whatever_the_chunking(size):
    text = f"Let me look. {CALL} And {CALL}done <tool"
    pieces = [text[i : i + size] for i in range(0, len(text), size)]
    content, calls = _feed_all(ToolCallStream("auto"), pieces)
    assert content == "Let me look.  And done <tool"
    assert [(c.name, c.arguments) for c in calls] == [("search", {"query": "plait"})] * 2


def test_auto_mode_never_streams_half_a_tag():
    stream = ToolCallStream("auto")
    assert stream.feed("Hi <tool_") == ("Hi ", [])
    assert stream.feed("call>") == ("", [])
    content, calls = stream.feed('{"name": "search", "arguments": {}}</tool_call> ok')
    assert (content, [c.name for c in calls]) == (" ok", ["search"])


def test_single_call_and_unparseable_outputs():
    content, calls = _feed_all(ToolCallStream("auto", single_call=True), [CALL, CALL])
    assert len(calls) == 1 and content == ""
    content, calls = _feed_all(ToolCallStream("required"), ['<tool_call>{"name": "search", "argu'])  # cut off
    assert (content, calls) == ('<tool_call>{"name": "search", "argu', [])
    named = {"type": "function", "function": {"name": "search"}}
    content, calls = _feed_all(ToolCallStream(named), ['{"name": "search", ', '"arguments": {"q": 1}}'])
    assert content == "" and calls[0].arguments == {"q": 1}
    content, calls = _feed_all(ToolCallStream("auto"), ["<tool_call>not json</tool_call>"])
    assert (content, calls) == ("<tool_call>not json</tool_call>", [])


def test_template_messages_render_tools_and_history():
    messages = [
        ChatMessage(role="developer", content="Be brief."),
        ChatMessage(role="user", content=[{"type": "text", "text": "Find "}, {"type": "text", "text": "plait"}]),
        ChatMessage.model_validate(
            {
                "role": "assistant",
                "content": None,
                "refusal": None,  # echoed back by clients; ignored
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "search", "arguments": "{}"}}],
            }
        ),
        ChatMessage(role="tool", tool_call_id="c1", content="3 results"),
    ]
    rendered = template_messages(messages, [TOOL], "auto")
    assert [m["role"] for m in rendered] == ["system", "user", "assistant", "tool"]
    assert rendered[0]["content"].startswith("Be brief.\n\nYou can call these functions:")
    assert "<tool_call>" in rendered[0]["content"]
    assert rendered[1]["content"] == "Find plait"
    assert rendered[2]["content"] == '<tool_call>{"name": "search", "arguments": {}}</tool_call>'
    # The tools block is the same whatever the tool choice (the grammar enforces it): a conversation that changes its
    # choice between turns keeps its leading text, and so its cached KV.
    for choice in ("none", "required", {"type": "function", "function": {"name": "search"}}):
        assert template_messages(messages, [TOOL], choice) == rendered
    with pytest.raises(APIError) as caught:
        template_messages([ChatMessage(role="user", content=[{"type": "image_url"}])])
    assert caught.value.field == "messages[0].content[0]"


def test_chat_plan_maps_fields():
    body = ChatCompletionRequest.model_validate(
        {
            "model": "default",
            "messages": [{"role": "user", "content": "x"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object"}}},
            "max_completion_tokens": 9,
            "seed": -1,
            "stop": "\n",
            "temperature": 1e-9,
        }
    )
    plan = chat_plan(body)
    assert plan.sampling.json_schema == {"type": "object"} and plan.sampling.stop == ["\n"]
    assert plan.sampling.seed == (1 << 63) - 1 and plan.sampling.temperature == 0.0
    assert (plan.requested_max_tokens, plan.api_field("max_tokens")) == (9, "max_completion_tokens")
    assert plan.api_field("json_schema") == "response_format.json_schema.schema"
    assert plan.api_field("prompt") == "messages"


def test_model_slugs():
    assert model_slug("SmolLM2-135M-Instruct.Q4_1.gguf") == "smollm2-135m-instruct"
    assert model_slug("Llama-3.2-1B-Instruct-Q4_K_M.gguf") == "llama-3.2-1b-instruct"
    assert model_slug("Meta-Llama-3.1-8B-Instruct.F16.gguf") == "meta-llama-3.1-8b-instruct"
    assert model_slug("qwen2.5-7b") == "qwen2.5-7b"
    assert model_slug("???") == "plait-default"


# ---- max_tokens against the context window, the time limit -----------------------------------------------------------


def _state(max_context: int, max_request_time_s: float = 0.0) -> SimpleNamespace:
    return SimpleNamespace(
        engine=SimpleNamespace(max_context=max_context),
        config=SimpleNamespace(max_request_time_s=max_request_time_s),
    )


def _plan(**fields) -> GenerationPlan:
    return chat_plan(
        ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "x"}], **fields})
    )


def test_a_given_max_tokens_over_the_room_is_a_400_an_omitted_one_fits():
    state = _state(max_context=100)
    assert _max_new_tokens(state, _plan(), prompt_tokens=90) == 10  # omitted: what fits, not an error
    assert _max_new_tokens(_state(max_context=8192), _plan(), prompt_tokens=90) == DEFAULT_MAX_TOKENS
    assert _max_new_tokens(state, _plan(max_tokens=10), prompt_tokens=90) == 10
    for field in ("max_tokens", "max_completion_tokens"):
        with pytest.raises(APIError) as caught:
            _max_new_tokens(state, _plan(**{field: 11}), prompt_tokens=90)
        assert (caught.value.status, caught.value.field) == (400, field)
        assert caught.value.message.startswith(f"{field}: 11 tokens do not fit")
        assert "100" in caught.value.message and "90" in caught.value.message


def test_the_time_limit_is_the_lower_of_the_servers_and_the_requests():
    assert _time_limit_s(_state(100, max_request_time_s=600.0), _plan()) == 600.0
    assert _time_limit_s(_state(100, max_request_time_s=600.0), _plan(deadline_s=2.5)) == 2.5
    assert _time_limit_s(_state(100, max_request_time_s=1.0), _plan(deadline_s=2.5)) == 1.0
    assert _time_limit_s(_state(100, max_request_time_s=0.0), _plan()) is None  # 0: no limit
    assert _time_limit_s(_state(100, max_request_time_s=0.0), _plan(deadline_s=3.0)) == 3.0
    with pytest.raises(ValueError, match="max_request_time_s"):
        ServerConfig(max_request_time_s=-1.0).validate()
    ServerConfig(max_request_time_s=0.0).validate()


# ---- parallel tool calls ---------------------------------------------------------------------------------------------

OTHER = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'


@pytest.mark.parametrize("size", [1, 4, 1000])
def test_required_output_with_two_calls_gives_two_calls(size):
    text = f"{CALL}\n{OTHER}"
    pieces = [text[i : i + size] for i in range(0, len(text), size)]
    content, calls = _feed_all(ToolCallStream("required"), pieces)
    assert content == ""  # the line between the calls is no content
    assert [(c.name, c.arguments) for c in calls] == [
        ("search", {"query": "plait"}),
        ("get_weather", {"city": "Paris"}),
    ]
    content, calls = _feed_all(ToolCallStream("required"), [CALL[:-3]])  # cut off by max_tokens: shown as text
    assert (content, calls) == (CALL[:-3], [])


def test_parallel_tool_calls_reaches_the_grammar_and_the_prompt():
    tools = [{"type": "function", "function": {"name": "search"}}]
    default = _plan(tools=tools, tool_choice="required")
    assert default.sampling.parallel_tool_calls is True and not default.single_tool_call
    assert "to call several, write one such line per call" in default.messages[0]["content"]
    single = _plan(tools=tools, tool_choice="required", parallel_tool_calls=False)
    assert single.sampling.parallel_tool_calls is False and single.single_tool_call
    assert "one call at most" in single.messages[0]["content"]
    auto = _plan(tools=tools, parallel_tool_calls=False)
    assert auto.messages == single.messages
