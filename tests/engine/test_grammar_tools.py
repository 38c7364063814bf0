"""Tool calls: the declared functions' schemas constrain the call; ``parse_tool_calls`` reads it back."""

from __future__ import annotations

import jsonschema
import pytest
import xgrammar as xgr

from plait.engine import GenerateRequest, InvalidRequestError, SamplingParams, parse_tool_calls
from plait.engine.grammar import TOOL_CALL_END, build_grammar

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
