"""Matrix-vector product for one-token steps: ``y = x @ W^T`` with ``x`` ``[1, K]`` and ``W`` ``[N, K]``.

A batch-1 decode step reads every weight once and computes almost nothing, so each projection should run at the
memory bandwidth. For the projections of a 4096-wide layer and smaller (8 to 50 MB), the vendor GEMM picks tiles
that leave part of the bandwidth unused (about 3.2-3.5 TB/s of an H200's 4.2 for the 8B model's Q/K/V and output
projections). Here each program owns ``BLOCK_N`` output rows and streams them along K in ``BLOCK_K`` chunks, so
``N / BLOCK_N`` programs keep several loads in flight per multiprocessor; products are accumulated in float32 and
rounded once, as the GEMM does.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Chosen on an H200 with bench/gpu/decode_variants.py --projections. The model uses the kernel for one-row inputs
# whose weight is at most MAX_WEIGHT_BYTES (larger ones already run at the bandwidth through the GEMM); 0 disables it.
MAX_WEIGHT_BYTES = 64 << 20
BLOCK_N = 8
BLOCK_K = 512
LAUNCH = {"num_warps": 4, "num_stages": 4}


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
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < n_rows
    acc = tl.zeros([BLOCK_N], tl.float32)
    w_rows = w_ptr + rows.to(tl.int64)[:, None] * stride_w
    for k_start in range(0, k_size, BLOCK_K):
        offs_k = k_start + tl.arange(0, BLOCK_K)
        k_mask = offs_k < k_size
        x = tl.load(x_ptr + offs_k, mask=k_mask, other=0.0).to(tl.float32)
        w = tl.load(w_rows + offs_k[None, :], mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        acc += tl.sum(w.to(tl.float32) * x[None, :], axis=1)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rows, mask=row_mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + rows, acc.to(out_ptr.dtype.element_ty), mask=row_mask)


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for ``x`` of one row (``[1, K]``); ``weight`` ``[N, K]`` with contiguous rows."""
    if x.dim() != 2 or x.shape[0] != 1 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"gemv needs x [1, K] and weight [N, K]; got {tuple(x.shape)} and {tuple(weight.shape)}")
    if weight.stride(1) != 1:
        raise ValueError("gemv needs the weight's rows contiguous")
    n_rows, k_size = weight.shape
    x = x.contiguous()
    out = torch.empty(1, n_rows, dtype=x.dtype, device=x.device)
    launch = LAUNCH if x.is_cuda else {}
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
        BLOCK_K,
        **launch,
    )
    return out


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear``, through ``gemv`` for a single row on a GPU when the weight is small enough to gain from it."""
    if x.shape[0] == 1 and x.is_cuda and weight.numel() * weight.element_size() <= MAX_WEIGHT_BYTES:
        return gemv(x, weight, bias)
    return torch.nn.functional.linear(x, weight, bias)
