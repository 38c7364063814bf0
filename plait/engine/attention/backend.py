"""The attention backend protocol and the registry that picks one by name."""

from __future__ import annotations

from typing import Any, Protocol

import torch

from plait.cache import KVPool, ReqToTokenPool
from plait.engine.forward_batch import ForwardBatch


class AttentionBackend(Protocol):
    """Paged attention over the KV pool.

    ``prepare`` runs once per step, outside model code, and returns metadata shared by every layer;
    ``forward`` stores the layer's new K/V at ``batch.out_cache_loc`` (unless ``kv_stored``: the model wrote them
    into ``kv_pool`` with the rotation) and returns the attention output ``[tokens, heads, head_dim]``.
    """

    name: str
    kv_pool: KVPool

    def prepare(self, batch: ForwardBatch) -> Any: ...

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        layer: int,
        batch: ForwardBatch,
        kv_stored: bool = False,
    ) -> torch.Tensor: ...


def create_backend(name: str, kv_pool: KVPool, req_to_token: ReqToTokenPool, scale: float) -> AttentionBackend:
    """Build the backend called ``name``: ``torch`` (the reference), ``cpu`` (batched, shared-prefix-aware attention
    for serving on the CPU) or ``triton`` (paged decode + extend kernels; CUDA, or CPU through Triton's interpreter
    with ``TRITON_INTERPRET=1``)."""
    if name == "torch":
        from plait.engine.attention.torch_backend import TorchAttentionBackend

        return TorchAttentionBackend(kv_pool, req_to_token, scale)
    if name == "cpu":
        from plait.engine.attention.cpu_backend import CpuAttentionBackend

        return CpuAttentionBackend(kv_pool, req_to_token, scale)
    if name == "triton":
        try:
            import triton  # noqa: F401
        except ImportError as error:
            raise RuntimeError(f"attention backend 'triton' needs the triton package ({error})") from error
        from plait.engine.attention.triton_backend import TritonAttentionBackend

        return TritonAttentionBackend(kv_pool, req_to_token, scale)
    raise ValueError(f"unknown attention backend '{name}'; available: torch, cpu, triton")
