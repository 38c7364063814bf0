"""Where a layer's new K/V go: the target of the fused "rotate and store" operation (``ModelOps.rotary``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class KVStore:
    """Write the batch's new tokens' K (after rotation) and ``v`` (``[tokens, kv_heads, head_dim]``) at ``slots`` of
    ``k_cache``/``v_cache`` (``[slots, kv_heads, head_dim]``, one layer of the KV pool)."""

    v: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    slots: torch.Tensor
