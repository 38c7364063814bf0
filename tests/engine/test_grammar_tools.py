"""Tool calls: the declared functions' schemas constrain the call; ``parse_tool_calls`` reads it back."""

from __future__ import annotations

import json

import jsonschema
import pytest
import xgrammar as xgr

from plait.engine import GenerateRequest, InvalidRequestError, SamplingParams, parse_tool_calls
from plait.engine.grammar import TOOL_CALL_BEGIN, TOOL_CALL_END, build_grammar

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
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
    },
}
TOOLS = [WEATHER, SEARCH]


@pytest.fixture(autouse=True)
def _leave_the_shared_core_as_found(request):
    """The session's ``fp32_core`` is shared: drop what these tests cached so later tests see an empty cache."""
    yield
    if "fp32_core" in request.fixturenames:
        request.getfixturevalue("fp32_core").flush_prefix_cache()


def _generate(core, tool_choice, n: int = 4, max_tokens: int = 48, **fields) -> dict[str, list[str]]:
    """The samples' texts by finish reason."""
    sampling = SamplingParams(tools=TOOLS, tool_choice=tool_choice, max_tokens=max_tokens, n=n, seed=3, **fields)
    core.add_request(GenerateRequest(prompt="What is the weather in Paris? Call a tool.", sampling=sampling))
    texts: dict[int, str] = {}
    reasons: dict[int, str] = {}
    while core.has_work():
        for delta in core.step():
            texts[delta.index] = texts.get(delta.index, "") + delta.text
            if delta.finish_reason:
                reasons[delta.index] = delta.finish_reason
    core.check_invariants()
    by_reason: dict[str, list[str]] = {}
    for i in sorted(texts):
        by_reason.setdefault(reasons[i], []).append(texts[i])
    return by_reason


def test_required_call_follows_the_schemas(fp32_core):
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    single = _generate(fp32_core, "required", n=3, max_tokens=64, parallel_tool_calls=False)
    assert len(single.get("stop", [])) >= 2
    for text in single["stop"]:
        parsed = parse_tool_calls(text, "required")
        (call,) = parsed.tool_calls
        assert parsed.content == ""
        jsonschema.validate(call.arguments, schemas[call.name])
    # Parallel (the default): every call the output completed follows its schema, whether or not more were coming.
    texts = [text for texts in _generate(fp32_core, "required", n=3, max_tokens=96).values() for text in texts]
    complete = [text[: text.rfind(TOOL_CALL_END) + len(TOOL_CALL_END)] for text in texts if TOOL_CALL_END in text]
    assert complete
    for text in complete:
        for call in parse_tool_calls(text, "required").tool_calls:
            jsonschema.validate(call.arguments, schemas[call.name])


def test_named_choice_allows_only_that_function():
    named = {"type": "function", "function": {"name": "search"}}
    compiled = _compile(build_grammar(SamplingParams(tools=TOOLS, tool_choice=named)))
    assert _accepts(compiled, '{"name": "search", "arguments": {"query": "weather Paris"}}')
    assert not _accepts(compiled, '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}')
    assert parse_tool_calls('{"name": "search", "arguments": {"query": "x"}}', named).tool_calls[0].name == "search"


def _compile(grammar: xgr.Grammar) -> xgr.CompiledGrammar:
    info = xgr.TokenizerInfo([chr(i) for i in range(32, 127)], xgr.VocabType.RAW)
    return xgr.GrammarCompiler(info).compile_grammar(grammar)


def _accepts(compiled: xgr.CompiledGrammar, text: str) -> bool:
    matcher = xgr.GrammarMatcher(compiled)
    return matcher.accept_string(text) and matcher.is_completed()


def test_auto_constrains_only_inside_tool_call_tags():
    compiled = _compile(build_grammar(SamplingParams(tools=TOOLS, tool_choice="auto")))

    def accepts(text: str) -> bool:
        return _accepts(compiled, text)

    call = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}</tool_call>'
    assert accepts("Just text, no call.")
    assert accepts(f"Let me check. {call}")
    assert not accepts('<tool_call>{"name": "get_weather", "arguments": {"town": "Paris"}}</tool_call>')
    assert not accepts('<tool_call>{"name": "launch", "arguments": {}}</tool_call>')
    parsed = parse_tool_calls(f"Let me check. {call} Done.", "auto")
    assert parsed.content == "Let me check.  Done."
    assert [(c.name, c.arguments) for c in parsed.tool_calls] == [("get_weather", {"city": "Paris", "unit": "C"})]


def test_none_imposes_nothing_and_bad_tools_fail():
    assert build_grammar(SamplingParams(tools=TOOLS, tool_choice="none")) is None
    assert parse_tool_calls("plain text", "none").tool_calls == []
    unknown = {"type": "function", "function": {"name": "nope"}}
    with pytest.raises(InvalidRequestError, match="not among the declared tools"):
        build_grammar(SamplingParams(tools=TOOLS, tool_choice=unknown))
    weak = {"type": "function", "function": {"name": "f", "parameters": {"type": "array", "uniqueItems": True}}}
    with pytest.raises(InvalidRequestError, match=r"function 'f' parameters: at /uniqueItems"):
        build_grammar(SamplingParams(tools=[weak], tool_choice="required"))
    with pytest.raises(ValueError, match="unterminated"):
        parse_tool_calls('<tool_call>{"name": "get_weather", "argu', "required")
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_tool_calls('<tool_call>{"name": "get_weather", "argu</tool_call>', "required")
    with pytest.raises(ValueError, match="no <tool_call>"):
        parse_tool_calls("no call at all", "required")


# ---- parallel tool calls ---------------------------------------------------------------------------------------------

PARIS = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}</tool_call>'
PLAIT = '<tool_call>{"name": "search", "arguments": {"query": "plait"}}</tool_call>'


def _tools_grammar(tool_choice, **fields) -> xgr.CompiledGrammar:
    return _compile(build_grammar(SamplingParams(tools=TOOLS, tool_choice=tool_choice, **fields)))


def test_required_allows_several_calls_unless_parallel_tool_calls_is_false():
    parallel = _tools_grammar("required")  # parallel_tool_calls defaults to true, as in OpenAI's API
    assert _accepts(parallel, PARIS)
    assert _accepts(parallel, f"{PARIS}\n{PLAIT}")
    assert _accepts(parallel, f"{PARIS}\n{PLAIT}\n{PARIS}")
    assert not _accepts(parallel, "")  # required: at least one call
    assert not _accepts(parallel, f"Sure. {PARIS}")  # nothing but calls
    assert not _accepts(parallel, '<tool_call>{"name": "search", "arguments": {"q": 1}}</tool_call>')
    single = _tools_grammar("required", parallel_tool_calls=False)
    assert _accepts(single, PARIS)
    assert not _accepts(single, f"{PARIS}\n{PLAIT}")
    parsed = parse_tool_calls(f"{PARIS}\n{PLAIT}", "required")
    assert parsed.content == ""
    assert [(c.name, c.arguments) for c in parsed.tool_calls] == [
        ("get_weather", {"city": "Paris", "unit": "C"}),
        ("search", {"query": "plait"}),
    ]


def test_auto_allows_several_calls_unless_parallel_tool_calls_is_false():
    parallel = _tools_grammar("auto")
    assert _accepts(parallel, f"Checking both. {PARIS}\n{PLAIT}")
    single = _tools_grammar("auto", parallel_tool_calls=False)
    assert _accepts(single, f"Checking. {PARIS}")
    assert _accepts(single, "No call needed.")
    assert not _accepts(single, f"Checking both. {PARIS}\n{PLAIT}")


def test_call_arguments_are_compact_json():
    """Calls are generated compactly like every JSON output (no runs of whitespace a small model could fall into)."""
    for tool_choice in ("required", "auto"):
        compiled = _tools_grammar(tool_choice)
        assert _accepts(compiled, PLAIT)
        assert not _accepts(compiled, '<tool_call>{"name": "search", "arguments": {"query":  "plait"}}</tool_call>')
        assert not _accepts(compiled, '<tool_call>{"name": "search", "arguments": {\n"query": "plait"}}</tool_call>')


# ---- tools with a JSON answer format (OpenAI's response_format with tools) ------------------------------------------

FORECAST = {
    "type": "object",
    "properties": {"city": {"enum": ["Paris", "Tokyo"]}, "sunny": {"type": "boolean"}},
    "required": ["city", "sunny"],
    "additionalProperties": False,
}
ANSWER = '{"city": "Paris", "sunny": true}'


def test_auto_with_a_json_schema_is_calls_or_an_answer_in_the_schema():
    union = _tools_grammar("auto", json_schema=FORECAST)
    assert _accepts(union, ANSWER)
    assert _accepts(union, PARIS)
    assert _accepts(union, f"{PARIS}\n{PLAIT}")  # parallel calls, one per line as for required
    assert not _accepts(union, '{"city": "Rome", "sunny": true}')  # not in the enum
    assert not _accepts(union, '{"city": "Paris"}')  # a required property missing
    assert not _accepts(union, '{"city": "Paris", "sunny": true, "wind": 3}')  # closed object
    assert not _accepts(union, '{"city":"Paris","sunny":true}')  # compact JSON only, like every JSON output
    assert not _accepts(union, "Sunny in Paris.")  # no free text
    assert not _accepts(union, f"Let me check. {PARIS}")  # no text around the calls
    assert not _accepts(union, f"{ANSWER}\n{PARIS}")  # one or the other, never both
    assert not _accepts(union, f"{PARIS}\n{ANSWER}")
    assert not _accepts(union, '<tool_call>{"name": "get_weather", "arguments": {"town": "Paris"}}</tool_call>')
    single = _tools_grammar("auto", json_schema=FORECAST, parallel_tool_calls=False)
    assert _accepts(single, PARIS) and _accepts(single, ANSWER)
    assert not _accepts(single, f"{PARIS}\n{PLAIT}")
    # The schema as JSON text, as the REST layer may pass it, builds the same union.
    assert _accepts(_tools_grammar("auto", json_schema=json.dumps(FORECAST)), ANSWER)


def test_auto_with_json_object_is_calls_or_any_object():
    union = _tools_grammar("auto", json_object=True)
    assert _accepts(union, '{"anything": [1, 2]}')
    assert _accepts(union, PARIS)
    assert not _accepts(union, "[1, 2]")
    assert not _accepts(union, "plain text")


def test_required_and_named_ignore_the_answer_format_and_none_keeps_only_it():
    required = _tools_grammar("required", json_schema=FORECAST)
    assert _accepts(required, PARIS)
    assert _accepts(required, f"{PARIS}\n{PLAIT}")
    assert not _accepts(required, ANSWER)
    named = _tools_grammar({"type": "function", "function": {"name": "search"}}, json_object=True)
    assert _accepts(named, '{"name": "search", "arguments": {"query": "weather Paris"}}')
    assert not _accepts(named, '{"city": "Paris", "sunny": true}')
    none = _tools_grammar("none", json_schema=FORECAST)
    assert _accepts(none, ANSWER)
    assert not _accepts(none, PARIS)
    assert not _accepts(none, '{"city": "Rome", "sunny": true}')


def test_only_a_json_answer_format_goes_with_tools():
    SamplingParams(tools=TOOLS, json_schema=FORECAST).validate()
    SamplingParams(tools=TOOLS, json_object=True).validate()
    for fields in ({"regex": "a+"}, {"choices": ["a"]}, {"json_schema": FORECAST, "json_object": True}):
        with pytest.raises(InvalidRequestError, match="or tools with one of json_schema or json_object"):
            SamplingParams(tools=TOOLS, **fields).validate()
        with pytest.raises(InvalidRequestError, match="or tools with one of json_schema or json_object"):
            build_grammar(SamplingParams(tools=TOOLS, **fields))
    with pytest.raises(InvalidRequestError, match="set at most one of"):
        SamplingParams(json_schema=FORECAST, json_object=True).validate()
    # Each part is still checked, and an error names its own field, whatever the tool choice.
    for tool_choice in ("auto", "required", "none"):
        with pytest.raises(InvalidRequestError) as caught:
            build_grammar(SamplingParams(tools=TOOLS, tool_choice=tool_choice, json_schema={"type": "nope"}))
        assert caught.value.field == "json_schema"
    weak = {"type": "function", "function": {"name": "f", "parameters": {"type": "array", "uniqueItems": True}}}
    with pytest.raises(InvalidRequestError, match=r"function 'f' parameters: at /uniqueItems") as caught:
        build_grammar(SamplingParams(tools=[weak], json_schema=FORECAST))
    assert caught.value.field == "tools"


def test_auto_with_a_json_schema_generates_calls_or_a_valid_answer(fp32_core):
    """The real model under the union: every finished sample is well-formed calls or an answer valid for the schema,
    and which one it is shows in its first character."""
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    by_reason = _generate(fp32_core, "auto", n=4, max_tokens=64, json_schema=FORECAST, parallel_tool_calls=False)
    finished = by_reason.get("stop", [])
    assert len(finished) >= 2, by_reason
    for text in finished:
        if text.startswith(TOOL_CALL_BEGIN):
            (call,) = parse_tool_calls(text, "required").tool_calls
            jsonschema.validate(call.arguments, schemas[call.name])
        else:
            jsonschema.validate(json.loads(text), FORECAST)
