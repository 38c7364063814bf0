"""Extend (prefill) attention for a batch of sequences of different lengths: cached prefix through the page table,
new tokens straight from the step's own K/V.

Sequence ``i`` has ``prefix_lens[i]`` cached tokens and ``new_lens[i]`` new ones whose queries sit contiguously in
``q`` from row ``token_starts[i]``; the new tokens' keys and values sit in the same rows of ``k_new``/``v_new``
(the projections of this step, already rotated). New token ``j`` attends to the whole prefix and to new tokens
``0..j``.

Grid: ``(heads, sequences, cdiv(max_new_len, BLOCK_M))``; one program owns ``BLOCK_M`` queries of one head. Its
keys come in three runs, each with only the masking it needs:

1. the cached prefix, gathered through ``req_to_token`` (slots are not contiguous in general); whole blocks
   unmasked, the last partial block masked by length;
2. the new tokens before the query block, read as contiguous tiles of ``k_new``/``v_new`` with no mask at all (every
   query of the block sees them, and ``BLOCK_M`` is a multiple of ``BLOCK_N`` so the run is whole blocks): this is
   where a long prompt spends its time, and contiguous unmasked tiles are what lets the compiler pipeline the loads
   and keep the tensor cores fed;
3. the diagonal blocks under the causal mask.

Programs past a sequence's end return at once; the last query blocks (most keys) start first so they do not end up
as the tail. Query heads of a KV head run side by side and re-read the same K/V tiles from L2: prefill is
compute-bound. The softmax state is the usual running ``(max, sum, acc)`` in the log2 domain, with ``P @ V``
accumulated into ``acc`` by the matrix product itself.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from plait.engine.kernels.attention_block import LOG2E, dot_options


@triton.jit
def _dot_acc(a, b, acc, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr):
    """``acc + a @ b`` in float32 (operands upcast under the interpreter, as ``attention_block.block_dot``)."""
    if DOT_FP32:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=PRECISION)


@triton.jit
def _fold(
    q,
    k,
    v,
    m_i,
    l_i,
    acc,
    allowed,
    scale_log2,
    MASKED: tl.constexpr,
    DOT_FP32: tl.constexpr,
    PRECISION: tl.constexpr,
    PV_FP32: tl.constexpr,
):
    """Fold keys ``k`` ``[N, D]`` and values ``v`` ``[N, D]`` into the running state of queries ``q`` ``[M, D]``.
    With ``MASKED``, ``allowed`` (broadcastable to ``[M, N]``) names the pairs that may attend; every row must be
    allowed at least one key of the first block it folds, so its maximum never stays ``-inf``."""
    scores = _dot_acc(q, tl.trans(k), tl.zeros([q.shape[0], k.shape[0]], tl.float32), DOT_FP32, PRECISION)
    if MASKED:
        scores = tl.where(allowed, scores, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(scores, 1) * scale_log2)
    p = tl.exp2(scores * scale_log2 - m_new[:, None])
    alpha = tl.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    if PV_FP32:  # the probabilities stay float32 (TF32 products on a GPU) instead of being rounded to bfloat16
        acc = _dot_acc(p, v.to(tl.float32), acc, DOT_FP32, PRECISION)
    else:
        acc = _dot_acc(p.to(v.dtype), v, acc, DOT_FP32, PRECISION)
    return m_new, l_i, acc


@triton.jit
def _load_rows(ptrs, d_mask, EVEN_D: tl.constexpr):
    """A whole tile of rows (no row mask): masked along the head dimension only when it is padded."""
    if EVEN_D:
        return tl.load(ptrs)
    return tl.load(ptrs, mask=d_mask[None, :], other=0.0)


@triton.jit
def _extend_kernel(
    q_ptr,
    k_new_ptr,
    v_new_ptr,
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
    stride_knt,
    stride_knh,
    stride_vnt,
    stride_vnh,
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
    WARP_SPECIALIZE: tl.constexpr = False,
):
    head = tl.program_id(0)
    seq = tl.program_id(1)
    m_start = (tl.num_programs(2) - 1 - tl.program_id(2)) * BLOCK_M
    new_len = tl.load(new_ptr + seq)
    if m_start >= new_len:
        return
    prefix_len = tl.load(prefix_ptr + seq)
    token_start = tl.load(start_ptr + seq).to(tl.int64)
    row = tl.load(rows_ptr + seq).to(tl.int64)
    kv_head = head // GROUP

    offs_m = m_start + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_mask = offs_m < new_len
    d_mask = offs_d < HEAD_DIM
    q_ptrs = q_ptr + (token_start + offs_m[:, None]) * stride_qt + head * stride_qh + offs_d[None, :]
    q = tl.load(q_ptrs, mask=m_mask[:, None] & d_mask[None, :], other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    # 1. The cached prefix through the page table: whole blocks, then the partial last one under a length mask.
    table_row = table_ptr + row * stride_table
    k_head = k_ptr + kv_head * stride_kh + offs_d[None, :]
    v_head = v_ptr + kv_head * stride_vh + offs_d[None, :]
    full_end = prefix_len - prefix_len % BLOCK_N
    for block_start in range(0, full_end, BLOCK_N):
        slots = tl.load(table_row + block_start + offs_n).to(tl.int64)
        k = _load_rows(k_head + slots[:, None] * stride_ks, d_mask, BLOCK_D == HEAD_DIM)
        v = _load_rows(v_head + slots[:, None] * stride_vs, d_mask, BLOCK_D == HEAD_DIM)
        m_i, l_i, acc = _fold(q, k, v, m_i, l_i, acc, None, scale_log2, False, DOT_FP32, PRECISION, PV_FP32)
    if full_end < prefix_len:
        n_mask = full_end + offs_n < prefix_len
        slots = tl.load(table_row + full_end + offs_n, mask=n_mask, other=0).to(tl.int64)
        kv_mask = n_mask[:, None] & d_mask[None, :]
        k = tl.load(k_head + slots[:, None] * stride_ks, mask=kv_mask, other=0.0)
        v = tl.load(v_head + slots[:, None] * stride_vs, mask=kv_mask, other=0.0)
        m_i, l_i, acc = _fold(q, k, v, m_i, l_i, acc, n_mask[None, :], scale_log2, True, DOT_FP32, PRECISION, PV_FP32)

    # 2. New tokens before the query block: contiguous, whole, visible to every query of the block.
    k_ptrs = k_new_ptr + (token_start + offs_n[:, None]) * stride_knt + kv_head * stride_knh + offs_d[None, :]
    v_ptrs = v_new_ptr + (token_start + offs_n[:, None]) * stride_vnt + kv_head * stride_vnh + offs_d[None, :]
    for _ in tl.range(0, m_start, BLOCK_N, warp_specialize=WARP_SPECIALIZE):
        k = _load_rows(k_ptrs, d_mask, BLOCK_D == HEAD_DIM)
        v = _load_rows(v_ptrs, d_mask, BLOCK_D == HEAD_DIM)
        m_i, l_i, acc = _fold(q, k, v, m_i, l_i, acc, None, scale_log2, False, DOT_FP32, PRECISION, PV_FP32)
        k_ptrs += BLOCK_N * stride_knt
        v_ptrs += BLOCK_N * stride_vnt

    # 3. The diagonal: from the block's first query to its last, under the causal mask.
    diagonal_end = tl.minimum(new_len, m_start + BLOCK_M)
    for block_start in range(m_start, diagonal_end, BLOCK_N):
        n = block_start + offs_n
        kv_mask = (n < new_len)[:, None] & d_mask[None, :]
        k = tl.load(k_ptrs, mask=kv_mask, other=0.0)
        v = tl.load(v_ptrs, mask=kv_mask, other=0.0)
        causal = (n[None, :] <= offs_m[:, None]) & (n < new_len)[None, :]
        m_i, l_i, acc = _fold(q, k, v, m_i, l_i, acc, causal, scale_log2, True, DOT_FP32, PRECISION, PV_FP32)
        k_ptrs += BLOCK_N * stride_knt
        v_ptrs += BLOCK_N * stride_vnt

    out = acc / l_i[:, None]
    out_ptrs = out_ptr + (token_start + offs_m[:, None]) * stride_ot + head * stride_oh + offs_d[None, :]
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=m_mask[:, None] & d_mask[None, :])


def block_config(head_dim: int, dtype: torch.dtype, device: torch.device) -> dict[str, Any]:
    """Tile sizes, warps and pipeline depth for ``extend_attention`` on ``device`` (``BLOCK_M`` is a multiple of
    ``BLOCK_N``, which the unmasked run of new tokens relies on)."""
    if device.type != "cuda":
        return {"BLOCK_M": 32, "BLOCK_N": 16}
    # 128-query tiles for 16-bit inputs on the data-centre parts (A100, H100/H200), whose shared memory holds them
    # (about 48 KB at head dim 128); float32 tiles are twice the size and stay at 64.
    big_smem = torch.cuda.get_device_capability(device) in ((8, 0), (9, 0))
    if head_dim > 64 and dtype != torch.float32 and big_smem:
        return {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 2}
    return {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2}


def extend_attention(
    q: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
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
    config: dict[str, Any] | None = None,
) -> torch.Tensor:
    """Causal attention of each sequence's new tokens over its prefix and themselves; writes rows of ``out``.

    ``q``/``out``: ``[tokens, heads, head_dim]`` (only the rows named by ``token_starts``/``new_lens`` are
    touched); ``k_new``/``v_new``: ``[tokens, kv_heads, head_dim]``, the new tokens' keys and values in the rows of
    their queries; ``k_cache``/``v_cache``: ``[slots, kv_heads, head_dim]`` holding each prefix's K/V at the slots
    ``req_to_token[rows[i], :prefix_lens[i]]``; ``rows``, ``prefix_lens``, ``new_lens``, ``token_starts``:
    ``[sequences]`` int tensors on the device; ``max_new_len``: at least the largest ``new_lens`` (it sizes the
    grid); ``config``: a ``block_config``-shaped override (benchmarks). Returns ``out``.
    """
    num_seqs = rows.shape[0]
    _, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[1]
    if num_seqs == 0 or max_new_len == 0:
        return out
    if num_heads % num_kv_heads:
        raise ValueError(f"{num_heads} query heads do not group evenly over {num_kv_heads} KV heads")
    if k_new.shape[1:] != k_cache.shape[1:] or v_new.shape[1:] != v_cache.shape[1:]:
        raise ValueError("the new tokens' K/V must have the cache's KV heads and head dimension")
    if any(t.stride(2) != 1 for t in (q, out, k_new, v_new, k_cache, v_cache)):
        raise ValueError("the head dimension of q, out, the new K/V and the KV cache must be contiguous")
    config = config or block_config(head_dim, q.dtype, q.device)
    if config["BLOCK_M"] % config["BLOCK_N"]:
        raise ValueError(f"BLOCK_M {config['BLOCK_M']} must be a multiple of BLOCK_N {config['BLOCK_N']}")
    # Heads vary fastest, so the query heads of one KV head run side by side and share its K/V tiles in L2.
    grid = (num_heads, num_seqs, triton.cdiv(max_new_len, config["BLOCK_M"]))
    _extend_kernel[grid](
        q,
        k_new,
        v_new,
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
        k_new.stride(0),
        k_new.stride(1),
        v_new.stride(0),
        v_new.stride(1),
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
