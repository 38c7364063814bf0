"""Token selection (greedy, seeded random, top-k / top-p / min-p), logprobs and SamplingParams validation."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from plait.engine.errors import InvalidRequestError
from plait.engine.sampler import ARGMAX_CHUNK, SampleRow, _filtered_probs, row_argmax, sample, token_logprobs
from plait.engine.sampling_params import MAX_TOP_LOGPROBS, SamplingParams

VOCAB = 64


def _row(seed: int = 0, **params: Any) -> SampleRow:
    return SampleRow(SamplingParams(**params), torch.Generator().manual_seed(seed))


def _random_logits(rows: int, vocab: int = VOCAB, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * 3


def _draws(logits_row: torch.Tensor, count: int, seed: int = 0, **params: Any) -> torch.Tensor:
    """``count`` independent draws from one logits row (one shared generator, one batch row per draw)."""
    generator = torch.Generator().manual_seed(seed)
    row = SampleRow(SamplingParams(**params), generator)
    return sample(logits_row.expand(count, -1).contiguous(), [row] * count)


# --- greedy and filters ------------------------------------------------------------------------------------------


def test_greedy_is_argmax() -> None:
    logits = _random_logits(8)
    tokens = sample(logits, [_row(temperature=0.0) for _ in range(8)])
    assert tokens.tolist() == logits.argmax(dim=-1).tolist()


@pytest.mark.parametrize("rows", [1, 3, 16, 17])
def test_row_argmax_is_argmax_with_first_index_ties(rows: int) -> None:
    vocab = 64 * ARGMAX_CHUNK
    logits = torch.randn(rows, vocab, generator=torch.Generator().manual_seed(rows))
    peak = logits.max() + 1.0
    # Row 0: the maximum twice in one chunk and once in a later chunk; the first index must win.
    logits[0, [5 * ARGMAX_CHUNK + 7, 5 * ARGMAX_CHUNK + 3, 9 * ARGMAX_CHUNK]] = peak
    if rows > 1:  # the maximum in the last and the first chunk
        logits[1, [vocab - 1, 2]] = peak
    got = row_argmax(logits)
    assert got.dtype == torch.int64 and got.shape == (rows,)
    assert torch.equal(got, logits.argmax(dim=-1))
    assert got[0].item() == 5 * ARGMAX_CHUNK + 3
    assert rows == 1 or got[1].item() == 2


def test_row_argmax_of_a_narrow_or_ragged_vocabulary() -> None:
    for vocab in (ARGMAX_CHUNK * 3, ARGMAX_CHUNK * 40 + 1):  # too narrow to chunk; not a multiple of the chunk
        logits = torch.randn(2, vocab)
        assert torch.equal(row_argmax(logits), logits.argmax(dim=-1))


def test_sample_returns_int64_cpu_tensor() -> None:
    tokens = sample(_random_logits(3), [_row(temperature=0.0), _row(seed=1), _row(seed=2)])
    assert tokens.dtype == torch.int64
    assert tokens.device.type == "cpu"
    assert tokens.shape == (3,)


def test_greedy_rows_ignore_their_generator() -> None:
    logits = _random_logits(1)
    generator = torch.Generator().manual_seed(3)
    state = generator.get_state()
    sample(logits, [SampleRow(SamplingParams(temperature=0.0), generator)])
    assert torch.equal(generator.get_state(), state)


def test_top_k_one_equals_greedy() -> None:
    logits = _random_logits(16)
    tokens = sample(logits, [_row(seed=i, temperature=1.5, top_k=1) for i in range(16)])
    assert tokens.tolist() == logits.argmax(dim=-1).tolist()


def test_tiny_top_p_keeps_only_the_top_token() -> None:
    logits = _random_logits(16)
    tokens = sample(logits, [_row(seed=i, temperature=2.0, top_p=1e-6) for i in range(16)])
    assert tokens.tolist() == logits.argmax(dim=-1).tolist()


def test_top_k_two_draws_only_the_two_best_tokens() -> None:
    logits = torch.tensor([[2.0, 1.9, 1.8, 1.7]])
    seen = set(_draws(logits, 2000, top_k=2).tolist())
    assert seen == {0, 1}


def test_top_p_keeps_smallest_set_reaching_the_mass() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    filtered = _filtered_probs(probs.log(), [SamplingParams(top_p=0.7)])
    assert (filtered[0] > 0).tolist() == [True, True, False, False]
    filtered = _filtered_probs(probs.log(), [SamplingParams(top_p=0.81)])
    assert (filtered[0] > 0).tolist() == [True, True, True, False]


def test_min_p_drops_tokens_below_fraction_of_the_best() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    filtered = _filtered_probs(probs.log(), [SamplingParams(min_p=0.5)])  # threshold 0.25
    assert (filtered[0] > 0).tolist() == [True, True, False, False]
    seen = set(_draws(probs.log(), 2000, min_p=0.5).tolist())
    assert seen == {0, 1}


def test_min_p_one_keeps_only_the_top_token() -> None:
    logits = _random_logits(8)
    tokens = sample(logits, [_row(seed=i, min_p=1.0) for i in range(8)])
    assert tokens.tolist() == logits.argmax(dim=-1).tolist()


def test_filters_apply_per_row() -> None:
    probs = torch.tensor([[0.4, 0.3, 0.2, 0.1]] * 3)
    params = [SamplingParams(top_k=1), SamplingParams(), SamplingParams(min_p=0.6)]
    kept = (_filtered_probs(probs.log(), params) > 0).tolist()
    assert kept == [[True, False, False, False], [True, True, True, True], [True, True, False, False]]


def test_no_filters_give_plain_softmax() -> None:
    logits = _random_logits(2, vocab=10)
    probs = _filtered_probs(logits, [SamplingParams(), SamplingParams()])
    torch.testing.assert_close(probs, torch.softmax(logits, dim=-1))


# --- seeded sampling ---------------------------------------------------------------------------------------------


def test_seeded_sampling_is_reproducible() -> None:
    logits = _random_logits(1, vocab=1000)
    runs = []
    for _ in range(2):
        generator = torch.Generator().manual_seed(1234)
        row = SampleRow(SamplingParams(temperature=1.0, seed=1234), generator)
        runs.append([int(sample(logits, [row])[0]) for _ in range(20)])
    assert runs[0] == runs[1]
    assert len(set(runs[0])) > 1  # it is really sampling, not collapsing to one token


def test_different_seeds_give_different_samples() -> None:
    logits = torch.zeros(5, 1000)
    first = sample(logits, [_row(seed=1)] * 5).tolist()
    other = sample(logits, [_row(seed=2)] * 5).tolist()
    assert first != other


def test_seeded_row_is_independent_of_the_rest_of_the_batch() -> None:
    vocab = 500
    target = _random_logits(1, vocab=vocab, seed=42)
    params = {"temperature": 0.9, "top_k": 50, "top_p": 0.95}

    alone_gen = torch.Generator().manual_seed(7)
    alone = [int(sample(target, [SampleRow(SamplingParams(**params), alone_gen)])[0]) for _ in range(10)]

    position = 6
    batch_gen = torch.Generator().manual_seed(7)
    others = [
        _row(seed=100 + i, temperature=0.0 if i % 4 == 0 else 0.5 + i / 10, top_k=i % 3 * 5, min_p=(i % 2) * 0.05)
        for i in range(15)
    ]
    rows = [*others[:position], SampleRow(SamplingParams(**params), batch_gen), *others[position:]]
    in_batch = []
    for step in range(10):
        logits = _random_logits(16, vocab=vocab, seed=1000 + step)
        logits[position] = target[0]
        in_batch.append(int(sample(logits, rows)[position]))

    assert in_batch == alone
    assert len(set(alone)) > 1


# --- distribution ------------------------------------------------------------------------------------------------


def test_temperature_one_sampling_matches_softmax() -> None:
    logits = torch.tensor([[1.0, 0.0, -0.5, 2.0]])
    draws = 20_000
    tokens = _draws(logits, draws, seed=5, temperature=1.0)
    empirical = torch.bincount(tokens, minlength=4).double() / draws
    expected = torch.softmax(logits[0].double(), dim=-1)
    assert float((empirical - expected).abs().max()) < 0.02


def test_top_k_sampling_matches_renormalised_softmax() -> None:
    logits = torch.tensor([[1.0, 0.0, -0.5, 2.0]])
    draws = 20_000
    tokens = _draws(logits, draws, seed=6, top_k=2)
    empirical = torch.bincount(tokens, minlength=4).double() / draws
    expected = torch.zeros(4, dtype=torch.float64)
    expected[[3, 0]] = torch.softmax(torch.tensor([2.0, 1.0], dtype=torch.float64), dim=-1)
    assert float((empirical - expected).abs().max()) < 0.02


def test_lower_temperature_sharpens_the_distribution() -> None:
    logits = torch.tensor([[1.0, 0.0, -0.5, 2.0]])
    top = {t: float(_filtered_probs(logits, [SamplingParams(temperature=t)])[0, 3]) for t in (0.5, 1.0, 2.0)}
    assert top[0.5] > top[1.0] > top[2.0] > 0.25
    draws = 4000
    frequency = {t: float((_draws(logits, draws, seed=9, temperature=t) == 3).double().mean()) for t in (0.3, 3.0)}
    assert frequency[0.3] > frequency[3.0] + 0.2


def test_high_temperature_approaches_uniform() -> None:
    logits = torch.tensor([[1.0, 0.0, -0.5, 2.0]])
    probs = _filtered_probs(logits, [SamplingParams(temperature=1000.0)])
    torch.testing.assert_close(probs, torch.full((1, 4), 0.25), atol=1e-3, rtol=0)


# --- logprobs ----------------------------------------------------------------------------------------------------


def test_token_logprobs_equal_log_softmax() -> None:
    logits = _random_logits(4, vocab=30)
    tokens = torch.tensor([0, 5, 29, 12])
    result = token_logprobs(logits, tokens, [0, 0, 0, 0])
    reference = torch.log_softmax(logits.double(), dim=-1)
    for i, entry in enumerate(result):
        assert entry.token_id == int(tokens[i])
        assert entry.logprob == pytest.approx(float(reference[i, tokens[i]]), abs=1e-5)
        assert entry.top == []


def test_token_logprobs_top_alternatives_sorted_and_sized_per_row() -> None:
    logits = _random_logits(3, vocab=30)
    tokens = logits.argmax(dim=-1)
    top_n = [3, 0, MAX_TOP_LOGPROBS]
    result = token_logprobs(logits, tokens, top_n)
    reference = torch.log_softmax(logits, dim=-1)
    for i, entry in enumerate(result):
        assert len(entry.top) == top_n[i]
        values = [value for _, value in entry.top]
        assert values == sorted(values, reverse=True)
        for token_id, value in entry.top:
            assert value == pytest.approx(float(reference[i, token_id]), abs=1e-5)
        if entry.top:
            assert entry.top[0][0] == int(tokens[i])  # the greedy choice is the best alternative
            expected_ids = reference[i].topk(top_n[i]).indices.tolist()
            assert [token_id for token_id, _ in entry.top] == expected_ids


def test_token_logprobs_are_of_the_raw_distribution_not_the_filtered_one() -> None:
    logits = torch.tensor([[1.0, 0.0, -0.5, 2.0]])
    token = _draws(logits, 1, top_k=1)
    (entry,) = token_logprobs(logits, token, [2])
    assert entry.logprob == pytest.approx(float(torch.log_softmax(logits, dim=-1)[0, 3]), abs=1e-6)
    assert entry.logprob < 0


# --- SamplingParams.validate -------------------------------------------------------------------------------------


def test_default_sampling_params_are_valid() -> None:
    SamplingParams().validate(vocab_size=VOCAB)


def test_temperature_zero_is_greedy() -> None:
    assert SamplingParams(temperature=0.0).greedy
    assert not SamplingParams(temperature=0.7).greedy


def test_boundary_values_are_valid() -> None:
    SamplingParams(
        max_tokens=1,
        temperature=0.0,
        top_p=1.0,
        min_p=1.0,
        n=128,
        top_logprobs=MAX_TOP_LOGPROBS,
        stop=["x"] * 16,
        stop_token_ids=[0, VOCAB - 1],
        seed=0,
    ).validate(vocab_size=VOCAB)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_tokens", 0),
        ("max_tokens", -1),
        ("max_tokens", 1.5),
        ("temperature", -1.0),
        ("temperature", float("nan")),
        ("top_k", -1),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("min_p", -0.1),
        ("min_p", 1.1),
        ("n", 0),
        ("n", 129),
        ("top_logprobs", MAX_TOP_LOGPROBS + 1),
        ("top_logprobs", -1),
        ("stop", [""]),
        ("stop", ["ok", ""]),
        ("stop", ["x"] * 17),
        ("stop_token_ids", [VOCAB]),
        ("stop_token_ids", [-1]),
        ("seed", -1),
        ("seed", 2**63),
    ],
)
def test_invalid_field_raises_naming_the_field(field: str, value: Any) -> None:
    params = SamplingParams(**{field: value})
    with pytest.raises(InvalidRequestError) as info:
        params.validate(vocab_size=VOCAB)
    assert info.value.field == field
    assert field in str(info.value)


def test_invalid_request_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        SamplingParams(n=0).validate(vocab_size=VOCAB)


def test_a_greedy_token_tied_with_another_is_listed_first_in_its_top_logprobs() -> None:
    """bf16 logits tie often and ``topk`` orders ties arbitrarily; the chosen (argmax, first index) token must lead."""
    logits = torch.tensor([[0.0, 2.0, 1.0, 2.0], [3.0, 3.0, 3.0, 0.0]])
    tokens = torch.tensor([3, 2])  # the second of a tie in each row
    rows = token_logprobs(logits, tokens, [2, 3])
    assert [row.top[0][0] for row in rows] == [3, 2]
    assert rows[0].top[1][0] == 1 and {token for token, _ in rows[1].top} == {0, 1, 2}
    assert all(row.top[0][1] == row.logprob for row in rows)
