"""SiLU-and-multiply of the fused gate/up projection, one Triton kernel: ``silu(gate) * up``.

Rounded like the reference (``F.silu(gate) * up`` in the model's dtype): the SiLU is computed in float32 and
rounded, the product is rounded again.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from plait.engine.kernels.pdl import launch_options, use_pdl, wait_for_previous_kernel

BLOCK = 1024


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, stride_x, stride_o, size, BLOCK: tl.constexpr, USE_PDL: tl.constexpr = False):
    wait_for_previous_kernel(USE_PDL)
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < size
    gate = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0)
    up = tl.load(x_ptr + row * stride_x + size + offs, mask=mask, other=0.0)
    g = gate.to(tl.float32)
    silu = (g / (1.0 + tl.exp(-g))).to(gate.dtype).to(tl.float32)
    tl.store(out_ptr + row * stride_o + offs, (silu * up.to(tl.float32)).to(gate.dtype), mask=mask)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """``[rows, 2 * size]`` (gate then up) to ``[rows, size]``."""
    rows, width = x.shape
    if x.stride(1) != 1 or width % 2:
        raise ValueError("silu_and_mul expects [rows, 2 * size] with a contiguous last dimension")
    size = width // 2
    out = torch.empty(rows, size, dtype=x.dtype, device=x.device)
    if rows:
        _silu_and_mul_kernel[(rows, triton.cdiv(size, BLOCK))](
            x, out, x.stride(0), out.stride(0), size, BLOCK, use_pdl(x.device), **launch_options(x.device)
        )
    return out
