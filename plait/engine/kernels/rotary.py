"""Rotary position embedding applied to Q and K in place, one Triton program per token.

The "rotate half" layout of HF Llama/Qwen2: for ``x = [x1, x2]``, ``x' = [x1 cos - x2 sin, x2 cos + x1 sin]``,
computed in float32 and rounded once, as the reference does. ``q``/``k`` may be strided views (the split of the
fused QKV projection); the head dimension must be contiguous. Optionally the same program stores the token's rotated
K and its V in the layer's KV slots (``KVStore``), which saves the two copy kernels per layer a decode step otherwise
launches.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from plait.engine.kernels.pdl import launch_options, use_pdl, wait_for_previous_kernel
from plait.engine.kv_store import KVStore


@triton.jit
def _rotate(x_ptr, stride_t, stride_h, token, num_heads, cos, sin, offs_h, offs_d, HALF: tl.constexpr):
    """Rotate one token's heads in place; returns the rotated halves (in ``x``'s dtype) and their mask."""
    mask = (offs_h[:, None] < num_heads) & (offs_d[None, :] < HALF)
    base = x_ptr + token * stride_t + offs_h[:, None] * stride_h + offs_d[None, :]
    x1 = tl.load(base, mask=mask, other=0.0)
    x2 = tl.load(base + HALF, mask=mask, other=0.0)
    a, b = x1.to(tl.float32), x2.to(tl.float32)
    r1 = (a * cos - b * sin).to(x1.dtype)
    r2 = (b * cos + a * sin).to(x1.dtype)
    tl.store(base, r1, mask=mask)
    tl.store(base + HALF, r2, mask=mask)
    return r1, r2, mask


@triton.jit
def _rotary_kernel(
    q_ptr,
    k_ptr,
    positions_ptr,
    cos_ptr,
    sin_ptr,
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_cos,
    num_q_heads,
    num_k_heads,
    v_ptr,
    k_cache_ptr,
    v_cache_ptr,
    slots_ptr,
    stride_vt,
    stride_vh,
    stride_kc_s,
    stride_kc_h,
    stride_vc_s,
    stride_vc_h,
    HALF: tl.constexpr,
    BLOCK_HQ: tl.constexpr,
    BLOCK_HK: tl.constexpr,
    BLOCK_D: tl.constexpr,
    STORE: tl.constexpr,
    USE_PDL: tl.constexpr = False,
):
    wait_for_previous_kernel(USE_PDL)
    token = tl.program_id(0).to(tl.int64)
    position = tl.load(positions_ptr + token).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HALF
    cos = tl.load(cos_ptr + position * stride_cos + offs_d, mask=d_mask, other=0.0).to(tl.float32)[None, :]
    sin = tl.load(sin_ptr + position * stride_cos + offs_d, mask=d_mask, other=0.0).to(tl.float32)[None, :]
    _rotate(q_ptr, stride_qt, stride_qh, token, num_q_heads, cos, sin, tl.arange(0, BLOCK_HQ), offs_d, HALF)
    offs_hk = tl.arange(0, BLOCK_HK)
    k1, k2, mask = _rotate(k_ptr, stride_kt, stride_kh, token, num_k_heads, cos, sin, offs_hk, offs_d, HALF)
    if STORE:  # the token's rotated K and its V go straight to its KV slot
        slot = tl.load(slots_ptr + token).to(tl.int64)
        kc = k_cache_ptr + slot * stride_kc_s + offs_hk[:, None] * stride_kc_h + offs_d[None, :]
        tl.store(kc, k1.to(k_cache_ptr.dtype.element_ty), mask=mask)
        tl.store(kc + HALF, k2.to(k_cache_ptr.dtype.element_ty), mask=mask)
        vs = v_ptr + token * stride_vt + offs_hk[:, None] * stride_vh + offs_d[None, :]
        vc = v_cache_ptr + slot * stride_vc_s + offs_hk[:, None] * stride_vc_h + offs_d[None, :]
        tl.store(vc, tl.load(vs, mask=mask, other=0.0).to(v_cache_ptr.dtype.element_ty), mask=mask)
        tl.store(vc + HALF, tl.load(vs + HALF, mask=mask, other=0.0).to(v_cache_ptr.dtype.element_ty), mask=mask)


def apply_rotary(
    positions: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    kv_store: KVStore | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate ``q`` ``[tokens, heads, dim]`` and ``k`` ``[tokens, kv_heads, dim]`` in place by the angles of
    ``positions``; ``cos``/``sin`` are ``[max_position, dim]`` tables (``cat([f, f])`` layout). With ``kv_store``,
    each token's rotated K and its V are also written to its slot of the layer's KV buffers, in the same kernel (a
    decode step otherwise spends two more launches per layer on the copies). Returns ``(q, k)``."""
    tokens, num_q_heads, dim = q.shape
    if q.stride(2) != 1 or k.stride(2) != 1 or cos.stride(1) != 1 or dim % 2:
        raise ValueError("apply_rotary needs a contiguous, even head dimension")
    if tokens == 0:
        return q, k
    half = dim // 2
    if kv_store is not None:
        v, k_cache, v_cache, slots = kv_store.v, kv_store.k_cache, kv_store.v_cache, kv_store.slots
        if v.stride(2) != 1 or k_cache.stride(2) != 1 or v_cache.stride(2) != 1 or slots.shape[0] != tokens:
            raise ValueError("kv_store needs contiguous head dimensions and one slot per token")
        store_strides = (v.stride(0), v.stride(1), *k_cache.stride()[:2], *v_cache.stride()[:2])
    else:
        v = k_cache = v_cache = slots = k  # unused by the kernel
        store_strides = (0,) * 6
    _rotary_kernel[(tokens,)](
        q,
        k,
        positions,
        cos,
        sin,
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        cos.stride(0),
        num_q_heads,
        k.shape[1],
        v,
        k_cache,
        v_cache,
        slots,
        *store_strides,
        half,
        triton.next_power_of_2(num_q_heads),
        triton.next_power_of_2(k.shape[1]),
        triton.next_power_of_2(half),
        kv_store is not None,
        use_pdl(q.device),
        **launch_options(q.device),
    )
    return q, k
