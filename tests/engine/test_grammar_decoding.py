"""Constrained decoding end to end: outputs follow their grammar, finish reasons, n > 1, retraction, abort, leaks.

The default model (SmolLM2-135M) samples at temperature 1.0, so the grammar, not the model, is what keeps the
outputs valid. ``PLAIT_GRAMMAR_SAMPLES=500`` (or the ``slow`` test) runs the acceptance count of 500 per constraint.
"""

from __future__ import annotations

import json
import os
import re

import jsonschema
import pytest

from plait.engine import EngineCore, GenerateRequest, SamplingParams
from tests.conftest import tiny_core

SAMPLES = int(os.environ.get("PLAIT_GRAMMAR_SAMPLES", "32"))
REGEX = r"(\+33|0)[1-9]( [0-9]{2}){4}"
CHOICES = ["positive", "negative", "neutral", "positive but uncertain"]
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "email": {"type": "string", "format": "email"},
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
    },
    "required": ["name", "age", "tags"],
}


@pytest.fixture(autouse=True)
def _leave_the_shared_core_as_found(request):
    """The session's ``fp32_core`` is shared: drop what these tests cached so later tests see an empty cache."""
    yield
    if "fp32_core" in request.fixturenames:
        request.getfixturevalue("fp32_core").flush_prefix_cache()


def run(core: EngineCore, requests: list[GenerateRequest], check_every_step: bool = False) -> dict:
    """Step until idle; returns ``{(request_id, index): (text, finish_reason, completion_tokens)}``."""
    for request in requests:
        core.add_request(request)
    for grammar in core.grammars.requests.values():  # compiled off the engine thread: wait, for deterministic steps
        grammar.future.result(timeout=60)
    texts: dict[tuple[str, int], list[str]] = {}
    done: dict[tuple[str, int], tuple[str, str, int]] = {}
    while core.has_work():
        for delta in core.step():
            key = (delta.request_id, delta.index)
            texts.setdefault(key, []).append(delta.text)
            if delta.finish_reason is not None:
                assert delta.error is None, delta.error
                done[key] = ("".join(texts[key]), delta.finish_reason, delta.completion_tokens)
        if check_every_step:
            core.check_invariants()
    core.check_invariants()
    assert core.kv_in_use() == 0 and core.grammars.num_matchers() == 0 and not core.grammars.requests
    return done


def sample_outputs(core: EngineCore, prompt: str, sampling: SamplingParams, count: int) -> list[tuple[str, str]]:
    per_request = sampling.n
    requests = [
        GenerateRequest(prompt=prompt, sampling=sampling, request_id=f"s{i}") for i in range(count // per_request)
    ]
    done = run(core, requests)
    assert len(done) == count
    return [(text, reason) for text, reason, _ in done.values()]


def _sampling(**kwargs) -> SamplingParams:
    return SamplingParams(temperature=1.0, seed=7, n=8, **kwargs)


def test_regex_outputs_match(fp32_core):
    outputs = sample_outputs(fp32_core, "A French phone number:", _sampling(regex=REGEX, max_tokens=40), SAMPLES)
    assert all(reason == "stop" for _, reason in outputs)
    assert all(re.fullmatch(REGEX, text) for text, _ in outputs), [t for t, _ in outputs if not re.fullmatch(REGEX, t)]


def test_choices_outputs_are_exactly_one_choice(fp32_core):
    prompt = "Review: great film, a bit long. Sentiment:"
    outputs = sample_outputs(fp32_core, prompt, _sampling(choices=CHOICES, max_tokens=20), SAMPLES)
    assert all(reason == "stop" and text in CHOICES for text, reason in outputs), outputs
    assert len({text for text, _ in outputs}) > 1, "temperature 1.0 should reach more than one choice"


def test_json_schema_outputs_validate(fp32_core):
    prompt = "Write one person as a JSON object:"
    outputs = sample_outputs(fp32_core, prompt, _sampling(json_schema=PERSON, max_tokens=100), 16)
    finished = [text for text, reason in outputs if reason == "stop"]
    assert len(finished) >= 12
    for text in finished:
        jsonschema.validate(json.loads(text), PERSON)


def test_json_object_and_ebnf(fp32_core):
    ebnf = 'root ::= "(" expr ")"\nexpr ::= [0-9]+ (("+" | "*") [0-9]+)*'
    json_sampling = SamplingParams(json_object=True, max_tokens=60, seed=1, n=4)
    done = run(
        fp32_core,
        [
            GenerateRequest(prompt="JSON:", sampling=json_sampling, request_id="json"),
            GenerateRequest(
                prompt="Sum:", sampling=SamplingParams(ebnf=ebnf, max_tokens=30, seed=1, n=4), request_id="ebnf"
            ),
        ],
    )
    for (request_id, _), (text, reason, _) in done.items():
        if reason != "stop":
            continue
        if request_id == "json":
            assert isinstance(json.loads(text), dict), text
        else:
            assert re.fullmatch(r"\(\d+([+*]\d+)*\)", text), text
    assert sum(reason == "stop" for _, reason, _ in done.values()) >= 4


def test_cut_off_output_says_length(fp32_core):
    sampling = SamplingParams(json_schema=PERSON, max_tokens=5, seed=0)
    ((text, reason, tokens),) = run(fp32_core, [GenerateRequest(prompt="Person:", sampling=sampling)]).values()
    assert reason == "length" and tokens == 5 and text.startswith("{")


def test_grammar_end_finishes_even_with_ignore_eos(fp32_core):
    sampling = SamplingParams(choices=["yes", "no"], max_tokens=30, ignore_eos=True, temperature=0.0)
    ((text, reason, _),) = run(fp32_core, [GenerateRequest(prompt="Is water wet?", sampling=sampling)]).values()
    assert reason == "stop" and text in ("yes", "no")


def test_unconstrained_requests_in_the_same_batch_are_unchanged(fp32_core):
    greedy = SamplingParams(temperature=0.0, max_tokens=12)
    alone = run(fp32_core, [GenerateRequest(prompt="Once upon a time", sampling=greedy, request_id="free")])
    mixed = run(
        fp32_core,
        [
            GenerateRequest(prompt="Once upon a time", sampling=greedy, request_id="free"),
            GenerateRequest(prompt="Digits:", sampling=SamplingParams(regex="[0-9]{8}"), request_id="digits"),
        ],
    )
    assert mixed[("free", 0)] == alone[("free", 0)]
    assert re.fullmatch("[0-9]{8}", mixed[("digits", 0)][0])


def test_logprobs_are_the_models_own(fp32_core):
    sampling = SamplingParams(choices=["yes", "no"], temperature=0.0, logprobs=True)
    core = fp32_core
    core.add_request(GenerateRequest(prompt="Is water wet? Answer:", sampling=sampling))
    deltas = []
    while core.has_work():
        deltas += core.step()  # with the overlap loop a step's deltas arrive with the next step
    first = deltas[0]
    # Under the mask every disallowed token has probability 0; the reported logprob is the unmasked model's.
    assert first.logprobs is not None and first.logprobs[0].logprob < 0.0


# ---- mechanics on the tiny random model (byte tokenizer) -------------------------------------------------------------


@pytest.mark.usefixtures("one_thread")
def test_matchers_survive_retraction_and_nothing_leaks():
    core = tiny_core(kv_slots=160, max_running=8, max_context=128, seed=5)
    core.scheduler.config.reserve_decode = False  # over-admit on purpose: the pool then runs out mid-decode
    regex = "[a-f]{10}-[0-9]{10}-[a-z ]{20}"
    requests = [
        GenerateRequest(
            prompt_token_ids=[(13 * i + j) % 256 for j in range(12)],
            sampling=SamplingParams(regex=regex, max_tokens=60, ignore_eos=True, n=2 if i % 3 == 0 else 1, seed=i),
            request_id=f"r{i}",
        )
        for i in range(8)
    ]
    done = run(core, requests, check_every_step=True)
    assert core.stats().retractions > 0, "the pool was meant to be too small for every request at once"
    assert len(done) == 11
    for text, reason, tokens in done.values():
        assert reason == "stop" and re.fullmatch(regex, text) and tokens == 43, (text, reason, tokens)


@pytest.mark.usefixtures("one_thread")
def test_abort_frees_matchers_and_kv():
    core = tiny_core(seed=1)
    core.add_request(GenerateRequest(prompt_token_ids=[1, 2, 3], sampling=SamplingParams(regex="[a-z]{50}", n=3)))
    core.add_request(GenerateRequest(prompt_token_ids=[4, 5], sampling=SamplingParams(regex="x+", max_tokens=40)))
    for grammar in core.grammars.requests.values():
        grammar.future.result(timeout=30)  # compiled off the engine thread: wait, so the steps below are deterministic
    for _ in range(4):
        core.step()
    assert core.grammars.num_matchers() == 4
    for request_id in list(core.requests):
        deltas = core.abort(request_id)
        assert deltas and all(d.finish_reason == "abort" for d in deltas)
    core.check_invariants()
    assert core.grammars.num_matchers() == 0 and not core.grammars.requests and core.kv_in_use() == 0
    assert not core.has_work()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["regex", "choices"])
def test_500_samples_match(fp32_core, kind):
    """Acceptance 2: regex and choices outputs match 100% over 500 samples each."""
    if kind == "regex":
        sampling = SamplingParams(temperature=1.0, seed=11, n=10, regex=REGEX, max_tokens=40)
        outputs = sample_outputs(fp32_core, "A French phone number:", sampling, 500)
        assert all(reason == "stop" and re.fullmatch(REGEX, text) for text, reason in outputs)
    else:
        sampling = SamplingParams(temperature=1.0, seed=11, n=10, choices=CHOICES, max_tokens=20)
        outputs = sample_outputs(fp32_core, "Review: great film, a bit long. Sentiment:", sampling, 500)
        assert all(reason == "stop" and text in CHOICES for text, reason in outputs)
