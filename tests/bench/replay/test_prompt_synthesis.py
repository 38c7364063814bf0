"""Synthesized prompts reproduce the trace's prefix sharing exactly; the expected reuse counts it the same way."""

from __future__ import annotations

import pytest

from plait.bench.replay.prompt_synthesis import PromptSynthesizer, expected_prefix_reuse
from plait.bench.replay.records import TraceRequest


def shared_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def test_equal_hash_ids_give_equal_blocks_and_nothing_else_is_shared():
    synth = PromptSynthesizer(vocab_size=49_152, block_tokens=16, seed=3)
    a = synth.prompt(0, TraceRequest(0.0, 40, 1, (7, 8, 9)))
    b = synth.prompt(1, TraceRequest(0.0, 44, 1, (7, 8, 10)))
    c = synth.prompt(2, TraceRequest(0.0, 20, 1, (11, 8)))
    assert len(a) == 40 and len(b) == 44 and len(c) == 20
    assert shared_prefix(a, b) == 32  # blocks 7 and 8, then the third differs
    assert shared_prefix(a, c) < 16  # a different first block: only chance agreement
    assert a[16:20] == c[16:20]  # block 8 (cut to 4 tokens in c) is the same ids wherever it appears
    assert all(1000 <= t < 32_000 for t in a + b + c)
    again = PromptSynthesizer(vocab_size=49_152, block_tokens=16, seed=3).prompt(0, TraceRequest(0.0, 40, 1, (7, 8, 9)))
    assert again == a
    assert PromptSynthesizer(vocab_size=49_152, block_tokens=16, seed=4).prompt(0, TraceRequest(0, 40, 1, (7,))) != a


def test_requests_without_hash_ids_share_nothing_and_small_vocabularies_work():
    synth = PromptSynthesizer(vocab_size=512, block_tokens=8)
    a, b = synth.prompt(0, TraceRequest(0.0, 50, 1)), synth.prompt(1, TraceRequest(0.0, 50, 1))
    assert len(a) == 50 and a != b and all(128 <= t < 512 for t in a + b)
    with pytest.raises(ValueError, match="vocab_size"):
        PromptSynthesizer(vocab_size=8, block_tokens=8)


def test_expected_reuse_counts_prefix_blocks_only():
    requests = [
        TraceRequest(0.0, 30, 1, (1, 2)),  # 16 + 14 tokens, nothing seen
        TraceRequest(1.0, 40, 1, (1, 2, 3)),  # block 1 (16), block 2 only 14 of 16 seen before: prefix stops there
        TraceRequest(2.0, 32, 1, (1, 2)),  # 16 + 16 seen (request 1 held the full block 2)
        TraceRequest(3.0, 32, 1, (9, 2)),  # block 2 seen, but block 9 is new: no prefix
    ]
    expected = (0 + (16 + 14) + 32 + 0) / (30 + 40 + 32 + 32)
    assert expected_prefix_reuse(requests, 16) == pytest.approx(expected)
    assert expected_prefix_reuse([TraceRequest(0.0, 10, 1)], 16) is None
