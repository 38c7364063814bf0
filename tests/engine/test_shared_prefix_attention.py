"""Shared-prefix decode attention: groups of sequences whose first ``P`` KV slots are the same attend that prefix
together (one tile per up to ``tile_seqs`` members) and their own positions alone; the result must match the dense
float32 reference and plain decode attention. Runs under Triton's interpreter on CPU (small shapes) and on a GPU."""

from __future__ import annotations

import random

import pytest
import torch

from tests.engine import test_triton_attention as base
from tests.engine.test_triton_attention import (
    DEVICE,
    IN_PROCESS,
    NUM_KV_HEADS,
    TOLERANCE,
    dense_reference,
    paged_cache,
    rel_err,
)
from tests.engine.triton_interpret import run_interpreted_in_subprocess


@pytest.fixture
def kernels():
    if not IN_PROCESS:
        pytest.skip("triton was imported without TRITON_INTERPRET=1; test_interpreted_in_subprocess runs this")
    return base._KERNELS


@pytest.mark.skipif(IN_PROCESS, reason="the kernels run in this process")
def test_interpreted_in_subprocess():
    run_interpreted_in_subprocess(__file__)


def shared_rows(lengths, groups, head_dim, dtype, rng):
    """``paged_cache`` whose group members' rows start with the first member's slots for the group's prefix."""
    k_pool, v_pool, table, rows = paged_cache(lengths, NUM_KV_HEADS, head_dim, dtype, rng)
    row_list = rows.tolist()
    for shared, members in groups:
        source = table[row_list[members[0]], :shared].clone()
        for index in members[1:]:
            table[row_list[index], :shared] = source
    return k_pool, v_pool, table, rows


def run_shared(kernels, lengths, groups, group_heads, head_dim, dtype, num_splits, rng, pad_tiles=0):
    k_pool, v_pool, table, rows = shared_rows(lengths, groups, head_dim, dtype, rng)
    q = torch.randn(len(lengths), NUM_KV_HEADS * group_heads, head_dim, device=DEVICE).to(dtype)
    lens = torch.tensor(lengths, dtype=torch.int32, device=DEVICE)
    module = kernels.shared
    per_tile = module.TILE_SEQS
    num_tiles = sum(-(-len(members) // per_tile) for _, members in groups) + pad_tiles
    starts, tile_rows, tile_lens, members = module.layout_tiles(groups, rows.tolist(), len(lengths), num_tiles)
    as_t = lambda values: torch.tensor(values, dtype=torch.int32, device=DEVICE)  # noqa: E731
    slices = module.choose_prefix_slices(num_tiles, NUM_KV_HEADS, max(s for s, _ in groups), DEVICE)
    tiles = module.PrefixTiles(as_t(starts), as_t(tile_rows), as_t(tile_lens), as_t(members).view(-1, per_tile), slices)
    scale = head_dim**-0.5
    out = torch.full_like(q, float("nan"))
    kernels.decode.decode_attention(q, k_pool, v_pool, table, rows, lens, out, scale, num_splits, prefix=tiles)
    plain = torch.full_like(q, float("nan"))
    kernels.decode.decode_attention(q, k_pool, v_pool, table, rows, lens, plain, scale, num_splits)
    errors, vs_plain = [], []
    for i, (row, length) in enumerate(zip(rows.tolist(), lengths, strict=True)):
        slots = table[row, :length]
        ref = dense_reference(q[i : i + 1], k_pool[slots], v_pool[slots], torch.tensor([length - 1]).to(DEVICE), scale)
        errors.append(rel_err(out[i : i + 1], ref))
        vs_plain.append(rel_err(out[i : i + 1], plain[i : i + 1].float()))
    return max(errors), max(vs_plain)


CASES = [(group, dtype) for dtype in (torch.float32, torch.bfloat16) for group in (1, 4)] + [(3, torch.float32)]


@pytest.mark.parametrize(("group_heads", "dtype"), CASES)
@pytest.mark.parametrize("num_splits", [1, 3])
def test_shared_prefix_matches_reference(kernels, group_heads, dtype, num_splits):
    rng = random.Random(7)
    # Two groups (one spanning two tiles), sequences in no group,
    # and members whose own part is a single token (the new one) or longer than the prefix.
    lengths = [rng.randint(70, 200) for _ in range(24)]
    big = list(range(0, 18)) if group_heads == 4 else list(range(0, 6))  # 18 > TILE_SEQS: two tiles
    groups = [(64, big), (65, [20, 21, 23])]
    lengths[1] = 65  # own part: one token after the 64-token prefix
    lengths[21] = 66
    err, vs_plain = run_shared(kernels, lengths, groups, group_heads, 32, dtype, num_splits, rng, pad_tiles=2)
    assert err < TOLERANCE[dtype], err
    assert vs_plain < TOLERANCE[dtype], vs_plain


def test_layout_tiles_pads_and_checks_capacity(kernels):
    module = kernels.shared
    starts, rows, lens, members = module.layout_tiles([(128, [0, 2, 3])], [5, 6, 7, 8], 4, num_tiles=3, per_tile=2)
    assert starts == [128, 0, 128, 128]
    assert rows == [5, 5, 0] and lens == [128, 128, 0]
    assert members == [0, 2, 3, -1, -1, -1]
    with pytest.raises(ValueError, match="exceed"):
        module.layout_tiles([(128, [0, 1, 2])], [5, 6, 7], 3, num_tiles=2, per_tile=1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("num_splits", [1, 4])
def test_gpu_shared_prefix_full_shape(kernels, num_splits):
    """Full length, bf16, head dim 128, four query heads per KV head: 120 of 128 decodes on a 2560-token prefix."""
    rng = random.Random(11)
    lengths = [2560 + rng.randint(1, 600) for _ in range(128)]
    err, vs_plain = run_shared(kernels, lengths, [(2560, list(range(120)))], 4, 128, torch.bfloat16, num_splits, rng)
    assert err < TOLERANCE[torch.bfloat16] and vs_plain < TOLERANCE[torch.bfloat16], (err, vs_plain)
