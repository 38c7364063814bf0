"""Presence and frequency penalties (OpenAI semantics): exact against a reference computed by hand, per request in a
batch, on both sides of the overlap loop, and free for the requests that set neither. The engine tests also run on a
CUDA GPU (``gpu`` marker), where the overlap loop and decode CUDA graphs are on by default."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import torch

import plait.engine.engine_core as engine_core
from plait.engine import EngineConfig, EngineCore, GenerateRequest, InvalidRequestError, SamplingParams
from plait.engine.inflight import PENDING
from plait.engine.sampler import SampleRow, apply_penalties, sample
from tests.conftest import TINY, run_to_completion, tiny_core

pytestmark = pytest.mark.usefixtures("one_thread")
CUDA = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
# (device, overlap): CPU both ways; CUDA with its defaults (overlap on, decode CUDA graphs on).
ENGINES = [("cpu", "off"), ("cpu", "on"), pytest.param(("cuda", "auto"), marks=CUDA, id="cuda")]


def _hand_penalised(logits: list[float], generated: list[int], frequency: float, presence: float) -> list[float]:
    """The OpenAI formula, one token at a time: ``logit[t] - frequency * count[t] - presence * (count[t] > 0)``."""
    counts = Counter(generated)
    return [
        value - frequency * counts[token] - (presence if counts[token] else 0.0) for token, value in enumerate(logits)
    ]


# --- the sampler ----------------------------------------------------------------------------------------------------


def test_apply_penalties_matches_the_formula_row_by_row() -> None:
    vocab = 32
    logits = torch.randn(4, vocab, generator=torch.Generator().manual_seed(0))
    prompt = [1, 2, 3, 3]  # prompt tokens never count
    rows = [
        SampleRow(SamplingParams(frequency_penalty=0.5), torch.Generator(), [*prompt, 7, 7, 9], len(prompt)),
        SampleRow(SamplingParams(), torch.Generator(), [*prompt, 7, 7], len(prompt)),  # no penalty: untouched
        SampleRow(
            SamplingParams(presence_penalty=1.5, frequency_penalty=-0.25), torch.Generator(), [0, 5, 5, 5, 31], 1
        ),
        SampleRow(SamplingParams(presence_penalty=-2.0), torch.Generator(), [4, 6, PENDING], 1),  # pending: uncounted
    ]
    before = logits.clone()
    got = apply_penalties(logits, rows)
    assert torch.equal(logits, before), "the input logits are never modified (log-probabilities read them)"
    for i, row in enumerate(rows):
        generated = [t for t in row.token_ids[row.num_prompt :] if t >= 0]
        want = _hand_penalised(before[i].tolist(), generated, row.params.frequency_penalty, row.params.presence_penalty)
        assert got[i].tolist() == pytest.approx(want, abs=1e-6), f"row {i}"
    assert torch.equal(got[1], before[1])


def test_rows_without_penalties_cost_nothing() -> None:
    logits = torch.randn(3, 16)
    rows = [SampleRow(SamplingParams(temperature=0.0), torch.Generator(), [1, 1, 1], 0) for _ in range(3)]
    assert apply_penalties(logits, rows) is logits  # no copy, no counts


def test_a_masked_token_stays_masked_under_a_negative_penalty() -> None:
    logits = torch.tensor([[0.0, -math.inf, 1.0]])
    rows = [SampleRow(SamplingParams(temperature=0.0, frequency_penalty=-2.0), torch.Generator(), [1, 1, 1, 0], 0)]
    penalised = apply_penalties(logits, rows)
    assert penalised[0, 1].item() == -math.inf
    assert sample(logits, rows).tolist() == [0]  # 0 + 2 > 1


def test_penalties_apply_before_temperature() -> None:
    # Token 0 leads by 1.0; a frequency penalty of 2 for its one occurrence puts token 1 ahead by 1.0, so at a tiny
    # temperature the draw is (almost surely) token 1. Were the penalty divided by the temperature, nothing changes.
    logits = torch.tensor([[1.0, 0.0]])
    row = SampleRow(SamplingParams(temperature=0.01, frequency_penalty=2.0), torch.Generator().manual_seed(0), [0], 0)
    assert sample(logits, [row]).tolist() == [1]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("presence_penalty", 2.5),
        ("presence_penalty", -2.01),
        ("frequency_penalty", float("nan")),
        ("frequency_penalty", True),
        ("frequency_penalty", "1"),
    ],
)
def test_out_of_range_penalties_name_their_field(name: str, value: Any) -> None:
    with pytest.raises(InvalidRequestError) as raised:
        SamplingParams(**{name: value}).validate()
    assert raised.value.field == name
    assert "[-2, 2]" in raised.value.message


def test_the_range_bounds_are_accepted() -> None:
    SamplingParams(presence_penalty=-2.0, frequency_penalty=2).validate()


# --- through the engine ---------------------------------------------------------------------------------------------


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[torch.Tensor, list[SampleRow]]]]:
    """Every ``sample_on_device`` call the engine makes: the logits it was given (pre-penalty) and its rows' params
    and generated tokens at that moment."""
    calls: list[tuple[torch.Tensor, list[SampleRow]]] = []
    real = engine_core.sample_on_device

    def spy(logits: torch.Tensor, rows: list[SampleRow]) -> torch.Tensor:
        snapshot = [SampleRow(r.params, r.generator, list(r.token_ids[r.num_prompt :]), 0) for r in rows]
        calls.append((logits.clone(), snapshot))
        return real(logits, rows)

    monkeypatch.setattr(engine_core, "sample_on_device", spy)
    yield calls


def _core(engine: tuple[str, str]) -> EngineCore:
    device, overlap = engine
    return EngineCore(EngineConfig(**{**TINY, "device": device, "overlap": overlap}))


def _request(request_id: str, prompt: str = "hello world", **params: Any) -> GenerateRequest:
    params = {"temperature": 0.0, "max_tokens": 24, "ignore_eos": True, **params}
    return GenerateRequest(prompt=prompt, sampling=SamplingParams(**params), request_id=request_id)


@pytest.mark.parametrize("engine", ENGINES)
def test_greedy_tokens_are_the_argmax_of_the_hand_penalised_logits(captured, engine: tuple[str, str]) -> None:
    core = _core(engine)
    tokens = run_to_completion(core, [_request("p", frequency_penalty=0.3, presence_penalty=0.2)])["p"][0]
    assert len(captured) == len(tokens) == 24
    for step, (logits, rows) in enumerate(captured):
        (row,) = rows
        assert row.token_ids == tokens[:step], "the sampler sees exactly the tokens generated before this step"
        want = _hand_penalised(logits[0].tolist(), tokens[:step], 0.3, 0.2)
        assert tokens[step] == max(range(len(want)), key=want.__getitem__)


@pytest.mark.parametrize("engine", ENGINES)
def test_seeded_samples_match_a_replay_of_the_hand_penalised_logits(captured, engine: tuple[str, str]) -> None:
    core = _core(engine)
    params = {"temperature": 0.8, "top_p": 0.9, "seed": 11, "n": 2, "frequency_penalty": 1.0, "presence_penalty": -0.5}
    out = run_to_completion(core, [_request("s", max_tokens=12, **params)])["s"]
    # Each sample has its own generator: group the captured rows by it (its logits row, its tokens so far).
    by_sample: dict[int, list[tuple[torch.Tensor, list[int]]]] = {}
    for logits, rows in captured:
        for k, row in enumerate(rows):
            by_sample.setdefault(id(row.generator), []).append((logits[k], row.token_ids))
    assert len(by_sample) == 2
    plain = SamplingParams(temperature=0.8, top_p=0.9)
    for index in (0, 1):  # sample i draws from a generator seeded ``seed + i`` and counts only its own tokens
        tokens = out[index]
        (steps,) = [s for s in by_sample.values() if s[-1][1] == tokens[:-1]]
        replay = torch.Generator().manual_seed(11 + index)
        for step, (logits_row, generated) in enumerate(steps):
            assert generated == tokens[:step]
            hand = _hand_penalised(logits_row.tolist(), generated, 1.0, -0.5)
            penalised = torch.tensor([hand], device=logits_row.device)  # replayed where the engine sampled
            assert sample(penalised, [SampleRow(plain, replay)]).tolist() == [tokens[step]], f"{index}, {step}"


@pytest.mark.parametrize("engine", ENGINES)
def test_a_large_frequency_penalty_never_repeats_a_greedy_token(engine: tuple[str, str]) -> None:
    core = _core(engine)
    plain = run_to_completion(core, [_request("plain", max_tokens=120)])["plain"][0]
    assert len(set(plain)) < len(plain), "the unpenalised output repeats (else this test proves nothing)"
    tokens = run_to_completion(core, [_request("f", max_tokens=120, frequency_penalty=2.0)])["f"][0]
    assert len(tokens) == 120
    assert len(set(tokens)) == len(tokens), "a token was generated twice"


@pytest.mark.parametrize("engine", ENGINES)
def test_a_penalised_batch_mate_leaves_the_others_unchanged(engine: tuple[str, str]) -> None:
    core = _core(engine)
    alone = run_to_completion(core, [_request("plain", max_tokens=40)])["plain"][0]
    penalised_alone = run_to_completion(core, [_request("pen", max_tokens=40, frequency_penalty=1.5)])["pen"][0]
    assert penalised_alone != alone
    mixed = run_to_completion(
        core,
        [
            _request("plain", max_tokens=40),
            _request("pen", max_tokens=40, frequency_penalty=1.5),
            _request("seeded", max_tokens=40, temperature=1.0, seed=3),
        ],
    )
    assert mixed["plain"][0] == alone
    assert mixed["pen"][0] == penalised_alone
    seeded_alone = run_to_completion(core, [_request("seeded", max_tokens=40, temperature=1.0, seed=3)])["seeded"][0]
    assert mixed["seeded"][0] == seeded_alone
    core.check_invariants()
    assert core.kv_in_use() == 0


def test_overlap_on_and_off_agree_with_penalties() -> None:
    results = []
    for overlap in ("off", "on"):
        core = EngineCore(EngineConfig(**{**TINY, "overlap": overlap}))
        requests = [
            _request("a", frequency_penalty=0.7),
            _request("b", prompt="abc", presence_penalty=1.0, temperature=0.9, seed=5, n=2),
            _request("c", prompt="xyz"),
        ]
        results.append(run_to_completion(core, requests))
    assert results[0] == results[1]


def test_penalties_with_a_grammar_keep_the_output_valid() -> None:
    core = tiny_core()
    request = _request("g", max_tokens=16, regex="[ab]{8}", frequency_penalty=-2.0, ignore_eos=False)
    tokens = run_to_completion(core, [request])["g"][0]
    assert tokens[-1] in core.tokenizer.stop_token_ids  # the grammar is complete, and the model ended it
    text = core.tokenizer.decode(tokens[:-1])
    assert len(text) == 8 and set(text) <= {"a", "b"}


def test_logprobs_stay_those_of_the_raw_distribution(captured) -> None:
    core = tiny_core()
    request = _request("l", max_tokens=6, frequency_penalty=2.0, logprobs=True)
    core.add_request(request)
    logprobs = []
    while core.has_work():
        for delta in core.step():
            logprobs += delta.logprobs or []
    for (logits, _), entry in zip(captured, logprobs, strict=True):
        raw = torch.log_softmax(logits[0], dim=-1)[entry.token_id].item()
        assert entry.logprob == pytest.approx(raw, abs=1e-5)
