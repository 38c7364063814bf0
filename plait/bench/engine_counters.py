"""An in-process engine around a benchmark run: warm-up before it, counter differences over it, idle after it."""

from __future__ import annotations

import asyncio
import time
from typing import Any


def engine_counters_delta(before: Any, after: Any) -> dict[str, float]:
    """Differences of two ``EngineStats``: prefix hit rate (GPU cache plus host tier over all prompt tokens), prompt
    tokens computed and cached, generated tokens, retractions, evictions, anti-starvation promotions, steps, the
    wall time spent in them and how many were slow (``SLOW_STEP_S``)."""
    prefilled = after.prefill_tokens - before.prefill_tokens
    cached = after.cached_prefix_tokens - before.cached_prefix_tokens
    host = after.host_hit_tokens - before.host_hit_tokens
    total = prefilled + cached + host
    return {
        "prefix_hit_rate": (cached + host) / total if total else 0.0,
        "prefill_tokens": prefilled,
        "cached_prompt_tokens": cached + host,
        "generated_tokens": after.generated_tokens - before.generated_tokens,
        "retractions": after.retractions - before.retractions,
        "evictions": after.evictions - before.evictions,
        "pins_refused": after.pins_refused - before.pins_refused,
        "pinned_tokens_evicted": after.pinned_tokens_evicted - before.pinned_tokens_evicted,
        "tool_wait_tokens_lost": after.tool_wait_tokens_lost - before.tool_wait_tokens_lost,
        "promotions": after.promotions - before.promotions,
        "steps": after.steps - before.steps,
        "busy_s": after.busy_s - before.busy_s,  # wall time in engine steps
        "slow_steps": after.slow_steps - before.slow_steps,
        "modelled_device_s": after.modelled_device_s - before.modelled_device_s,  # simulated engine only
        **step_profile_delta(before, after),
    }


def step_profile_delta(before: Any, after: Any) -> dict[str, Any]:
    """Per-step means over the run: decode and prefill rows in a batch, sequences waiting beside it, pinned slots,
    host milliseconds per phase of the step loop (``EngineStats.phase_s``); and how often admission stopped for each
    reason (``Scheduler.admission_stops``)."""
    steps = after.steps - before.steps
    if steps <= 0:
        return {}

    def mean(name: str, scale: float = 1.0) -> float:
        return (getattr(after, name) - getattr(before, name)) * scale / steps

    def grown(name: str) -> dict[str, float]:
        """How much each entry of a dict of running totals grew, entries that did not grow left out."""
        old = getattr(before, name)
        return {k: v - old.get(k, 0) for k, v in sorted(getattr(after, name).items()) if v - old.get(k, 0)}

    return {
        "mean_decode_rows": mean("decode_rows"),
        "mean_prefill_rows": mean("prefill_rows"),
        "mean_waiting": mean("waiting_rows"),
        "mean_pinned_slots": mean("pinned_slot_steps"),
        "ms_per_step": mean("busy_s", 1e3),
        **{f"{phase}_ms_per_step": 1e3 * seconds / steps for phase, seconds in grown("phase_s").items()},
        "admission_stops": grown("admission_stops"),
    }


async def wait_engine_idle(engine: Any, timeout_s: float = 30.0) -> bool:
    """Poll until the engine runs and queues nothing (aborted requests take a step to leave); False on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stats = engine.stats()
        if stats.running == 0 and stats.waiting == 0:
            return True
        await asyncio.sleep(0.01)
    return False


async def warm_up(engine: Any) -> None:
    """One short request, so the first measured mode does not pay first-use costs (allocator, kernels, caches)."""
    from plait.engine import GenerateRequest, SamplingParams

    await engine.complete(GenerateRequest(prompt="warm up", sampling=SamplingParams(max_tokens=4, temperature=0.0)))


async def warm_up_shapes(engine: Any, longest_prompt: int, concurrency: int = 32, seed: int = 0) -> None:
    """Run the shapes a benchmark will run before measuring it: prefills of 256, 1024, 4096, ... tokens up to
    ``longest_prompt`` and ``concurrency`` concurrent decodes, so allocator growth, kernel compilation and first-use
    costs land here and not in whichever mode is measured first. Leaves the prefix cache to the caller to flush."""
    import asyncio
    import random

    from plait.engine import GenerateRequest, SamplingParams

    rng = random.Random(seed)
    vocab = engine.tokenizer.vocab_size
    low, high = min(1000, vocab // 4), min(vocab, 32_000)
    limit = min(longest_prompt, engine.core.max_context - 16)

    def request(tokens: int, max_tokens: int) -> GenerateRequest:
        ids = [rng.randrange(low, high) for _ in range(max(1, tokens))]
        sampling = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
        return GenerateRequest(prompt_token_ids=ids, sampling=sampling)

    length = 256
    while length <= limit:
        await engine.complete(request(length, 4))
        length *= 4
    if limit > 0:
        await engine.complete(request(limit, 4))
    await asyncio.gather(*(engine.complete(request(64, 32)) for _ in range(concurrency)))
