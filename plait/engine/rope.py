"""Rotary position embeddings (HF "rotate half" layout), with Llama 3 and linear frequency scaling."""

from __future__ import annotations

import math

import torch

from plait.engine.kv_store import KVStore
from plait.engine.model_config import ModelConfig, RopeScaling
from plait.engine.model_ops import TORCH_OPS, ModelOps


def inverse_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None) -> torch.Tensor:
    """The ``head_dim / 2`` rotation frequencies, scaled as the model's config says (float64 for exactness)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    if scaling is None:
        return inv_freq
    if scaling.kind == "linear":
        return inv_freq / scaling.factor
    # Llama 3: keep high frequencies, divide low frequencies by `factor`, interpolate smoothly in between.
    low_freq_wavelen = scaling.original_max_position / scaling.low_freq_factor
    high_freq_wavelen = scaling.original_max_position / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    smooth = (scaling.original_max_position / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    interpolated = (1 - smooth) * inv_freq / scaling.factor + smooth * inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / scaling.factor, inv_freq)
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(is_medium, interpolated, scaled)


class RotaryEmbedding(torch.nn.Module):
    """Precomputed cos/sin tables indexed by absolute position; applied to Q and K of shape ``[tokens, heads, dim]``."""

    def __init__(
        self,
        config: ModelConfig,
        max_position: int,
        device: torch.device,
        dtype: torch.dtype,
        ops: ModelOps = TORCH_OPS,
    ) -> None:
        super().__init__()
        self.ops = ops
        inv_freq = inverse_frequencies(config.head_dim, config.rope_theta, config.rope_scaling).float()
        positions = torch.arange(max_position, dtype=torch.float32)
        freqs = torch.outer(positions, inv_freq)
        emb = torch.cat([freqs, freqs], dim=-1)
        self.register_buffer("cos", emb.cos().to(device=device, dtype=dtype), persistent=False)
        self.register_buffer("sin", emb.sin().to(device=device, dtype=dtype), persistent=False)

    def forward(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, kv_store: KVStore | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotated ``q`` and ``k`` (the fused implementation rotates them in place); with ``kv_store``, the rotated
        K and the store's V are written to the KV slots as well."""
        return self.ops.rotary(positions, q, k, self.cos, self.sin, kv_store)
