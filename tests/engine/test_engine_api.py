"""The async ``Engine`` API: streaming, finish reasons, n samples, seeds, logprobs, abort, priorities, stats,
retraction under KV pressure, and shutdown.

Tests on the default model share the session's float32 core (``fp32_core``) through a fresh ``Engine`` each and
leave it idle; tests that need a particular configuration use the instant ``tiny`` dummy shape.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import torch

from plait.engine import (
    Engine,
    EngineCore,
    EngineStoppedError,
    GenerateDelta,
    GenerateRequest,
    SamplingParams,
)
from tests.conftest import run_to_completion, serving, tiny_core

GREEDY = SamplingParams(temperature=0.0, max_tokens=16)
PROMPT = "The quick brown fox"


@pytest.fixture
def one_thread() -> Iterator[None]:
    """The tiny shape's matrices are too small for intra-op threads, which only add overhead (a lot of it when the
    cores are busy)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


async def collect(stream: AsyncIterator[GenerateDelta]) -> list[GenerateDelta]:
    return [delta async for delta in stream]


async def wait_idle(core: EngineCore, timeout: float = 10.0) -> None:
    """Wait (without blocking the event loop) until the engine thread has nothing left and all KV is free."""
    deadline = time.monotonic() + timeout
    while core.has_work() or core.kv_in_use():
        assert time.monotonic() < deadline, f"not idle after {timeout}s: {core.stats()}"
        await asyncio.sleep(0.01)


# ---- streaming and finish reasons ------------------------------------------------------------------------------------


def test_stream_matches_complete(fp32_core):
    async def main(engine: Engine) -> None:
        deltas = await collect(engine.generate(GenerateRequest(prompt=PROMPT, sampling=GREEDY)))
        result = await engine.complete(GenerateRequest(prompt=PROMPT, sampling=GREEDY))
        completion = result.completions[0]
        assert "".join(d.text for d in deltas) == completion.text == result.text
        assert [t for d in deltas for t in d.token_ids] == completion.token_ids
        assert all(d.index == 0 and len(d.token_ids) == 1 for d in deltas)
        assert [d.completion_tokens for d in deltas] == list(range(1, len(deltas) + 1))
        assert all(d.finish_reason is None for d in deltas[:-1])
        assert deltas[-1].finish_reason == completion.finish_reason == "length"
        assert len(deltas) == 16
        prompt_tokens = len(fp32_core.tokenizer.encode(PROMPT))
        assert {d.prompt_tokens for d in deltas} == {prompt_tokens} and result.prompt_tokens == prompt_tokens
        assert completion.text.strip(), "greedy output should be some text"
        await wait_idle(fp32_core)

    with serving(fp32_core) as engine:
        asyncio.run(main(engine))


def test_finish_reason_length(fp32_core):
    async def main(engine: Engine) -> None:
        sampling = SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True)
        result = await engine.complete(GenerateRequest(prompt="Hello", sampling=sampling))
        assert result.completions[0].finish_reason == "length"
        assert len(result.completions[0].token_ids) == 5

    with serving(fp32_core) as engine:
        asyncio.run(main(engine))


def test_finish_reason_stop_string(fp32_core):
    async def main(engine: Engine) -> None:
        full = (await engine.complete(GenerateRequest(prompt=PROMPT, sampling=GREEDY))).completions[0]
        middle = len(full.text) // 2
        stop = full.text[middle : middle + 5]
        cut = full.text.index(stop)
        assert stop.strip() and cut > 0, f"pick another stop string in {full.text!r}"

        sampling = SamplingParams(temperature=0.0, max_tokens=16, stop=[stop])
        deltas = await collect(engine.generate(GenerateRequest(prompt=PROMPT, sampling=sampling)))
        text = "".join(d.text for d in deltas)
        assert text == full.text[:cut], f"stop {stop!r}"
        assert stop not in text
        assert deltas[-1].finish_reason == "stop"
        tokens = [t for d in deltas for t in d.token_ids]
        assert tokens == full.token_ids[: len(tokens)] and len(tokens) < len(full.token_ids)
        await wait_idle(fp32_core)

    with serving(fp32_core) as engine:
        asyncio.run(main(engine))


def test_finish_reason_stop_at_end_of_turn(fp32_core):
    async def main(engine: Engine) -> None:
        messages = [{"role": "user", "content": "What is the capital of France?"}]
        result = await engine.complete(
            GenerateRequest(messages=messages, sampling=SamplingParams(temperature=0.0, max_tokens=32))
        )
        completion = result.completions[0]
        assert completion.finish_reason == "stop"
        assert len(completion.token_ids) < 32
        assert completion.token_ids[-1] in fp32_core.tokenizer.stop_token_ids
        assert "<|im_end|>" not in completion.text  # the end-of-turn token is not text
        assert completion.text.strip()
        await wait_idle(fp32_core)

    with serving(fp32_core) as engine:
        asyncio.run(main(engine))


# ---- n samples, seeds and logprobs -----------------------------------------------------------------------------------


def test_n_samples_share_one_prefill_and_are_reproducible(fp32_core):
    sampling = SamplingParams(temperature=1.0, max_tokens=8, seed=1234, n=3, ignore_eos=True)

    async def run(engine: Engine) -> tuple[list[list[int]], int, int]:
        before = fp32_core.stats().prefill_tokens
        result = await engine.complete(GenerateRequest(prompt="Once upon a time", sampling=sampling))
        await wait_idle(fp32_core)
        assert [c.index for c in result.completions] == [0, 1, 2]
        assert all(c.finish_reason == "length" and len(c.token_ids) == 8 for c in result.completions)
        assert all(c.text == fp32_core.tokenizer.decode(c.token_ids) for c in result.completions)
        return (
            [c.token_ids for c in result.completions],
            fp32_core.stats().prefill_tokens - before,
            result.prompt_tokens,
        )

    async def main(engine: Engine) -> None:
        first, prefilled, prompt_tokens = await run(engine)
        assert prefilled == prompt_tokens, "the prompt should be prefilled once for all 3 samples"
        second, _, _ = await run(engine)
        assert first == second, "same seed, different samples"
        assert len({tuple(tokens) for tokens in first}) > 1, "the 3 samples should not all be the same"

    with serving(fp32_core) as engine:
        asyncio.run(main(engine))


def test_seeded_sampling_does_not_depend_on_the_batch(fp32_core):
    seeded = SamplingParams(temperature=1.0, max_tokens=12, seed=7, ignore_eos=True)
    others = [
        "Tell me a joke.",
        "List three colours:",
        "def fibonacci(n):",
        "The weather today is",
        "Paris is",
        "Once upon a time, in a land far away,",
        "1, 2, 3,",
    ]

    async def main(engine: Engine) -> None:
        alone = await engine.complete(GenerateRequest(prompt="Write a haiku about rain.", sampling=seeded))
        await wait_idle(fp32_core)
        unseeded = SamplingParams(temperature=1.0, max_tokens=12, ignore_eos=True)
        crowd = [engine.complete(GenerateRequest(prompt=p, sampling=unseeded)) for p in others[:3]]
        target = engine.complete(GenerateRequest(prompt="Write a haiku about rain.", sampling=seeded))
        crowd += [engine.complete(GenerateRequest(prompt=p, sampling=unseeded)) for p in others[3:]]
        results = await asyncio.gather(crowd[0], crowd[1], crowd[2], target, *crowd[3:])
        assert len(results) == 8
        assert results[3].completions[0].token_ids == alone.completions[0].token_ids
        assert all(len(r.completions[0].token_ids) == 12 for r in results)
        await wait_idle(fp32_core)

    with serving(fp32_core) as engine:
        asyncio.run(main(engine))


def test_logprobs(fp32_core):
    async def main(engine: Engine) -> None:
        sampling = SamplingParams(temperature=0.0, max_tokens=8, logprobs=True, top_logprobs=3, ignore_eos=True)
        deltas = await collect(engine.generate(GenerateRequest(prompt=PROMPT, sampling=sampling)))
        assert all(d.logprobs is not None and len(d.logprobs) == 1 for d in deltas)
        result = await engine.complete(GenerateRequest(prompt=PROMPT, sampling=sampling))
        completion = result.completions[0]
        assert completion.logprobs is not None and len(completion.logprobs) == len(completion.token_ids) == 8
        for token, lp in zip(completion.token_ids, completion.logprobs, strict=True):
            assert lp.token_id == token
            assert lp.logprob <= 0.0
            assert len(lp.top) == 3
            values = [value for _, value in lp.top]
            assert values == sorted(values, reverse=True)
            assert all(value <= 0.0 for value in values)
            assert lp.top[0][0] == token, "greedy picks the most likely token"
            assert lp.logprob == pytest.approx(lp.top[0][1], abs=1e-5)
        # Without logprobs there are none.
        plain = await engine.complete(GenerateRequest(prompt=PROMPT, sampling=SamplingParams(max_tokens=2)))
        assert plain.completions[0].logprobs is None

    with serving(fp32_core) as engine:
        asyncio.run(main(engine))


# ---- abort -----------------------------------------------------------------------------------------------------------

LONG = SamplingParams(temperature=0.0, max_tokens=200, ignore_eos=True)
ENDLESS = SamplingParams(max_tokens=3000, ignore_eos=True)  # on the tiny shape: runs until stopped


def test_abort_ends_the_stream_and_frees_kv(fp32_core):
    async def main(engine: Engine) -> None:
        deltas = []
        async for delta in engine.generate(GenerateRequest(prompt=PROMPT, sampling=LONG, request_id="long")):
            deltas.append(delta)
            if len(deltas) == 3:
                engine.abort("long")
        assert deltas[-1].finish_reason == "abort"
        assert all(d.finish_reason is None for d in deltas[:-1])
        assert 3 <= len(deltas) < 200
        await wait_idle(fp32_core)
        engine.abort("long")  # already gone: ignored
        engine.abort("never-existed")
        result = await engine.complete(GenerateRequest(prompt="Hello", sampling=SamplingParams(max_tokens=3)))
        assert result.completions[0].finish_reason in ("length", "stop")
        await wait_idle(fp32_core)

    with serving(fp32_core) as engine:
        asyncio.run(main(engine))


def test_leaving_the_stream_early_aborts(fp32_core):
    async def main(engine: Engine) -> None:
        received = 0
        async for _ in engine.generate(GenerateRequest(prompt=PROMPT, sampling=LONG)):
            received += 1
            if received == 3:
                break
        await wait_idle(fp32_core)  # the request is aborted once the abandoned stream is finalized

        stream = engine.generate(GenerateRequest(prompt=PROMPT, sampling=LONG))
        await anext(stream)
        await stream.aclose()
        await wait_idle(fp32_core)

        async def consume() -> None:
            async for _ in engine.generate(GenerateRequest(prompt=PROMPT, sampling=LONG)):
                pass

        task = asyncio.create_task(consume())
        while not fp32_core.kv_in_use():
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_idle(fp32_core)

    with serving(fp32_core) as engine:
        asyncio.run(main(engine))


# ---- scheduling ------------------------------------------------------------------------------------------------------


def test_priorities_then_first_come_first_served(one_thread):
    core = tiny_core(max_running=1)
    sampling = SamplingParams(max_tokens=4, ignore_eos=True)
    for name, priority in [("p5", 5), ("p1-first", 1), ("p3", 3), ("p1-second", 1)]:
        core.add_request(GenerateRequest(prompt=name, sampling=sampling, priority=priority, request_id=name))
    finished = []
    while core.has_work():
        finished += [d.request_id for d in core.step() if d.finish_reason is not None]
        assert core.stats().running <= 1
    assert finished == ["p1-first", "p1-second", "p3", "p5"]
    assert core.kv_in_use() == 0


def test_stats(fp32_core):
    async def main(engine: Engine) -> None:
        before = engine.stats()
        assert before.kv_slots_total == fp32_core.kv_slots > 0
        assert before.waiting == before.running == before.kv_slots_used == 0
        assert before.kv_usage == 0.0
        sampling = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
        seen_running = False
        async for delta in engine.generate(GenerateRequest(prompt=PROMPT, sampling=sampling)):
            if delta.completion_tokens == 3:
                during = engine.stats()  # refreshed after every step; at least the 2nd step's
                seen_running = during.running == 1 and 0 < during.kv_slots_used <= during.kv_slots_total
                assert 0.0 < during.kv_usage <= 1.0
        assert seen_running
        deadline = time.monotonic() + 5
        while (after := engine.stats()).generated_tokens < before.generated_tokens + 10:
            assert time.monotonic() < deadline, "stats() never caught up"
            await asyncio.sleep(0.01)
        assert after.generated_tokens == before.generated_tokens + 10
        computed = after.prefill_tokens - before.prefill_tokens
        cached = after.cached_prefix_tokens - before.cached_prefix_tokens  # earlier tests may have cached PROMPT
        assert computed + cached == len(fp32_core.tokenizer.encode(PROMPT))
        assert after.steps >= before.steps + 10
        assert after.retractions == before.retractions
        assert after.decode_tokens_per_s >= 0.0 and after.prefill_tokens_per_s >= 0.0
        assert after.waiting == after.running == after.kv_slots_used == 0

    with serving(fp32_core) as engine:
        asyncio.run(main(engine))


def test_retraction_resumes_exactly(one_thread):
    small = tiny_core(kv_slots=96, max_running=8, seed=3)
    small.scheduler.config.reserve_decode = False  # over-admit on purpose: the pool then runs out mid-decode
    big = tiny_core(seed=3)
    sampling = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)

    def requests() -> list[GenerateRequest]:
        prompts = [[(11 * i + 7 * j + 1) % 256 for j in range(8)] for i in range(8)]
        return [
            GenerateRequest(prompt_token_ids=p, sampling=sampling, request_id=f"r{i}") for i, p in enumerate(prompts)
        ]

    for request in requests():
        small.add_request(request)
    tokens: dict[str, list[int]] = {}
    while small.has_work():
        for delta in small.step():
            tokens.setdefault(delta.request_id, []).extend(delta.token_ids)
            assert delta.finish_reason in (None, "length")
        small.check_invariants()
        assert small.allocator.num_used <= 96
    assert small.stats().retractions > 0, "the pool was meant to be too small for all 8 at once"
    assert small.kv_in_use() == 0
    assert sorted(tokens) == [f"r{i}" for i in range(8)]
    for request in requests():
        alone = run_to_completion(big, [request])[request.request_id][0]
        assert len(tokens[request.request_id]) == 40
        assert tokens[request.request_id] == alone, f"{request.request_id} changed after being retracted"


# ---- shutdown --------------------------------------------------------------------------------------------------------


def test_close_ends_running_streams(one_thread):
    core = tiny_core()
    engine = Engine(core=core)

    async def main() -> None:
        stream = engine.generate(
            GenerateRequest(prompt="abc", sampling=SamplingParams(max_tokens=3000, ignore_eos=True))
        )
        await anext(stream)
        await anext(stream)
        engine.close()
        with pytest.raises(EngineStoppedError):
            async for _ in stream:
                pass
        with pytest.raises(EngineStoppedError):
            await engine.complete(GenerateRequest(prompt="abc", sampling=SamplingParams(max_tokens=3)))

    try:
        asyncio.run(main())
    finally:
        engine.close()
    engine.close()  # idempotent


def test_close_leaves_the_core_idle(one_thread):
    core = tiny_core()
    engine = Engine(core=core)

    async def main() -> None:
        stream = engine.generate(
            GenerateRequest(prompt="abc", sampling=SamplingParams(max_tokens=3000, ignore_eos=True))
        )
        await anext(stream)
        engine.close()
        with pytest.raises(EngineStoppedError):  # after the deltas already queued
            async for _ in stream:
                pass

    asyncio.run(main())
    assert not core.has_work() and core.kv_in_use() == 0, "the closed engine's request still holds KV"


def test_close_racing_generate_does_not_hang(one_thread):
    core = tiny_core()
    engine = Engine(core=core)
    prepare = core.prepare

    def prepare_while_another_thread_closes(request, prompt_ids=None):
        engine.close()  # as if close() ran in another thread right after generate() checked _stopped
        return prepare(request, prompt_ids)

    core.prepare = prepare_while_another_thread_closes

    async def main() -> None:
        with pytest.raises(EngineStoppedError):
            await asyncio.wait_for(engine.complete(GenerateRequest(prompt="abc")), timeout=0.5)

    asyncio.run(main())


def test_abort_before_siblings_spawn_ends_every_sample(one_thread):
    core = tiny_core()
    core.add_request(GenerateRequest(prompt="abc", sampling=SamplingParams(n=3, max_tokens=4), request_id="n3"))
    deltas = core.abort("n3")
    assert not core.has_work() and core.kv_in_use() == 0
    assert sorted(d.index for d in deltas) == [0, 1, 2]
    assert all(d.finish_reason == "abort" for d in deltas)


def test_abort_during_prefill_of_n_samples_ends_the_stream(one_thread):
    core = tiny_core(chunk_size=8)  # a 200-token prompt takes 25 steps to prefill

    async def main(engine: Engine) -> None:
        try:
            sampling = SamplingParams(n=3, max_tokens=8, ignore_eos=True)
            request = GenerateRequest(prompt="x" * 200, sampling=sampling, request_id="n3-prefill")
            task = asyncio.create_task(collect(engine.generate(request)))
            while not core.has_work():
                await asyncio.sleep(0.001)
            engine.abort("n3-prefill")
            deltas = await asyncio.wait_for(task, timeout=1.0)
            assert sorted(d.index for d in deltas if d.finish_reason == "abort") == [0, 1, 2]
        finally:
            engine.close()  # while this loop still runs, so the stuck stream gets its EngineStoppedError

    with serving(core) as engine:
        asyncio.run(main(engine))


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_client_with_a_closed_event_loop_does_not_kill_the_engine(one_thread):
    core = tiny_core()
    with serving(core) as engine:
        loop = asyncio.new_event_loop()
        stream = engine.generate(
            GenerateRequest(prompt="abc", sampling=SamplingParams(max_tokens=3000, ignore_eos=True))
        )
        loop.run_until_complete(anext(stream))
        loop.close()  # the client vanished without closing its stream
        time.sleep(0.3)  # the engine keeps stepping the orphaned request and delivering to the closed loop

        async def main() -> None:
            try:
                sampling = SamplingParams(max_tokens=3, ignore_eos=True)
                result = await asyncio.wait_for(engine.complete(GenerateRequest(prompt="x", sampling=sampling)), 2.0)
                assert result.completions[0].finish_reason == "length"
            finally:
                await stream.aclose()  # the orphan's own cleanup (queues its abort)

        asyncio.run(main())


def test_long_prompts_are_tokenized_off_the_event_loop(one_thread):
    """A long prompt is tokenized on the engine's tokenizer thread (the event loop keeps serving other streams) and
    gets the same ids; a short one is tokenized inline."""
    import threading

    core = tiny_core(max_context=4096)
    engine = Engine(core=core)
    threads: list[str] = []
    prompt_ids = core.prompt_ids

    def recording(request):
        threads.append(threading.current_thread().name)
        return prompt_ids(request)

    core.prompt_ids = recording  # type: ignore[method-assign]
    long_prompt = "the quick brown fox " * 120  # 2400 characters

    async def main() -> list:
        results = []
        for prompt in (long_prompt, "abc"):
            results.append(await engine.complete(GenerateRequest(prompt=prompt, sampling=SamplingParams(max_tokens=2))))
        return results

    try:
        long_result, short_result = asyncio.run(main())
    finally:
        engine.close()
    assert threads[0].startswith("plait-tokenize") and threads[1] == threading.main_thread().name
    assert long_result.prompt_tokens == len(prompt_ids(GenerateRequest(prompt=long_prompt)))
    assert short_result.completions[0].finish_reason == "length"
