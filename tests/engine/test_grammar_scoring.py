"""``select`` by scoring: choice log-probabilities through the batch match a direct forward pass."""

from __future__ import annotations

import asyncio
import math

import pytest
import torch

from plait.engine import ChoiceScore, EngineCore, GenerateRequest, InvalidRequestError, SamplingParams
from tests.conftest import serving

# Longer than the scheduler's 32-token sharing key, so the choices wait for the first one's prefill and share it.
PROMPT = (
    "You are a geography quiz assistant. Answer each question with the name of a city, and nothing else. "
    "Question: what is the capital of France? Answer:"
)
CHOICES = [" Paris", " London", " the city of Lyon", " Paris"]


@pytest.fixture(autouse=True)
def _leave_the_shared_core_as_found(request):
    """The session's ``fp32_core`` is shared: drop what these tests cached so later tests see an empty cache."""
    yield
    if "fp32_core" in request.fixturenames:
        request.getfixturevalue("fp32_core").flush_prefix_cache()


def reference(core: EngineCore, prompt: str, choice: str) -> float:
    prompt_ids = core.tokenizer.encode(prompt)
    choice_ids = core.tokenizer.encode(choice, add_special_tokens=False)
    logits = core.prompt_logits(prompt_ids + choice_ids)
    logprobs = torch.log_softmax(logits, dim=-1)
    return sum(logprobs[len(prompt_ids) - 1 + j, t].item() for j, t in enumerate(choice_ids))


def test_scores_match_a_direct_forward_pass(fp32_core):
    before = fp32_core.stats().cached_prefix_tokens
    policy = fp32_core.policy
    fp32_core.set_policy(policy.with_values(prefix_hold_min_tokens=1))  # a short prompt: share it anyway (sharing path)
    try:
        scores = fp32_core.score_choices(GenerateRequest(prompt=PROMPT), CHOICES)
    finally:
        fp32_core.set_policy(policy)
    assert [s.text for s in scores] == CHOICES
    for score in scores:
        assert isinstance(score, ChoiceScore)
        assert score.logprob == pytest.approx(reference(fp32_core, PROMPT, score.text), abs=2e-3)
        assert score.num_tokens == len(fp32_core.tokenizer.encode(score.text, add_special_tokens=False))
        assert math.isclose(score.mean_logprob, score.logprob / score.num_tokens)
    assert scores[0].logprob == pytest.approx(scores[3].logprob, abs=1e-4)
    assert max(scores, key=lambda s: s.logprob).text == " Paris"
    # The prompt was computed once and shared: the other choices hit the prefix cache for all but its last token.
    prompt_len = len(fp32_core.tokenizer.encode(PROMPT))
    assert fp32_core.stats().cached_prefix_tokens - before >= (len(CHOICES) - 1) * (prompt_len - 2)
    fp32_core.check_invariants()
    assert fp32_core.kv_in_use() == 0 and not fp32_core.has_work()


def test_prompt_logprobs_survive_chunked_prefill_and_retraction(fp32_core):
    prompt_ids = fp32_core.tokenizer.encode(PROMPT + " Paris is the capital and largest city of France.")
    expected = torch.log_softmax(fp32_core.prompt_logits(prompt_ids), dim=-1)
    start = 5
    old_chunk = fp32_core.scheduler.config.chunk_size
    fp32_core.scheduler.config.chunk_size = 4  # the rows come from many chunks
    try:
        sampling = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs_start=start)
        fp32_core.add_request(GenerateRequest(prompt_token_ids=prompt_ids, sampling=sampling, request_id="lp"))
        fp32_core.step()
        fp32_core.step()
        fp32_core.scheduler._retract_lowest()  # start over mid-prefill: the rows are recomputed
        deltas = []
        while fp32_core.has_work():
            deltas += fp32_core.step()
    finally:
        fp32_core.scheduler.config.chunk_size = old_chunk
    (first,) = [d for d in deltas if d.prompt_logprobs is not None]
    assert [lp.token_id for lp in first.prompt_logprobs] == prompt_ids[start:]
    for position, lp in zip(range(start, len(prompt_ids)), first.prompt_logprobs, strict=True):
        assert lp.logprob == pytest.approx(expected[position - 1, prompt_ids[position]].item(), abs=2e-3)
    fp32_core.check_invariants()


def test_bad_scoring_requests_fail_before_running(fp32_core):
    with pytest.raises(InvalidRequestError, match="choices"):
        fp32_core.score_choices(GenerateRequest(prompt=PROMPT), [])
    with pytest.raises(InvalidRequestError, match="choices"):
        fp32_core.score_choices(GenerateRequest(prompt=PROMPT), ["a", ""])
    with pytest.raises(InvalidRequestError, match="prompt_logprobs_start"):
        fp32_core.prepare(GenerateRequest(prompt="hi", sampling=SamplingParams(prompt_logprobs_start=50)))
    assert not fp32_core.has_work()


def test_engine_scores_while_other_requests_run(fp32_core):
    async def main() -> None:
        with serving(fp32_core) as engine:
            other = asyncio.create_task(
                engine.complete(GenerateRequest(prompt="Tell me a story.", sampling=SamplingParams(max_tokens=24)))
            )
            scores = await engine.score_choices(GenerateRequest(prompt=PROMPT), CHOICES[:2])
            result = await other
            assert result.completions[0].finish_reason in ("stop", "length")
            assert scores[0].logprob > scores[1].logprob
            expected = reference(fp32_core, PROMPT, CHOICES[1])
            assert scores[1].logprob == pytest.approx(expected, abs=2e-3)

    asyncio.run(main())
    assert fp32_core.kv_in_use() == 0
