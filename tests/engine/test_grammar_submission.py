"""Bad grammars fail at submission, naming the field and where the problem is; requests in flight are unaffected."""

from __future__ import annotations

import asyncio
import re

import pytest

from plait.engine import EngineCore, GenerateRequest, InvalidRequestError, SamplingParams
from tests.conftest import serving, tiny_core

BAD = [
    ("regex", {"regex": "[0-9]{3}(ab"}, r"position \d+.*parenthesis"),
    ("regex", {"regex": "a(?=b)c"}, r"lookahead.*position 1"),
    ("regex", {"regex": r"\bword"}, r"position \d+.*Word boundary"),
    ("ebnf", {"ebnf": 'root ::= "a" rest'}, r"line 1, column \d+.*Rule \"rest\" is not defined"),
    ("ebnf", {"ebnf": 'root ::= "a\n'}, r"line 1, column \d+"),
    ("json_schema", {"json_schema": '{"type": "object", "properties": {'}, r"not valid JSON.*char \d+"),
    (
        "json_schema",
        {"json_schema": {"type": "object", "properties": {"a": {"type": "strnig"}}}},
        r"at /properties/a: Unsupported type \"strnig\"",
    ),
    (
        "json_schema",
        {"json_schema": {"type": "array", "items": {"type": "integer", "minimum": 1.5}}},
        r"at /items: Integer constraint must be a whole number",
    ),
    ("choices", {"choices": ["a", ""]}, r"choices\[1\]"),
    ("choices", {"choices": []}, r"non-empty"),
    ("tools", {"tools": [{"type": "function", "function": {}}]}, r"tools\[0\]\.function\.name"),
    ("tool_choice", {"tools": [], "tool_choice": "required"}, r".*"),
    ("tool_choice", {"tool_choice": "sometimes"}, r"must be 'auto'"),
]


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("field, kwargs, message", BAD, ids=[f"{f}-{i}" for i, (f, _, _) in enumerate(BAD)])
def test_bad_grammar_fails_at_submission_with_its_location(field, kwargs, message):
    core = tiny_core()
    with pytest.raises(InvalidRequestError) as caught:
        core.prepare(GenerateRequest(prompt_token_ids=[1, 2], sampling=SamplingParams(**kwargs)))
    assert caught.value.field in (field, "tools"), caught.value
    assert re.search(message, caught.value.message), caught.value.message
    assert "/project/cpp" not in str(caught.value), "the C++ log prefix should be stripped"
    assert not core.has_work() and not core.grammars.requests


def test_at_most_one_constraint():
    with pytest.raises(InvalidRequestError, match=r"at most one") as caught:
        SamplingParams(regex="a", json_schema={"type": "string"}).validate(300)
    assert caught.value.field == "json_schema"
    assert "regex" in caught.value.message


@pytest.mark.usefixtures("one_thread")
def test_bad_grammar_does_not_disturb_requests_in_flight():
    core = tiny_core(seed=2)

    async def main() -> None:
        with serving(core) as engine:
            sampling = SamplingParams(regex="[a-z]{30}", max_tokens=40, seed=3)
            running = asyncio.create_task(
                engine.complete(GenerateRequest(prompt_token_ids=[5, 6, 7], sampling=sampling))
            )
            await asyncio.sleep(0.05)
            for bad in ({"regex": "(unclosed"}, {"ebnf": "root ::= ???"}, {"json_schema": {"type": "nope"}}):
                with pytest.raises(InvalidRequestError):
                    async for _ in engine.generate(
                        GenerateRequest(prompt_token_ids=[1], sampling=SamplingParams(**bad))
                    ):
                        pass
            result = await running
            assert result.completions[0].finish_reason == "stop"
            assert re.fullmatch("[a-z]{30}", result.text)

    asyncio.run(main())
    assert core.kv_in_use() == 0 and not core.grammars.requests


@pytest.mark.usefixtures("one_thread")
def test_a_request_waiting_for_its_grammar_does_not_block_others(monkeypatch):
    core: EngineCore = tiny_core(seed=4)
    backend = core.grammars.backend
    gate = __import__("threading").Event()
    compile_grammar = backend._compile

    def slow_compile(grammar):
        gate.wait(10)
        return compile_grammar(grammar)

    monkeypatch.setattr(backend, "_compile", slow_compile)
    core.add_request(
        GenerateRequest(prompt_token_ids=[1, 2], sampling=SamplingParams(regex="[0-9]{5}"), request_id="slow")
    )
    core.add_request(
        GenerateRequest(
            prompt_token_ids=[3, 4], sampling=SamplingParams(max_tokens=5, ignore_eos=True), request_id="free"
        )
    )
    finished = {}
    for _ in range(20):
        for delta in core.step():
            if delta.finish_reason:
                finished[delta.request_id] = delta.finish_reason
        if "free" in finished:
            break
    assert finished == {"free": "length"}, "the unconstrained request ran while the grammar compiled"
    assert [s.request_id for s in core.scheduler.waiting] == ["slow"]
    gate.set()
    while core.has_work():
        for delta in core.step():
            if delta.finish_reason:
                finished[delta.request_id] = delta.finish_reason
    assert finished["slow"] == "stop"
    core.check_invariants()


@pytest.mark.usefixtures("one_thread")
def test_a_failed_compilation_ends_only_its_request(monkeypatch):
    core: EngineCore = tiny_core(seed=6)

    def broken(grammar):
        raise RuntimeError("internal compiler error")

    monkeypatch.setattr(core.grammars.backend, "_compile", broken)
    core.add_request(GenerateRequest(prompt_token_ids=[1, 2], sampling=SamplingParams(regex="a+"), request_id="bad"))
    free = SamplingParams(max_tokens=4, ignore_eos=True)
    core.add_request(GenerateRequest(prompt_token_ids=[3, 4], sampling=free, request_id="free"))
    finished = {}
    while core.has_work():
        for delta in core.step():
            if delta.finish_reason:
                finished[delta.request_id] = (delta.finish_reason, delta.error)
    assert finished["free"] == ("length", None)
    assert finished["bad"][0] == "error" and "internal compiler error" in finished["bad"][1]
    core.check_invariants()
    assert core.kv_in_use() == 0 and not core.grammars.requests
