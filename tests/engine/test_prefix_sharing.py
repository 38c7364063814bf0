"""Acceptance: a shared prefix is computed once, and the cache never changes what the model outputs."""

from __future__ import annotations

import random

import pytest

from plait.engine import EngineConfig, EngineCore, GenerateRequest, SamplingParams
from tests.conftest import run_to_completion

PREFIX_LEN = 2048

pytestmark = pytest.mark.usefixtures("one_thread")


def _core(prefix_cache: str) -> EngineCore:
    return EngineCore(
        EngineConfig(
            model="tiny", weights="dummy", device="cpu", dtype="float32", prefix_cache=prefix_cache,
            kv_slots=8192, max_context=4096, max_batch_tokens=1024, chunk_size=512,
        )
    )  # fmt: skip


def _requests() -> list[GenerateRequest]:
    rng = random.Random(7)
    prefix = [rng.randrange(256) for _ in range(PREFIX_LEN)]
    sampling = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    return [
        GenerateRequest(
            prompt_token_ids=prefix + [rng.randrange(256) for _ in range(rng.randint(5, 40))],
            sampling=sampling,
            request_id=f"q{i}",
        )
        for i in range(16)
    ]


def test_shared_prefix_is_computed_once_and_outputs_do_not_change():
    requests = _requests()
    suffixes = sum(len(r.prompt_token_ids) - PREFIX_LEN for r in requests)
    cached_core = _core("radix")
    with_cache = run_to_completion(cached_core, requests)  # all 16 arrive together
    stats = cached_core.stats()
    assert stats.prefill_tokens <= PREFIX_LEN + suffixes, stats
    assert stats.cached_prefix_tokens >= 15 * PREFIX_LEN
    without_cache = run_to_completion(_core("none"), _requests())
    assert with_cache == without_cache
    cached_core.check_invariants()
    assert cached_core.kv_in_use() == 0
