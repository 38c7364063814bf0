"""Matrix-vector product for one-token steps: ``y = x @ W^T`` with ``x`` ``[1, K]`` and ``W`` ``[N, K]``.

A batch-1 decode step reads every weight once and computes almost nothing, so each projection should run at the
memory bandwidth. For weights of up to a few tens of MB the vendor GEMM picks 64-row tiles: too few programs to
keep the HBM busy, plus a split-K reduction kernel. Timed with cold weights, as the engine reads them
(``bench/gpu/gemv_cold.py``), this kernel is faster for those weights; without programmatic dependent launch
(``pdl.py``) the vendor GEMM is as fast from ~50 MB up, with it this kernel wins at every size (see
``docs/decisions.md``, 2026-11-22: one-row GEMV with PDL).

Each program owns ``BLOCK_N`` rows and walks K in ``BLOCK_K`` chunks, accumulating elementwise in float32 and
reducing once at the end; the result is rounded once, as the GEMM rounds its float32 accumulator.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from plait.engine.kernels.pdl import launch_options, use_pdl, wait_for_previous_kernel

# One-row projections whose weight is at most this many bytes go through the GEMV (0 disables it). Without PDL the
# vendor GEMM is as fast from ~50 MB up; with PDL the GEMV streams its first weight tile while the kernel before it
# drains, so every one-row projection goes through it (docs/decisions.md, 2026-11-22: one-row GEMV with PDL).
MAX_WEIGHT_BYTES = 40 << 20
MAX_WEIGHT_BYTES_PDL = 1 << 40
BLOCK_N = 2
BLOCK_K = 2048
LAUNCH = {"num_warps": 4, "num_stages": 1}


@triton.jit
def _gemv_kernel(
    x_ptr,
    w_ptr,
    bias_ptr,
    out_ptr,
    n_rows,
    k_size,
    stride_w,
    HAS_BIAS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    USE_PDL: tl.constexpr = False,
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < n_rows
    acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    w_rows = w_ptr + rows.to(tl.int64)[:, None] * stride_w
    # The first weight tile is read before waiting for the kernel that writes x: with PDL the weight stream starts
    # while that kernel drains (weights are never written by a kernel, so this is the only read allowed early).
    offs_k = tl.arange(0, BLOCK_K)
    w = tl.load(w_rows + offs_k[None, :], mask=row_mask[:, None] & (offs_k < k_size)[None, :], other=0.0)
    wait_for_previous_kernel(USE_PDL)
    for k_start in range(0, k_size, BLOCK_K):
        offs_k = k_start + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + offs_k, mask=offs_k < k_size, other=0.0).to(tl.float32)
        acc += w.to(tl.float32) * x[None, :]
        next_k = offs_k + BLOCK_K
        w = tl.load(w_rows + next_k[None, :], mask=row_mask[:, None] & (next_k < k_size)[None, :], other=0.0)
    y = tl.sum(acc, axis=1)
    if HAS_BIAS:
        y += tl.load(bias_ptr + rows, mask=row_mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + rows, y.to(out_ptr.dtype.element_ty), mask=row_mask)


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for ``x`` of one row (``[1, K]``); ``weight`` ``[N, K]`` with contiguous rows."""
    if x.dim() != 2 or x.shape[0] != 1 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"gemv needs x [1, K] and weight [N, K]; got {tuple(x.shape)} and {tuple(weight.shape)}")
    if weight.stride(1) != 1:
        raise ValueError("gemv needs the weight's rows contiguous")
    n_rows, k_size = weight.shape
    x = x.contiguous()
    out = torch.empty(1, n_rows, dtype=x.dtype, device=x.device)
    block_k = min(BLOCK_K, triton.next_power_of_2(k_size))
    _gemv_kernel[(triton.cdiv(n_rows, BLOCK_N),)](
        x,
        weight,
        bias if bias is not None else weight,
        out,
        n_rows,
        k_size,
        weight.stride(0),
        bias is not None,
        BLOCK_N,
        block_k,
        use_pdl(x.device),
        **({**LAUNCH, **launch_options(x.device)} if x.is_cuda else {}),
    )
    return out


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear``, through ``gemv`` for a single row on a GPU when the weight is small enough to gain from it."""
    if x.shape[0] == 1 and x.is_cuda:
        cap = MAX_WEIGHT_BYTES_PDL if use_pdl(x.device) and MAX_WEIGHT_BYTES > 0 else MAX_WEIGHT_BYTES
        if weight.numel() * weight.element_size() <= cap:
            return gemv(x, weight, bias)
    return torch.nn.functional.linear(x, weight, bias)
