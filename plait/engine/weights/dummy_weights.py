"""Random weights of a named shape, for benchmarks: outputs are meaningless, so lengths are forced."""

from __future__ import annotations

import torch

from plait.engine.model import LlamaForCausalLM


@torch.no_grad()
def dummy_weights(model: LlamaForCausalLM, seed: int = 0) -> None:
    """Fill ``model`` in place: norms with ones, matrices with N(0, 0.02) (seeded, on the model's device)."""
    generator = torch.Generator(device=model.embed_tokens.device).manual_seed(seed)
    for name, param in model.named_parameters():
        if name.endswith("norm.weight"):
            param.fill_(1.0)
        elif param.dim() == 1:
            param.zero_()
        else:
            param.normal_(0.0, 0.02, generator=generator)
