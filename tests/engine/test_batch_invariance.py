"""Acceptance: a request's greedy tokens do not depend on its batch-mates or on how its prefill is chunked."""

from __future__ import annotations

import pytest

from plait.engine import EngineConfig, EngineCore, GenerateRequest, SamplingParams
from tests.conftest import run_to_completion

QUESTIONS = [
    "Hi",
    "What is 2 + 2?",
    "Name a colour.",
    "Write one sentence about cats and one about dogs.",
    "Explain photosynthesis to a child in a few sentences, step by step, with an example.",
    "What's the weather like on Mars?",
    "Give me a list of five fruits.",
    "Who wrote Hamlet?",
    "Summarise the plot of a heist movie in two sentences, without names.",
    "Say hello in French.",
    "Why is the sky blue? Keep it short.",
    "Count from one to ten in words.",
    "What does CPU stand for?",
    "Suggest a name for a pet goldfish.",
    "Describe a sunset using three adjectives and one simile, then rate it out of ten.",
    "Is a tomato a fruit?",
]


def _requests(core: EngineCore, tag: str) -> list[GenerateRequest]:
    sampling = SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True)
    messages = [[{"role": "user", "content": q}] for q in QUESTIONS]
    return [GenerateRequest(messages=m, sampling=sampling, request_id=f"{tag}{i}") for i, m in enumerate(messages)]


@pytest.fixture(scope="module")
def chunked_core(default_gguf) -> EngineCore:
    return EngineCore(EngineConfig(model=str(default_gguf), dtype="float32", device="cpu", chunk_size=7))


def test_alone_batched_and_chunked_agree(fp32_core, chunked_core):
    requests = _requests(fp32_core, "alone")
    lengths = {len(fp32_core.prepare(r).prompt_ids) for r in requests}
    assert len(lengths) >= 8, "the batch should mix prompt lengths"
    alone = [run_to_completion(fp32_core, [r])[r.request_id][0] for r in requests]
    batched = run_to_completion(fp32_core, _requests(fp32_core, "batch"))
    chunked = run_to_completion(chunked_core, _requests(chunked_core, "chunk"))
    for i, tokens in enumerate(alone):
        assert len(tokens) == 32
        assert batched[f"batch{i}"][0] == tokens, f"request {i}: batch of 16 differs from alone"
        assert chunked[f"chunk{i}"][0] == tokens, f"request {i}: chunked prefill (7) differs from alone"
    assert fp32_core.kv_in_use() == 0 and chunked_core.kv_in_use() == 0
