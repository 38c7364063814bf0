"""A cached prefix's KV in host memory: what one engine exports and another, with the same model, imports."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class PrefixKV:
    """The K and V rows (``[tokens, kv_heads, head_dim]`` per layer, on the CPU) of the prefix ``token_ids``."""

    token_ids: tuple[int, ...] = ()
    k: list[torch.Tensor] = field(default_factory=list)
    v: list[torch.Tensor] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.k, *self.v))
