"""Acceptance: 500 randomized requests (lengths, stops, n, aborts, forced retractions) leak nothing.

A tiny pool forces retractions; invariants are checked after every step; at the end every KV slot and every
req_to_token row is free, and every sample of every request finished or was aborted exactly once.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest

from plait.engine import EngineConfig, EngineCore, EnginePolicy, GenerateRequest, SamplingParams

NUM_REQUESTS = 500

pytestmark = pytest.mark.usefixtures("one_thread")


def _random_request(rng: random.Random, i: int, shared: list[list[int]]) -> GenerateRequest:
    sampling = SamplingParams(
        max_tokens=rng.randint(1, 40),
        temperature=rng.choice([0.0, 0.7, 1.0]),
        top_p=rng.choice([1.0, 0.9]),
        top_k=rng.choice([0, 20]),
        seed=rng.choice([None, i]),
        stop=rng.choice([[], ["a"], ["\n", "ab"]]),
        stop_token_ids=rng.choice([[], [rng.randrange(258)]]),
        ignore_eos=rng.random() < 0.5,
        n=rng.choice([1, 1, 1, 2, 3]),
        logprobs=rng.random() < 0.2,
        top_logprobs=rng.choice([0, 2]),
    )
    head = rng.choice(shared) if rng.random() < 0.6 else []  # shared prefixes exercise the radix cache
    prompt = head + [rng.randrange(256) for _ in range(rng.randint(1, 90 - len(head)))]
    return GenerateRequest(
        prompt_token_ids=prompt,
        sampling=sampling,
        priority=rng.randint(0, 3),
        request_id=f"r{i}",
        program_id=f"p{i % 7}",
    )


@pytest.mark.parametrize("prefix_cache, host_kv_slots", [("none", 0), ("radix", 0), ("radix", 96)])
def test_randomized_requests_leak_nothing(prefix_cache: str, host_kv_slots: int):
    rng = random.Random(1234)
    shared = [[rng.randrange(256) for _ in range(rng.randint(10, 40))] for _ in range(3)]
    # 260 slots: one request (<= 90 + 3 x 40 tokens) always fits; a dozen running at once do not.
    core = EngineCore(
        EngineConfig(
            model="tiny", weights="dummy", device="cpu", dtype="float32", kv_slots=260, max_context=256,
            max_running=12, max_batch_tokens=96, chunk_size=32, prefix_cache=prefix_cache,
            host_kv_slots=host_kv_slots, policy=EnginePolicy(eviction="next-use" if host_kv_slots else "lru"),
        )
    )  # fmt: skip
    pending = [_random_request(rng, i, shared) for i in range(NUM_REQUESTS)]
    expected_samples = {r.request_id: r.sampling.n for r in pending}
    finishes: Counter[tuple[str, int]] = Counter()
    reasons: Counter[str] = Counter()
    live: set[str] = set()
    steps = 0
    while pending or core.has_work():
        for _ in range(rng.randint(0, 3)):  # arrivals
            if pending:
                request = pending.pop()
                core.add_request(request)
                live.add(request.request_id)
        if live and rng.random() < 0.05:  # aborts, sometimes of requests that are already finished
            victim = rng.choice(sorted(live))
            for delta in core.abort(victim):
                finishes[(delta.request_id, delta.index)] += 1
                reasons[delta.finish_reason] += 1
            live.discard(victim)
        if rng.random() < 0.1:  # hints, some about programs the cache has never seen
            program = f"p{rng.randrange(9)}"
            rng.choice(
                [
                    lambda program=program: core.hint_next_use(program_id=program, steps=rng.randint(1, 9)),
                    lambda program=program: core.pin(ttl_s=rng.choice([0.01, 5.0]), program_id=program),
                    lambda program=program: core.unpin(program_id=program),
                    lambda: core.prefetch(prefix_token_ids=rng.choice(shared)),
                ]
            )()
        for delta in core.step():
            if delta.finish_reason is not None:
                finishes[(delta.request_id, delta.index)] += 1
                reasons[delta.finish_reason] += 1
        core.check_invariants()
        steps += 1
        assert steps < 20_000, "the engine stopped making progress"
    assert core.kv_in_use() == 0, "requests still hold KV"
    core.flush_prefix_cache()
    core.check_invariants()
    assert core.allocator.num_free == core.kv_slots, "KV slots leaked"
    assert core.req_to_token.num_free_rows == core.req_to_token.max_requests, "req_to_token rows leaked"
    assert not core.requests and not core.scheduler.waiting and not core.scheduler.running
    for (request_id, index), count in finishes.items():
        assert count == 1, f"{request_id}[{index}] finished {count} times"
    # Samples of aborted requests that had not fanned out yet are reported once, as sample 0.
    for request_id, n in expected_samples.items():
        seen = {index for (rid, index) in finishes if rid == request_id}
        assert seen == set(range(n)) or seen == {0}, f"{request_id}: finished samples {sorted(seen)} of {n}"
    stats = core.stats()
    assert stats.retractions > 0, "the pool was meant to force retractions"
    assert reasons["abort"] > 0 and reasons["stop"] > 0 and reasons["length"] > 0
