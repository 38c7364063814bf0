"""Decode attention over a prefix that many sequences of the batch share, read once per tile instead of once each.

When sequences decode on the same cached prompt prefix (the instructions every candidate of a fan-out or every
program of an agent shares), their KV rows in the pool are the same slots for the first ``P`` positions. Plain
decode attention reads those ``P`` positions once per sequence; at batch 100 over a 2.6k-token prefix that read is
most of the step. Here the prefix is attended once per *tile*: up to ``TILE_SEQS`` sequences of one group and all
query heads that share a KV head form the rows of one ``tl.dot`` against each K/V block, so the block is loaded
once for the whole tile (the same trick the grouped-query split uses across heads, now across sequences too).

Each (tile, kv head, slice) program writes, for every member row, a partial output (normalised) and its log2-sum-exp
into the decode scratch at slice index ``slice_offset + slice``; the sequences' own parts (positions ``P`` on) are
attended by the decode split kernel with ``starts = P``, and the decode merge kernel combines both sets of slices
(``decode_attention.decode_attention(..., prefix=...)`` runs all three). Tiles with length 0 return at once, so a
CUDA graph can be captured with a fixed, generous number of tiles.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from plait.engine.forward_batch import SHARED_PREFIX_TILE_SEQS as TILE_SEQS
from plait.engine.kernels.attention_block import attend_context, slice_length
from plait.engine.kernels.pdl import wait_for_previous_kernel

MAX_PREFIX_SLICES = 16
MIN_TOKENS_PER_PREFIX_SLICE = 256
PREFIX_LAUNCH = {"num_warps": 4, "num_stages": 2}


@dataclass
class PrefixTiles:
    """The step's shared-prefix work, as device tensors (int32).

    ``starts[i]``: where decode ``i``'s own part begins (its group's prefix length; 0 outside any group).
    ``tile_rows[t]``/``tile_lens[t]``: a req_to_token row holding tile ``t``'s prefix and the prefix length (0: an
    unused tile). ``tile_members[t]``: the tile's decode indices, ``-1`` padded to ``TILE_SEQS``.
    ``num_slices``: how many slices each prefix is cut into (an upper bound, fixed for a CUDA graph).
    """

    starts: torch.Tensor
    tile_rows: torch.Tensor
    tile_lens: torch.Tensor
    tile_members: torch.Tensor
    num_slices: int

    @property
    def num_tiles(self) -> int:
        return self.tile_rows.shape[0]


@triton.jit(do_not_specialize=["stride_ml_b", "stride_ml_h", "slice_offset", "num_slices"])
def _shared_prefix_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    table_ptr,
    tile_rows_ptr,
    tile_lens_ptr,
    tile_members_ptr,
    mid_o_ptr,
    mid_lse_ptr,
    scale_log2,
    stride_qt,
    stride_qh,
    stride_ks,
    stride_kh,
    stride_vs,
    stride_vh,
    stride_table,
    stride_mo_b,
    stride_mo_h,
    stride_mo_s,
    stride_ml_b,
    stride_ml_h,
    slice_offset,
    num_slices,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    TILE_SEQS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DOT_FP32: tl.constexpr,
    PRECISION: tl.constexpr,
    PV_FP32: tl.constexpr,
    USE_PDL: tl.constexpr = False,
):
    wait_for_previous_kernel(USE_PDL)
    tile = tl.program_id(0)
    kv_head = tl.program_id(1)
    part = tl.program_id(2)
    length = tl.load(tile_lens_ptr + tile)
    part_len = slice_length(length, num_slices, BLOCK_N)
    start = part * part_len
    if start >= length:  # also every unused tile (length 0)
        return
    end = tl.minimum(start + part_len, length)
    row = tl.load(tile_rows_ptr + tile).to(tl.int64)

    # Row r of the tile is member r // GROUP's query head kv_head * GROUP + r % GROUP.
    offs_m = tl.arange(0, BLOCK_M)
    local = offs_m // GROUP
    member = tl.load(tile_members_ptr + tile * TILE_SEQS + local, mask=local < TILE_SEQS, other=-1)
    valid = (local < TILE_SEQS) & (member >= 0)
    member = tl.where(valid, member, 0).to(tl.int64)
    heads = kv_head * GROUP + offs_m % GROUP
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    md_mask = valid[:, None] & d_mask[None, :]
    q_ptrs = q_ptr + member[:, None] * stride_qt + heads[:, None] * stride_qh + offs_d[None, :]
    q = tl.load(q_ptrs, mask=md_mask, other=0.0)

    table_row = table_ptr + row * stride_table
    k_head = k_ptr + kv_head * stride_kh
    v_head = v_ptr + kv_head * stride_vh
    out, lse = attend_context(
        q, table_row, k_head, v_head, start, end, offs_d, d_mask, stride_ks, stride_vs, scale_log2,
        BLOCK_M, BLOCK_D, BLOCK_N, DOT_FP32, PRECISION, PV_FP32,
    )  # fmt: skip
    slot = slice_offset + part
    mid_ptrs = mid_o_ptr + member[:, None] * stride_mo_b + heads[:, None] * stride_mo_h + slot * stride_mo_s
    tl.store(mid_ptrs + offs_d[None, :], out, mask=md_mask)
    tl.store(mid_lse_ptr + member * stride_ml_b + heads * stride_ml_h + slot, lse, mask=valid)


@functools.cache
def _multiprocessors(device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


def choose_prefix_slices(num_tiles: int, num_kv_heads: int, longest_prefix: int, device: torch.device) -> int:
    """Slices per shared prefix: enough programs for one per multiprocessor, none shorter than
    ``MIN_TOKENS_PER_PREFIX_SLICE`` tokens, a power of two (so the merge kernel compiles few variants). Fewer
    slices leave multiprocessors idle; more cost the merge more (``bench/gpu/shared_prefix_decode.py --sweep``;
    docs/decisions.md, 2026-11-22: shared-prefix decode attention)."""
    programs = max(1, num_tiles * num_kv_heads)
    wanted = triton.cdiv(_multiprocessors(device), programs)
    by_length = triton.cdiv(max(1, longest_prefix), MIN_TOKENS_PER_PREFIX_SLICE)
    slices = max(1, min(wanted, by_length, MAX_PREFIX_SLICES))
    return triton.next_power_of_2(slices)


def shared_prefix_partials(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    req_to_token: torch.Tensor,
    tiles: PrefixTiles,
    mid_o: torch.Tensor,
    mid_lse: torch.Tensor,
    scale_log2: float,
    slice_offset: int,
    block_n: int,
    dot: dict[str, object],
    launch: dict[str, object],
) -> None:
    """Write every tile member's partial attention over its prefix into slices ``slice_offset ...`` of the decode
    scratch (``mid_o``: ``[batch, heads, slices, head_dim]``, ``mid_lse``: ``[batch, heads, slices]``)."""
    num_heads, head_dim = q.shape[1], q.shape[2]
    num_kv_heads = k_cache.shape[1]
    group = num_heads // num_kv_heads
    if tiles.tile_members.shape[-1] != TILE_SEQS:
        raise ValueError(f"tile_members rows hold {tiles.tile_members.shape[-1]} sequences, expected {TILE_SEQS}")
    rows = max(16, triton.next_power_of_2(TILE_SEQS * group))
    _shared_prefix_kernel[(tiles.num_tiles, num_kv_heads, tiles.num_slices)](
        q,
        k_cache,
        v_cache,
        req_to_token,
        tiles.tile_rows,
        tiles.tile_lens,
        tiles.tile_members,
        mid_o,
        mid_lse,
        scale_log2,
        q.stride(0),
        q.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        v_cache.stride(0),
        v_cache.stride(1),
        req_to_token.stride(0),
        *mid_o.stride()[:3],
        *mid_lse.stride()[:2],
        slice_offset,
        tiles.num_slices,
        GROUP=group,
        HEAD_DIM=head_dim,
        TILE_SEQS=TILE_SEQS,
        BLOCK_M=rows,
        BLOCK_D=triton.next_power_of_2(max(head_dim, 16)),
        BLOCK_N=block_n,
        **dot,
        **({**launch, "num_warps": 8} if launch and rows > 64 else launch),
    )


def layout_tiles(
    groups: list[tuple[int, list[int]]],
    rows: list[int],
    num_decode: int,
    num_tiles: int | None = None,
    per_tile: int = TILE_SEQS,
) -> tuple[list[int], list[int], list[int], list[int]]:
    """Host-side tile layout of a step's groups ``(shared length, member decode indices)``; ``rows[i]`` is decode
    ``i``'s req_to_token row. Returns flat int lists ``(starts, tile_rows, tile_lens, tile_members)``, padded to
    ``num_tiles`` tiles when given (a CUDA graph's fixed grid; unused tiles have length 0 and no members)."""
    starts = [0] * num_decode
    tile_rows: list[int] = []
    tile_lens: list[int] = []
    members: list[int] = []
    for shared, group in groups:
        for first in range(0, len(group), per_tile):
            chunk = group[first : first + per_tile]
            tile_rows.append(rows[group[0]])
            tile_lens.append(shared)
            members.extend(chunk)
            members.extend([-1] * (per_tile - len(chunk)))
        for index in group:
            starts[index] = shared
    if num_tiles is not None:
        if len(tile_rows) > num_tiles:
            raise ValueError(f"{len(tile_rows)} shared-prefix tiles exceed the {num_tiles} the graph holds")
        pad = num_tiles - len(tile_rows)
        tile_rows.extend([0] * pad)
        tile_lens.extend([0] * pad)
        members.extend([-1] * (pad * per_tile))
    return starts, tile_rows, tile_lens, members
