"""Attention backends: they write new K/V into the pool and attend over each sequence's ``req_to_token`` row."""

from __future__ import annotations

from plait.engine.attention.backend import AttentionBackend, create_backend
from plait.engine.attention.torch_backend import TorchAttentionBackend

__all__ = ["AttentionBackend", "TorchAttentionBackend", "create_backend"]
