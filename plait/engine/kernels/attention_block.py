"""The inner step shared by the attention kernels: one block of keys folded into a running softmax.

Scores live in the log2 domain (``scale_log2 = scale * log2(e)``) so the exponentials are ``exp2``. The running
state per query row is ``(m, l, acc)``: the largest score seen, the sum of ``exp2(score - m)`` and the matching
weighted sum of values, all float32.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@triton.jit
def block_dot(a, b, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr):
    """``a @ b`` accumulated in float32. ``DOT_FP32`` upcasts the operands first: Triton's interpreter multiplies
    bfloat16 operands as raw 16-bit integers, so CPU runs compute the products in float32 instead."""
    if DOT_FP32:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def attend_block(
    q,
    k_ptrs,
    v_ptrs,
    kv_mask,
    score_mask,
    d_mask,
    m_i,
    l_i,
    acc,
    scale_log2,
    DOT_FP32: tl.constexpr,
    PRECISION: tl.constexpr,
    PV_FP32: tl.constexpr,
):
    """Fold one key block into ``(m_i, l_i, acc)``.

    ``q``: ``[M, D]``; ``k_ptrs``: ``[D, N]`` (keys transposed); ``v_ptrs``: ``[N, D]``; ``kv_mask``: ``[N]`` keys
    that exist; ``score_mask``: broadcastable to ``[M, N]``, the (query, key) pairs allowed to attend. Every row
    must have at least one allowed key in the first block it sees, so ``m_i`` never stays ``-inf``.
    """
    k = tl.load(k_ptrs, mask=d_mask[:, None] & kv_mask[None, :], other=0.0)
    scores = block_dot(q, k.to(q.dtype), DOT_FP32, PRECISION) * scale_log2
    scores = tl.where(score_mask, scores, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(scores, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(scores - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    v = tl.load(v_ptrs, mask=kv_mask[:, None] & d_mask[None, :], other=0.0)
    if PV_FP32:  # the probabilities stay float32 (TF32 products on a GPU) instead of being rounded to bfloat16
        pv = block_dot(p, v.to(tl.float32), DOT_FP32, PRECISION)
    else:
        pv = block_dot(p.to(v.dtype), v, DOT_FP32, PRECISION)
    acc = acc * alpha[:, None] + pv
    return m_new, l_i, acc


@triton.jit
def attend_context(
    q,
    table_row,
    k_head,
    v_head,
    start,
    end,
    offs_d,
    d_mask,
    stride_ks,
    stride_vs,
    scale_log2,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DOT_FP32: tl.constexpr,
    PRECISION: tl.constexpr,
    PV_FP32: tl.constexpr,
):
    """Attention of the ``[BLOCK_M, BLOCK_D]`` queries ``q`` over positions ``start .. end - 1`` of one
    req_to_token row (``table_row`` points at it) for one KV head: every query sees every position. Returns the
    normalised output ``[BLOCK_M, BLOCK_D]`` (float32) and its log2-sum-exp ``[BLOCK_M]``."""
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for block_start in range(start, end, BLOCK_N):
        offs_n = block_start + tl.arange(0, BLOCK_N)
        n_mask = offs_n < end
        slots = tl.load(table_row + offs_n, mask=n_mask, other=0).to(tl.int64)
        k_ptrs = k_head + slots[None, :] * stride_ks + offs_d[:, None]
        v_ptrs = v_head + slots[:, None] * stride_vs + offs_d[None, :]
        m_i, l_i, acc = attend_block(
            q, k_ptrs, v_ptrs, n_mask, n_mask[None, :], d_mask, m_i, l_i, acc, scale_log2, DOT_FP32, PRECISION, PV_FP32
        )
    return acc / l_i[:, None], m_i + tl.log2(l_i)


@triton.jit
def slice_length(length, num_slices, BLOCK_N: tl.constexpr):
    """Tokens per slice when ``length`` tokens are cut into at most ``num_slices`` slices of whole ``BLOCK_N``
    blocks (at least one block). Every kernel that writes or merges slices of a context uses this one formula."""
    return tl.maximum(tl.cdiv(tl.cdiv(length, num_slices), BLOCK_N), 1) * BLOCK_N


# Multiply the softmax probabilities by V in float32 (TF32 on a GPU: 10 mantissa bits instead of bfloat16's 7), as the
# torch reference does. Off: it costs about a tenth of the prefill rate for a small gain in logits precision (see
# docs/decisions.md, 2026-11-22: P @ V in bfloat16). bench/gpu/triton_vs_torch_logits.py --pv float32 turns it on.
PV_IN_FLOAT32 = False


def dot_options(dtype: torch.dtype, device: torch.device) -> dict[str, Any]:
    """``DOT_FP32``, ``PRECISION`` and ``PV_FP32`` for inputs of ``dtype`` on ``device``: full float32 products for
    float32 inputs (not TF32, so the float32 path stays a precise reference), upcast operands under the
    interpreter, the P @ V product in float32 (``PV_IN_FLOAT32``)."""
    interpreted = device.type != "cuda"
    fp32 = dtype == torch.float32
    return {
        "DOT_FP32": interpreted,
        "PRECISION": "ieee" if (fp32 or interpreted) else "tf32",
        "PV_FP32": PV_IN_FLOAT32 and not fp32,
    }


def is_interpreted(kernel: object) -> bool:
    """True when ``kernel`` was defined under ``TRITON_INTERPRET=1`` (it then runs on CPU tensors)."""
    return type(kernel).__name__ == "InterpretedFunction"


def interpreter_ready(kernel: object) -> bool:
    """True when ``kernel`` can run on CPU tensors: it and Triton's own library functions (defined when triton was
    first imported) were all defined under ``TRITON_INTERPRET=1``."""
    return is_interpreted(kernel) and is_interpreted(tl.standard.cdiv)
