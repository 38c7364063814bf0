"""Acceptance: the engine against an independent implementation (HF transformers' Llama, same GGUF, fp32, CPU)."""

from __future__ import annotations

import pytest
import torch

from plait.engine import GenerateRequest, SamplingParams
from tests.conftest import run_to_completion

PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write a haiku about the sea."}],
    [{"role": "system", "content": "You answer in one word."}, {"role": "user", "content": "Opposite of hot?"}],
    [{"role": "user", "content": "List three prime numbers and explain why they are prime."}],
    [{"role": "user", "content": "Translate 'good morning' into Spanish and German."}],
    [{"role": "user", "content": "def fibonacci(n):"}],
]


@pytest.fixture(scope="module")
def prompt_ids(fp32_core) -> list[list[int]]:
    tokenizer = fp32_core.tokenizer
    return [tokenizer.encode(tokenizer.apply_chat_template(messages)) for messages in PROMPTS]


def test_greedy_tokens_match_transformers(fp32_core, hf_model, prompt_ids):
    sampling = SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True)
    ours = run_to_completion(
        fp32_core,
        [
            GenerateRequest(prompt_token_ids=ids, sampling=sampling, request_id=f"hf{i}")
            for i, ids in enumerate(prompt_ids)
        ],
    )
    for i, ids in enumerate(prompt_ids):
        assert ours[f"hf{i}"][0] == _hf_greedy(hf_model, ids, 32), f"prompt {i} diverges"


def _hf_greedy(model, ids: list[int], steps: int) -> list[int]:
    """Greedy decoding with HF's model and its own KV cache; no end-of-sequence stop, like ``ignore_eos``."""
    generated: list[int] = []
    past = None
    inputs = torch.tensor([ids])
    with torch.inference_mode():
        for _ in range(steps):
            out = model(input_ids=inputs, past_key_values=past, use_cache=True)
            past = out.past_key_values
            token = int(out.logits[0, -1].argmax())
            generated.append(token)
            inputs = torch.tensor([[token]])
    return generated


def test_prompt_logits_match_transformers(fp32_core, hf_model, prompt_ids):
    for ids in prompt_ids:
        logits = fp32_core.prompt_logits(ids)
        with torch.inference_mode():
            reference = hf_model(torch.tensor([ids])).logits[0].float()
        relative = (logits - reference).abs().max() / reference.abs().max()
        assert relative < 1e-3, f"relative error {relative:.2e}"
    fp32_core.check_invariants()
    assert fp32_core.kv_in_use() == 0
