"""RMSNorm, alone and fused with the residual add, as one Triton kernel per row.

The rounding matches the torch reference (``model_ops.py``): the residual sum is rounded to the residual stream's
dtype (float32 for 16-bit models), normalised in float32, rounded to the output's (the model's) dtype, then scaled
by the weight and rounded again. One launch replaces the five
or so elementwise kernels of the reference, which dominate a small decode step.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from plait.engine.kernels.pdl import launch_options, use_pdl, wait_for_previous_kernel


@triton.jit
def _rms_norm_kernel(
    x_ptr,
    residual_ptr,
    weight_ptr,
    out_ptr,
    stride_x,
    stride_r,
    stride_o,
    size,
    eps,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK: tl.constexpr,
    USE_PDL: tl.constexpr = False,
):
    wait_for_previous_kernel(USE_PDL)
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < size
    x = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(residual_ptr + row * stride_r + offs, mask=mask, other=0.0)
        total = (x.to(tl.float32) + r.to(tl.float32)).to(r.dtype)  # the reference's add, rounded to the stream
        tl.store(residual_ptr + row * stride_r + offs, total, mask=mask)
        xf = total.to(tl.float32)
    else:
        xf = x.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(xf * xf, axis=0) / size + eps)
    normed = (xf * rstd).to(out_ptr.dtype.element_ty).to(tl.float32)
    w = tl.load(weight_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_o + offs, (normed * w).to(out_ptr.dtype.element_ty), mask=mask)


def _launch(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float) -> torch.Tensor:
    if x.dim() != 2 or x.stride(-1) != 1 or (residual is not None and residual.stride(-1) != 1):
        raise ValueError("rms_norm expects [rows, hidden] tensors with a contiguous last dimension")
    rows, size = x.shape
    out = torch.empty(rows, size, dtype=weight.dtype, device=x.device)  # x may be the float32 residual stream
    if rows == 0:
        return out
    block = triton.next_power_of_2(size)
    extra = {"num_warps": min(16, max(4, block // 512)), **launch_options(x.device)} if x.is_cuda else {}
    r = residual if residual is not None else x
    _rms_norm_kernel[(rows,)](
        x,
        r,
        weight,
        out,
        x.stride(0),
        r.stride(0),
        out.stride(0),
        size,
        eps,
        residual is not None,
        block,
        use_pdl(x.device),
        **extra,
    )
    return out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``weight * rmsnorm(x)`` over the last dimension of a ``[rows, hidden]`` tensor."""
    return _launch(x, None, weight, eps)


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``residual += x`` (in place, rounded to ``residual``'s dtype), then ``(weight * rmsnorm(residual), residual)``
    with the normalised rows in ``weight``'s dtype."""
    return _launch(x, residual, weight, eps), residual
