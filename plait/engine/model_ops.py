"""The elementwise operations of a decoder layer, in two interchangeable implementations.

``TORCH_OPS`` is the reference: plain PyTorch, any device. ``triton_ops()`` fuses each operation into one Triton
kernel (``kernels/rms_norm.py``, ``rotary.py``, ``silu_and_mul.py``; one-row projections through ``gemv.py``): a small
decode step is otherwise bound by the
launches of a thousand tiny kernels, not by reading the weights. Both round at the same points.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from plait.engine.kv_store import KVStore


@dataclass(frozen=True)
class ModelOps:
    name: str
    rms_norm: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
    # (x, residual, weight, eps) -> (normed in x's dtype, residual + x in residual's dtype); may update ``residual``
    # in place.
    add_rms_norm: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], tuple[torch.Tensor, torch.Tensor]]
    # (positions, q, k, cos, sin, kv_store=None) -> (q, k) rotated; may rotate in place. With a ``KVStore``, the
    # rotated K and the given V are also written to the layer's KV slots.
    rotary: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    silu_and_mul: Callable[[torch.Tensor], torch.Tensor]
    # (x, weight, bias) -> x @ weight^T + bias
    linear: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor] = F.linear


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # Normalise in float32, scale in the model's dtype (the reference Llama's rounding order). ``x`` may be the
    # float32 residual stream; the result is in the weight's (the model's) dtype.
    return weight * F.rms_norm(x.float(), (x.shape[-1],), None, eps).to(weight.dtype)


def _add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    residual = residual + x  # in the residual stream's dtype (float32 for 16-bit models)
    return _rms_norm(residual, weight, eps), residual


def _rotary(
    positions: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    kv_store: KVStore | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    cos_p = cos.index_select(0, positions).unsqueeze(1)  # [tokens, 1, dim]
    sin_p = sin.index_select(0, positions).unsqueeze(1)
    q, k = _rotate_half(q, cos_p, sin_p), _rotate_half(k, cos_p, sin_p)
    if kv_store is not None:
        kv_store.k_cache.index_copy_(0, kv_store.slots, k.to(kv_store.k_cache.dtype))
        kv_store.v_cache.index_copy_(0, kv_store.slots, kv_store.v.to(kv_store.v_cache.dtype))
    return q, k


def _rotate_half(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # In float32, rounded once (as the fused kernel does): rounding each product drifts by an ulp per element.
    half = x.shape[-1] // 2
    xf = x.float()
    rotated = torch.cat([-xf[..., half:], xf[..., :half]], dim=-1)
    return (xf * cos.float() + rotated * sin.float()).to(x.dtype)


def _silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    gate, up = x.split(x.shape[-1] // 2, dim=-1)
    return F.silu(gate) * up


TORCH_OPS = ModelOps("torch", _rms_norm, _add_rms_norm, _rotary, _silu_and_mul)


def triton_ops() -> ModelOps:
    """The fused Triton kernels (imported on demand: triton is optional on CPU)."""
    from plait.engine.kernels.gemv import linear
    from plait.engine.kernels.rms_norm import add_rms_norm, rms_norm
    from plait.engine.kernels.rotary import apply_rotary
    from plait.engine.kernels.silu_and_mul import silu_and_mul

    return ModelOps("triton", rms_norm, add_rms_norm, apply_rotary, silu_and_mul, linear)
