"""The KV pool: one flat tensor of token slots per layer for K and for V.

``k[layer][slot]`` is a ``[kv_heads, head_dim]`` row. Slot indices come from ``SlotAllocator``; slot 0 is the
padding slot (rows written for padded positions land there and are never read as real context).
"""

from __future__ import annotations

import torch


class KVPool:
    """Owns the K and V buffers of every layer; knows nothing of requests."""

    def __init__(
        self,
        num_layers: int,
        num_slots: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str,
        pin_memory: bool = False,
    ) -> None:
        self.num_layers = num_layers
        self.num_slots = num_slots
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.dtype = dtype
        self.device = torch.device(device)
        shape = (num_slots + 1, num_kv_heads, head_dim)  # +1: the padding slot 0
        # pin_memory: page-locked host buffers (the host tier on GPU machines) so copies can run asynchronously.
        self.k = [torch.zeros(shape, dtype=dtype, device=device, pin_memory=pin_memory) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device, pin_memory=pin_memory) for _ in range(num_layers)]

    @staticmethod
    def bytes_per_slot(num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        """Bytes one token's K and V take across all layers."""
        return 2 * num_layers * num_kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store new tokens' K/V (``[tokens, kv_heads, head_dim]``) at ``slots``."""
        self.k[layer].index_copy_(0, slots, k.to(self.dtype))
        self.v[layer].index_copy_(0, slots, v.to(self.dtype))

    @property
    def bytes_per_token(self) -> int:
        return KVPool.bytes_per_slot(self.num_layers, self.num_kv_heads, self.head_dim, self.dtype)

    def read_rows(self, slots: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Copies of the K and V rows at ``slots`` in every layer (for tests and the host tier)."""
        return [k[slots].clone() for k in self.k], [v[slots].clone() for v in self.v]
