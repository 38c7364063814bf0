"""Random weights of a named shape, for benchmarks: outputs are meaningless, so lengths are forced."""

from __future__ import annotations

import torch

from plait.engine.model import LlamaForCausalLM
from plait.engine.tensor_parallel import full_shape


@torch.no_grad()
def dummy_weights(model: LlamaForCausalLM, seed: int = 0) -> None:
    """Fill ``model`` in place: norms with ones, matrices with N(0, 0.02) (seeded, on the model's device). A
    tensor-parallel rank draws each whole matrix and keeps its part, so every group size holds the same model."""
    generator = torch.Generator(device=model.embed_tokens.device).manual_seed(seed)
    tp = model.tp
    for name, param in model.named_parameters():
        if name.endswith("norm.weight"):
            param.fill_(1.0)
        elif param.dim() == 1:
            param.zero_()
        elif not tp.enabled:
            param.normal_(0.0, 0.02, generator=generator)
        else:
            whole = torch.empty(full_shape(name, model.full_config), dtype=param.dtype, device=param.device)
            param.copy_(tp.shard_fused(name, whole.normal_(0.0, 0.02, generator=generator), model.full_config))
