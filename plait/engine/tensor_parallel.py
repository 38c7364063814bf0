"""Tensor parallelism for the Llama-family model: which part of each weight a rank holds, and the collectives.

A group of ``size`` ranks (processes, one device each) runs every layer together, Megatron style:
- column-parallel: the fused Q/K/V projection (whole heads per rank) and the fused gate/up projection (a slice of
  the intermediate size) — each rank computes its heads / its slice, nothing is exchanged;
- row-parallel: the output projection and the down projection take the rank's slice as input and produce a partial
  sum of the full hidden vector: one all-reduce after attention, one after the MLP;
- vocabulary-parallel: the embedding and the head hold a slice of the (padded) vocabulary each; an embedding lookup
  outside a rank's slice gives zeros and an all-reduce completes it; the head's logits are all-gathered.

Norms, rotary tables and the residual stream are replicated. When the model has fewer KV heads than ranks, each
KV head is replicated on ``size / num_kv_heads`` ranks (each rank still holds whole query heads, and the KV heads
its query heads read). A rank's KV pool holds only its KV heads, so the pool of a group holds each head once
(or once per replica).

``TensorParallel.single()`` (size 1) is the plain model: every collective is the identity and nothing is sliced.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist

from plait.engine.errors import ModelLoadError
from plait.engine.model_config import ModelConfig

# The model's fused parameters, and the HF tensors each is made of, in order along dimension 0.
_FUSED_PIECES = {
    "self_attn.qkv_proj.weight": ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
    "self_attn.qkv_proj.bias": ("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"),
    "mlp.gate_up_proj.weight": ("mlp.gate_proj.weight", "mlp.up_proj.weight"),
}


def check_tensor_parallel(config: ModelConfig, size: int) -> None:
    """Raises ``ModelLoadError`` saying what to change when ``config`` cannot be split over ``size`` ranks."""
    if size < 1:
        raise ModelLoadError(f"tensor parallel size must be >= 1, got {size}")
    if size == 1:
        return
    name = config.name or config.architecture
    if config.num_heads % size:
        raise ModelLoadError(
            f"{name} has {config.num_heads} attention heads, not divisible by tensor parallel size {size}; "
            "choose a size that divides the head count"
        )
    if config.num_kv_heads % size and size % config.num_kv_heads:
        raise ModelLoadError(
            f"{name} has {config.num_kv_heads} KV heads: tensor parallel size {size} must divide it or be a multiple "
            "of it"
        )
    if config.intermediate_size % size:
        raise ModelLoadError(
            f"{name}'s MLP size {config.intermediate_size} is not divisible by tensor parallel size {size}"
        )


@dataclass(frozen=True)
class TensorParallel:
    """This process's place in a tensor-parallel group: ``rank`` of ``size``, and the group to communicate in."""

    rank: int = 0
    size: int = 1
    group: dist.ProcessGroup | None = None

    @classmethod
    def single(cls) -> TensorParallel:
        """No parallelism: the whole model in this process."""
        return cls()

    @property
    def enabled(self) -> bool:
        return self.size > 1

    # ---- shapes ----------------------------------------------------------------------------------------------------

    def padded_vocab(self, config: ModelConfig) -> int:
        """The vocabulary rounded up to a multiple of ``size`` (padding rows are zero and their logits dropped)."""
        return math.ceil(config.vocab_size / self.size) * self.size

    def local_config(self, config: ModelConfig) -> ModelConfig:
        """The shape this rank's model code runs with: its heads, KV heads, MLP slice and vocabulary slice. The
        hidden size, head size and layer count are the model's."""
        if not self.enabled:
            return config
        check_tensor_parallel(config, self.size)
        return replace(
            config,
            num_heads=config.num_heads // self.size,
            num_kv_heads=max(1, config.num_kv_heads // self.size),
            intermediate_size=config.intermediate_size // self.size,
            vocab_size=self.padded_vocab(config) // self.size,
            head_dim=config.head_dim,
        )

    def vocab_start(self, config: ModelConfig) -> int:
        """The first token id of this rank's vocabulary slice."""
        return self.rank * (self.padded_vocab(config) // self.size)

    # ---- collectives -----------------------------------------------------------------------------------------------

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """The sum of ``x`` over the group, in place (the identity for one rank)."""
        if self.enabled:
            dist.all_reduce(x, group=self.group)
        return x

    def gather_vocab(self, logits: torch.Tensor, vocab_size: int) -> torch.Tensor:
        """Each rank's ``[rows, vocab slice]`` logits joined into ``[rows, vocab_size]`` (padding dropped)."""
        if not self.enabled:
            return logits
        parts = [torch.empty_like(logits) for _ in range(self.size)]
        dist.all_gather(parts, logits.contiguous(), group=self.group)
        return torch.cat(parts, dim=-1)[..., :vocab_size]

    # ---- weights ---------------------------------------------------------------------------------------------------

    def shard(self, hf_name: str, tensor: torch.Tensor, config: ModelConfig) -> torch.Tensor:
        """This rank's part of the checkpoint tensor ``hf_name`` (HF naming) of the whole model ``config``."""
        if not self.enabled:
            return tensor
        suffix = hf_name.split(".", 3)[-1] if hf_name.startswith("model.layers.") else hf_name
        if hf_name in ("model.embed_tokens.weight", "lm_head.weight"):
            return self._vocab_rows(tensor, config)
        if suffix in ("self_attn.q_proj.weight", "self_attn.q_proj.bias"):
            return self._slice(tensor, 0, config.num_heads * config.head_dim)
        if suffix.startswith(("self_attn.k_proj.", "self_attn.v_proj.")):
            return self._kv_heads(tensor, config)
        if suffix in ("mlp.gate_proj.weight", "mlp.up_proj.weight"):
            return self._slice(tensor, 0, config.intermediate_size)
        if suffix == "self_attn.o_proj.weight":
            return self._slice(tensor, 1, config.num_heads * config.head_dim)
        if suffix == "mlp.down_proj.weight":
            return self._slice(tensor, 1, config.intermediate_size)
        return tensor  # norms: replicated

    def shard_all(
        self, weights: Iterable[tuple[str, torch.Tensor]], config: ModelConfig
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """``(hf_name, this rank's part)`` for every checkpoint tensor."""
        for name, tensor in weights:
            yield name, self.shard(name, tensor, config)

    def shard_fused(self, param_name: str, tensor: torch.Tensor, config: ModelConfig) -> torch.Tensor:
        """This rank's part of the whole model's parameter ``param_name`` (the model's own, fused naming, e.g.
        ``layers.3.self_attn.qkv_proj.weight``): the fused pieces are split, sharded one by one and joined."""
        if not self.enabled:
            return tensor
        if param_name == "embed_tokens":
            return self._vocab_rows(tensor, config)
        if param_name == "lm_head":
            return self._vocab_rows(tensor, config)
        prefix, _, suffix = param_name.partition(".")
        if prefix == "layers":
            index, _, suffix = suffix.partition(".")
            hf_prefix = f"model.layers.{index}."
        else:
            hf_prefix = "model."
        pieces = _FUSED_PIECES.get(suffix)
        if pieces is None:
            return self.shard(hf_prefix + suffix, tensor, config)
        if suffix.startswith("self_attn"):
            sizes = [config.q_size, config.kv_size, config.kv_size]
        else:
            sizes = [config.intermediate_size, config.intermediate_size]
        parts = tensor.split(sizes, dim=0)
        return torch.cat([self.shard(hf_prefix + p, t, config) for p, t in zip(pieces, parts, strict=True)])

    def _slice(self, tensor: torch.Tensor, dim: int, total: int) -> torch.Tensor:
        if tensor.shape[dim] != total:
            raise ModelLoadError(
                f"a tensor of shape {tuple(tensor.shape)} has {tensor.shape[dim]} rows, expected {total}"
            )
        step = total // self.size
        return tensor.narrow(dim, self.rank * step, step).contiguous()

    def _kv_heads(self, tensor: torch.Tensor, config: ModelConfig) -> torch.Tensor:
        heads = config.num_kv_heads
        if heads % self.size == 0:
            return self._slice(tensor, 0, config.kv_size)
        # Fewer KV heads than ranks: rank r reads the KV head of its query heads (replicated size/heads times).
        head = self.rank * heads // self.size
        return tensor.narrow(0, head * config.head_dim, config.head_dim).contiguous()

    def _vocab_rows(self, tensor: torch.Tensor, config: ModelConfig) -> torch.Tensor:
        rows = self.padded_vocab(config) // self.size
        start = self.rank * rows
        part = tensor[start : min(start + rows, config.vocab_size)]
        if part.shape[0] < rows:  # the padding past the vocabulary: zero rows
            pad = torch.zeros(rows - part.shape[0], *tensor.shape[1:], dtype=tensor.dtype, device=tensor.device)
            part = torch.cat([part, pad])
        return part.contiguous()


def full_shape(param_name: str, config: ModelConfig) -> tuple[int, ...]:
    """The shape of the whole model's matrix ``param_name`` (the model's fused naming)."""
    c = config
    suffix = param_name.split(".", 2)[-1] if param_name.startswith("layers.") else param_name
    shapes = {
        "embed_tokens": (c.vocab_size, c.hidden_size),
        "lm_head": (c.vocab_size, c.hidden_size),
        "self_attn.qkv_proj.weight": (c.q_size + 2 * c.kv_size, c.hidden_size),
        "self_attn.o_proj.weight": (c.hidden_size, c.q_size),
        "mlp.gate_up_proj.weight": (2 * c.intermediate_size, c.hidden_size),
        "mlp.down_proj.weight": (c.hidden_size, c.intermediate_size),
    }
    if suffix not in shapes:
        raise KeyError(f"{param_name} is not a matrix of the model")
    return shapes[suffix]


def init_tensor_parallel(rank: int, size: int, init_method: str, backend: str) -> TensorParallel:
    """Joins the default process group (``backend``: ``nccl`` on CUDA, ``gloo`` on CPU) as ``rank`` of ``size``."""
    if size == 1:
        return TensorParallel.single()
    if not dist.is_initialized():
        dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=size)
    return TensorParallel(rank, size, dist.group.WORLD)
