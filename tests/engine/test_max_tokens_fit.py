"""``max_tokens`` over the room the context window leaves after the prompt is an ``InvalidRequestError`` naming
``max_tokens`` with the numbers (as OpenAI and vLLM answer), not a silent cut."""

from __future__ import annotations

import asyncio

import pytest

from plait.engine import GenerateRequest, InvalidRequestError, SamplingParams
from tests.conftest import serving, tiny_core

PROMPT = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]  # 10 tokens; the context window below is 64


def test_max_tokens_over_the_context_window_is_refused_with_the_numbers():
    core = tiny_core(max_context=64)
    request = GenerateRequest(prompt_token_ids=PROMPT, sampling=SamplingParams(max_tokens=100, temperature=0.0))
    with pytest.raises(InvalidRequestError) as caught:
        core.prepare(request)
    assert caught.value.field == "max_tokens"
    for number in ("100", "64", "10", "54"):  # requested, window, prompt, room
        assert number in caught.value.message, caught.value.message
    assert not core.has_work() and core.kv_in_use() == 0


def test_max_tokens_that_just_fits_runs_to_the_end_of_the_window():
    core = tiny_core(max_context=64)
    sampling = SamplingParams(max_tokens=54, temperature=0.0, ignore_eos=True)

    async def main(engine) -> None:
        result = await engine.complete(GenerateRequest(prompt_token_ids=PROMPT, sampling=sampling))
        assert len(result.completions[0].token_ids) == 54 and result.completions[0].finish_reason == "length"

    with serving(core) as engine:
        asyncio.run(main(engine))


def test_a_runtime_call_over_the_context_fails_its_node_naming_max_tokens(tiny_engine_64):
    """The SDK / REST-workflow path: an LLM node whose max_tokens cannot fit fails with the engine's message."""
    import plait
    from plait.runtime import ProgramFailedError

    @plait.program
    async def long_answer(p):
        return await p.gen("Hi", max_tokens=100)

    async def main() -> None:
        async with plait.Runtime(tiny_engine_64) as rt:
            handle = rt.submit(long_answer)
            with pytest.raises(ProgramFailedError, match=r"max_tokens: 100 tokens do not fit"):
                await handle.wait()

    asyncio.run(main())
    assert tiny_engine_64.core.kv_in_use() == 0


@pytest.fixture
def tiny_engine_64():
    with serving(tiny_core(max_context=64)) as engine:
        yield engine
