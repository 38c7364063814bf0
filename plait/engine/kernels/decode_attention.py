"""Paged decode attention ("flash-decoding"): one query token per sequence against its KV in the pool.

Keys and values are gathered through ``req_to_token[row, position] -> slot``. The work is split twice:

* **by KV head** (grouped-query attention): one program serves all query heads that share a KV head, so each
  K/V block is loaded once for the whole group. The group is padded to ``BLOCK_H >= 16`` rows for ``tl.dot``.
* **along the context** (split-K): stage 1 gives each of ``num_splits`` programs a contiguous slice of the
  sequence and writes a partial output (normalised) and its log-sum-exp; stage 2 merges the slices. Batch 1 with a
  long context then still fills the GPU.

Grids: stage 1 ``(batch, kv_heads, num_splits)``, stage 2 ``(batch, heads)``. ``num_splits`` is an upper bound
chosen on the host from the batch size and the longest context (``choose_num_kv_splits``); each sequence uses as
many slices as its own length needs (slices are whole ``BLOCK_N`` blocks), the rest return at once. Nothing on the
host depends on tensor values, so the launches can be captured in a CUDA graph (capture with the graph's maximum
context as ``max_len``). With a single split, stage 1 writes the final output and stage 2 is skipped.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from plait.engine.kernels.attention_block import LOG2E, attend_context, dot_options, slice_length
from plait.engine.kernels.pdl import launch_options, use_pdl, wait_for_previous_kernel

MAX_KV_SPLITS = 64
MIN_TOKENS_PER_SPLIT = 128
# Stage-1 programs wanted per multiprocessor: two two-warp programs per SM keep the KV read near the bandwidth from
# batch 64 up; more programs split the context where the batch alone fills the device (see docs/decisions.md,
# 2026-11-22: decode attention launch configuration; bench/gpu/decode_variants.py).
PROGRAMS_PER_SM = 2
BLOCK_N = 64
SPLIT_LAUNCH = {"num_warps": 2, "num_stages": 3}
MERGE_LAUNCH = {"num_warps": 4, "num_stages": 2}


# The split count and the strides derived from it vary from step to step: not specialised on (one compiled variant
# per BLOCK_S bucket instead of one per value class met in the middle of serving).
@triton.jit(do_not_specialize=["stride_ml_b", "stride_ml_h", "num_splits"])
def _decode_split_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    table_ptr,
    rows_ptr,
    lens_ptr,
    mid_o_ptr,
    mid_lse_ptr,
    out_ptr,
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
    stride_ot,
    stride_oh,
    num_splits,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DIRECT: tl.constexpr,
    DOT_FP32: tl.constexpr,
    PRECISION: tl.constexpr,
    PV_FP32: tl.constexpr,
    USE_PDL: tl.constexpr = False,
):
    wait_for_previous_kernel(USE_PDL)
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(lens_ptr + seq)
    # Slices are whole blocks; the same formula in stage 2 tells how many slices a sequence has.
    split_len = slice_length(seq_len, num_splits, BLOCK_N)
    start = split * split_len
    if start >= seq_len:
        return
    end = tl.minimum(start + split_len, seq_len)
    row = tl.load(rows_ptr + seq).to(tl.int64)

    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D)
    heads = kv_head * GROUP + offs_h
    h_mask = offs_h < GROUP
    d_mask = offs_d < HEAD_DIM
    hd_mask = h_mask[:, None] & d_mask[None, :]
    q = tl.load(q_ptr + seq * stride_qt + heads[:, None] * stride_qh + offs_d[None, :], mask=hd_mask, other=0.0)

    table_row = table_ptr + row * stride_table
    k_head = k_ptr + kv_head * stride_kh
    v_head = v_ptr + kv_head * stride_vh
    part, lse = attend_context(
        q, table_row, k_head, v_head, start, end, offs_d, d_mask, stride_ks, stride_vs, scale_log2,
        BLOCK_H, BLOCK_D, BLOCK_N, DOT_FP32, PRECISION, PV_FP32,
    )  # fmt: skip
    if DIRECT:
        out_ptrs = out_ptr + seq * stride_ot + heads[:, None] * stride_oh + offs_d[None, :]
        tl.store(out_ptrs, part.to(out_ptr.dtype.element_ty), mask=hd_mask)
    else:
        mid_ptrs = mid_o_ptr + seq * stride_mo_b + heads[:, None] * stride_mo_h + split * stride_mo_s
        tl.store(mid_ptrs + offs_d[None, :], part, mask=hd_mask)
        lse_ptrs = mid_lse_ptr + seq * stride_ml_b + heads * stride_ml_h + split
        tl.store(lse_ptrs, lse, mask=h_mask)


@triton.jit(do_not_specialize=["stride_ml_b", "stride_ml_h", "num_splits"])
def _decode_merge_kernel(
    mid_o_ptr,
    mid_lse_ptr,
    lens_ptr,
    out_ptr,
    stride_mo_b,
    stride_mo_h,
    stride_mo_s,
    stride_ml_b,
    stride_ml_h,
    stride_ot,
    stride_oh,
    num_splits,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_N: tl.constexpr,
    USE_PDL: tl.constexpr = False,
):
    wait_for_previous_kernel(USE_PDL)
    seq = tl.program_id(0)
    head = tl.program_id(1)
    seq_len = tl.load(lens_ptr + seq)
    split_len = slice_length(seq_len, num_splits, BLOCK_N)
    used = tl.cdiv(seq_len, split_len)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    s_mask = offs_s < used
    d_mask = offs_d < HEAD_DIM
    lse = tl.load(mid_lse_ptr + seq * stride_ml_b + head * stride_ml_h + offs_s, mask=s_mask, other=float("-inf"))
    weights = tl.where(s_mask, tl.exp2(lse - tl.max(lse, 0)), 0.0)
    mid_ptrs = mid_o_ptr + seq * stride_mo_b + head * stride_mo_h + offs_s[:, None] * stride_mo_s + offs_d[None, :]
    parts = tl.load(mid_ptrs, mask=s_mask[:, None] & d_mask[None, :], other=0.0)
    # A zero-length sequence (a padded batch entry) gets zeros rather than 0/0.
    merged = tl.sum(weights[:, None] * parts, 0) / tl.maximum(tl.sum(weights, 0), 1e-30)
    out_ptrs = out_ptr + seq * stride_ot + head * stride_oh + offs_d
    tl.store(out_ptrs, merged.to(out_ptr.dtype.element_ty), mask=d_mask)


@functools.cache
def _multiprocessors(device: torch.device) -> int:
    if device.type != "cuda":
        return 1  # the interpreter runs programs one after another: fewer, longer ones are cheaper
    return torch.cuda.get_device_properties(device).multi_processor_count


def choose_num_kv_splits(batch: int, num_kv_heads: int, max_len: int, device: torch.device) -> int:
    """Slices per sequence for a decode step of ``batch`` sequences whose longest context is ``max_len``.

    Enough stage-1 programs to give every multiprocessor ``PROGRAMS_PER_SM`` of them, but no slice shorter than
    ``MIN_TOKENS_PER_SPLIT`` tokens and at most ``MAX_KV_SPLITS`` slices. For a CUDA graph, pass the graph's
    capacity as ``max_len`` so the grid is fixed.
    """
    programs = max(1, batch * num_kv_heads)
    wanted = triton.cdiv(PROGRAMS_PER_SM * _multiprocessors(device), programs)
    by_length = triton.cdiv(max(1, max_len), MIN_TOKENS_PER_SPLIT)
    return max(1, min(wanted, by_length, MAX_KV_SPLITS))


def alloc_decode_scratch(
    batch: int, num_heads: int, num_splits: int, head_dim: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage-1 outputs: partial outputs ``[batch, heads, splits, head_dim]`` and their log2-sum-exp."""
    mid_o = torch.empty(batch, num_heads, num_splits, head_dim, dtype=torch.float32, device=device)
    mid_lse = torch.empty(batch, num_heads, num_splits, dtype=torch.float32, device=device)
    return mid_o, mid_lse


def _launch_config(config: dict[str, int], device: torch.device) -> dict[str, object]:
    return {**config, "USE_PDL": use_pdl(device), **launch_options(device)} if device.type == "cuda" else {}


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    req_to_token: torch.Tensor,
    rows: torch.Tensor,
    lens: torch.Tensor,
    out: torch.Tensor,
    scale: float,
    num_splits: int,
    scratch: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Attention of one new token per sequence over its first ``lens[i]`` positions of ``req_to_token[rows[i]]``.

    ``q``/``out``: ``[batch, heads, head_dim]``; ``k_cache``/``v_cache``: ``[slots, kv_heads, head_dim]``;
    ``rows``/``lens``: ``[batch]`` int tensors on the device (every length >= 1, the new token included).
    ``scratch``: buffers from ``alloc_decode_scratch`` with at least ``batch`` rows and ``num_splits`` slices
    (allocated here when absent). Returns ``out``.
    """
    batch, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[1]
    if batch == 0:
        return out
    if num_heads % num_kv_heads:
        raise ValueError(f"{num_heads} query heads do not group evenly over {num_kv_heads} KV heads")
    if q.stride(2) != 1 or out.stride(2) != 1 or k_cache.stride(2) != 1 or v_cache.stride(2) != 1:
        raise ValueError("the head dimension of q, out and the KV cache must be contiguous")
    group = num_heads // num_kv_heads
    block_d = triton.next_power_of_2(max(head_dim, 16))
    common = dict(
        GROUP=group,
        HEAD_DIM=head_dim,
        BLOCK_H=max(16, triton.next_power_of_2(group)),
        BLOCK_D=block_d,
        BLOCK_N=BLOCK_N,
        **dot_options(q.dtype, q.device),
    )
    direct = num_splits == 1
    if direct:
        mid_o = mid_lse = out  # unused by the kernel
        mo_strides, ml_strides = (0, 0, 0), (0, 0)
    else:
        mid_o, mid_lse = scratch or alloc_decode_scratch(batch, num_heads, num_splits, head_dim, q.device)
        if mid_o.shape[2] < num_splits:
            raise ValueError(f"decode scratch holds {mid_o.shape[2]} slices, the step needs {num_splits}")
        mo_strides, ml_strides = mid_o.stride()[:3], mid_lse.stride()[:2]
    _decode_split_kernel[(batch, num_kv_heads, num_splits)](
        q,
        k_cache,
        v_cache,
        req_to_token,
        rows,
        lens,
        mid_o,
        mid_lse,
        out,
        scale * LOG2E,
        q.stride(0),
        q.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        v_cache.stride(0),
        v_cache.stride(1),
        req_to_token.stride(0),
        *mo_strides,
        *ml_strides,
        out.stride(0),
        out.stride(1),
        num_splits,
        DIRECT=direct,
        **common,
        **_launch_config(SPLIT_LAUNCH, q.device),
    )
    if not direct:
        _decode_merge_kernel[(batch, num_heads)](
            mid_o,
            mid_lse,
            lens,
            out,
            *mo_strides,
            *ml_strides,
            out.stride(0),
            out.stride(1),
            num_splits,
            HEAD_DIM=head_dim,
            BLOCK_D=block_d,
            BLOCK_S=triton.next_power_of_2(num_splits),
            BLOCK_N=BLOCK_N,
            **_launch_config(MERGE_LAUNCH, q.device),
        )
    return out
