"""Extend (prefill) attention over the paged KV cache, for a batch of sequences of different lengths.

Sequence ``i`` has ``prefix_lens[i]`` cached tokens and ``new_lens[i]`` new ones whose queries sit contiguously in
``q`` from row ``token_starts[i]``. The backend writes the new K/V into the pool before the kernel runs, so all keys
are read through ``req_to_token`` (one code path; the new tokens' slots are usually contiguous, so the gather costs
little). New token ``j`` attends to the whole prefix and to new tokens ``0..j``.

Grid: ``(heads, sequences, cdiv(max_new_len, BLOCK_M))``; one program owns ``BLOCK_M`` queries of one head. Its
keys come in two runs: positions every query of the block may see (the prefix and the new tokens before the block)
with only a bounds mask, then the diagonal blocks with the causal mask. Programs past a sequence's end return at
once. Query heads of a KV head re-read the same K/V blocks, which then come from L2: prefill is compute-bound.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from plait.engine.kernels.attention_block import LOG2E, attend_block, dot_options


@triton.jit
def _extend_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    out_ptr,
    table_ptr,
    rows_ptr,
    prefix_ptr,
    new_ptr,
    start_ptr,
    scale_log2,
    stride_qt,
    stride_qh,
    stride_ks,
    stride_kh,
    stride_vs,
    stride_vh,
    stride_ot,
    stride_oh,
    stride_table,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DOT_FP32: tl.constexpr,
    PRECISION: tl.constexpr,
    PV_FP32: tl.constexpr,
):
    head = tl.program_id(0)
    seq = tl.program_id(1)
    # The last query blocks have the most keys: start them first so they do not end up as the tail.
    m_start = (tl.num_programs(2) - 1 - tl.program_id(2)) * BLOCK_M
    new_len = tl.load(new_ptr + seq)
    if m_start >= new_len:
        return
    prefix_len = tl.load(prefix_ptr + seq)
    token_start = tl.load(start_ptr + seq).to(tl.int64)
    row = tl.load(rows_ptr + seq).to(tl.int64)
    kv_head = head // GROUP

    offs_m = m_start + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_mask = offs_m < new_len
    d_mask = offs_d < HEAD_DIM
    q_ptrs = q_ptr + (token_start + offs_m[:, None]) * stride_qt + head * stride_qh + offs_d[None, :]
    q = tl.load(q_ptrs, mask=m_mask[:, None] & d_mask[None, :], other=0.0)
    q_pos = prefix_len + offs_m  # each query's position in its sequence

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    table_row = table_ptr + row * stride_table
    k_head = k_ptr + kv_head * stride_kh
    v_head = v_ptr + kv_head * stride_vh

    # Keys before the block's first query: visible to every query of the block.
    visible_end = prefix_len + m_start
    for block_start in range(0, visible_end, BLOCK_N):
        offs_n = block_start + tl.arange(0, BLOCK_N)
        n_mask = offs_n < visible_end
        slots = tl.load(table_row + offs_n, mask=n_mask, other=0).to(tl.int64)
        k_ptrs = k_head + slots[None, :] * stride_ks + offs_d[:, None]
        v_ptrs = v_head + slots[:, None] * stride_vs + offs_d[None, :]
        m_i, l_i, acc = attend_block(
            q, k_ptrs, v_ptrs, n_mask, n_mask[None, :], d_mask, m_i, l_i, acc, scale_log2, DOT_FP32, PRECISION, PV_FP32
        )
    # The diagonal: keys from the block's first query to its last, under the causal mask.
    kv_end = prefix_len + tl.minimum(new_len, m_start + BLOCK_M)
    for block_start in range(visible_end, kv_end, BLOCK_N):
        offs_n = block_start + tl.arange(0, BLOCK_N)
        n_mask = offs_n < kv_end
        slots = tl.load(table_row + offs_n, mask=n_mask, other=0).to(tl.int64)
        k_ptrs = k_head + slots[None, :] * stride_ks + offs_d[:, None]
        v_ptrs = v_head + slots[:, None] * stride_vs + offs_d[None, :]
        causal = n_mask[None, :] & (offs_n[None, :] <= q_pos[:, None])
        m_i, l_i, acc = attend_block(
            q, k_ptrs, v_ptrs, n_mask, causal, d_mask, m_i, l_i, acc, scale_log2, DOT_FP32, PRECISION, PV_FP32
        )

    out = acc / l_i[:, None]
    out_ptrs = out_ptr + (token_start + offs_m[:, None]) * stride_ot + head * stride_oh + offs_d[None, :]
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=m_mask[:, None] & d_mask[None, :])


def _block_config(head_dim: int, dtype: torch.dtype, device: torch.device) -> dict[str, int]:
    if device.type != "cuda":
        return {"BLOCK_M": 32, "BLOCK_N": 64}
    # 128-query tiles for 16-bit inputs on the data-centre parts (A100, H100/H200), whose shared memory holds them
    # (about 48 KB at head dim 128); float32 tiles are twice the size and stay at 64.
    big_smem = torch.cuda.get_device_capability(device) in ((8, 0), (9, 0))
    if head_dim > 64 and dtype != torch.float32 and big_smem:
        return {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 2}
    return {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2}


def extend_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    req_to_token: torch.Tensor,
    rows: torch.Tensor,
    prefix_lens: torch.Tensor,
    new_lens: torch.Tensor,
    token_starts: torch.Tensor,
    out: torch.Tensor,
    scale: float,
    max_new_len: int,
) -> torch.Tensor:
    """Causal attention of each sequence's new tokens over its prefix and themselves; writes rows of ``out``.

    ``q``/``out``: ``[tokens, heads, head_dim]`` (only the rows named by ``token_starts``/``new_lens`` are
    touched); ``k_cache``/``v_cache``: ``[slots, kv_heads, head_dim]`` already holding the new tokens' K/V;
    ``rows``, ``prefix_lens``, ``new_lens``, ``token_starts``: ``[sequences]`` int tensors on the device;
    ``max_new_len``: at least the largest ``new_lens`` (it sizes the grid). Returns ``out``.
    """
    num_seqs = rows.shape[0]
    _, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[1]
    if num_seqs == 0 or max_new_len == 0:
        return out
    if num_heads % num_kv_heads:
        raise ValueError(f"{num_heads} query heads do not group evenly over {num_kv_heads} KV heads")
    if q.stride(2) != 1 or out.stride(2) != 1 or k_cache.stride(2) != 1 or v_cache.stride(2) != 1:
        raise ValueError("the head dimension of q, out and the KV cache must be contiguous")
    config = _block_config(head_dim, q.dtype, q.device)
    # Heads vary fastest, so the query heads of one KV head run side by side and share its K/V blocks in L2.
    grid = (num_heads, num_seqs, triton.cdiv(max_new_len, config["BLOCK_M"]))
    _extend_kernel[grid](
        q,
        k_cache,
        v_cache,
        out,
        req_to_token,
        rows,
        prefix_lens,
        new_lens,
        token_starts,
        scale * LOG2E,
        q.stride(0),
        q.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        v_cache.stride(0),
        v_cache.stride(1),
        out.stride(0),
        out.stride(1),
        req_to_token.stride(0),
        GROUP=num_heads // num_kv_heads,
        HEAD_DIM=head_dim,
        BLOCK_D=triton.next_power_of_2(max(head_dim, 16)),
        **dot_options(q.dtype, q.device),
        **config,
    )
    return out
