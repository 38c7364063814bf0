"""The Llama-family decoder (Llama 2/3, SmolLM2, Mistral, Qwen2/2.5), written once.

Q/K/V are one fused projection and gate/up another, so a layer is four matmuls. Attention is delegated to the
backend carried by the ``ForwardBatch``: the model code never sees how KV is stored or how requests are batched.
Weights arrive in HF naming through ``load_weights`` (GGUF and safetensors loaders translate to it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from plait.engine.errors import ModelLoadError
from plait.engine.forward_batch import ForwardBatch
from plait.engine.kv_store import KVStore
from plait.engine.model_config import ModelConfig
from plait.engine.model_ops import TORCH_OPS, ModelOps
from plait.engine.packed_weights import BlockWeights, PackedLinearWeight, concat_blocks
from plait.engine.rope import RotaryEmbedding
from plait.engine.tensor_parallel import TensorParallel


def _empty(*shape: int, device: torch.device, dtype: torch.dtype) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape, device=device, dtype=dtype), requires_grad=False)


class Linear(nn.Module):
    """A linear layer whose weight is left uninitialised (weights are always loaded or filled afterwards). With
    ``packed`` set (``pack_weights``), the packed weight is multiplied and the dense one is empty."""

    def __init__(
        self,
        out_features: int,
        in_features: int,
        bias: bool,
        device: torch.device,
        dtype: torch.dtype,
        ops: ModelOps = TORCH_OPS,
    ):
        super().__init__()
        self.weight = _empty(out_features, in_features, device=device, dtype=dtype)
        self.bias = _empty(out_features, device=device, dtype=dtype) if bias else None
        self.ops = ops
        self.packed: PackedLinearWeight | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            out = self.packed.matmul(x)
            return out if self.bias is None else out + self.bias
        return self.ops.linear(x, self.weight, self.bias)

    def pack(self, packed: PackedLinearWeight) -> None:
        """Multiply by ``packed`` from now on and free the dense weight."""
        self.packed = packed
        self.weight = nn.Parameter(self.weight.new_empty(0), requires_grad=False)


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float, ops: ModelOps, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        self.weight = _empty(size, device=device, dtype=dtype)
        self.eps = eps
        self.ops = ops

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops.rms_norm(x, self.weight, self.eps)

    def add_forward(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(norm(residual + x), residual + x)``: the residual add fused with the norm that follows it."""
        return self.ops.add_rms_norm(x, residual, self.weight, self.eps)


class Attention(nn.Module):
    """Self-attention over this rank's heads (``config`` is the rank's shape); the output projection's partial sums
    are all-reduced over the tensor-parallel group."""

    def __init__(
        self,
        config: ModelConfig,
        layer_id: int,
        rope: RotaryEmbedding,
        ops: ModelOps,
        device,
        dtype,
        tp: TensorParallel,
    ) -> None:
        super().__init__()
        self.layer_id = layer_id
        self.config = config
        self.rope = rope
        self.tp = tp
        c = config
        self.qkv_proj = Linear(c.q_size + 2 * c.kv_size, c.hidden_size, c.attention_bias, device, dtype, ops)
        self.o_proj = Linear(c.hidden_size, c.q_size, False, device, dtype, ops)

    def forward(self, hidden: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        c = self.config
        q, k, v = self.qkv_proj(hidden).split([c.q_size, c.kv_size, c.kv_size], dim=-1)
        q = q.view(-1, c.num_heads, c.head_dim)
        k = k.view(-1, c.num_kv_heads, c.head_dim)
        v = v.view(-1, c.num_kv_heads, c.head_dim)
        # Rotation and the KV store in one operation (one kernel on the fused path); attention then reads the pool.
        pool = batch.attention.kv_pool
        store = KVStore(v, pool.k[self.layer_id], pool.v[self.layer_id], batch.out_cache_loc)
        q, k = self.rope(batch.positions, q, k, store)
        out = batch.attention.forward(q, k, v, self.layer_id, batch, kv_stored=True)
        return self.tp.all_reduce(self.o_proj(out.reshape(-1, c.q_size)))


class MLP(nn.Module):
    """SwiGLU over this rank's slice of the intermediate size; the down projection's partial sums are all-reduced."""

    def __init__(self, config: ModelConfig, ops: ModelOps, device, dtype, tp: TensorParallel) -> None:
        super().__init__()
        self.ops = ops
        self.tp = tp
        self.gate_up_proj = Linear(2 * config.intermediate_size, config.hidden_size, False, device, dtype, ops)
        self.down_proj = Linear(config.hidden_size, config.intermediate_size, False, device, dtype, ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tp.all_reduce(self.down_proj(self.ops.silu_and_mul(self.gate_up_proj(x))))


class DecoderLayer(nn.Module):
    """Pre-norm block. The residual stream travels beside the block's output (``residual``) so that each residual
    add is fused with the norm after it; the sums are the reference's ``h + attn(norm(h))`` and ``h + mlp(...)``.

    The residual stream is kept in ``residual_dtype`` (float32 for 16-bit models): rounding the running sum to
    bfloat16 after every block is the largest single source of bfloat16 error, and it costs one float32 vector per
    token to avoid."""

    def __init__(
        self,
        config: ModelConfig,
        layer_id: int,
        rope: RotaryEmbedding,
        ops: ModelOps,
        device,
        dtype,
        residual_dtype: torch.dtype | None = None,
        tp: TensorParallel | None = None,
    ):
        super().__init__()
        tp = tp or TensorParallel.single()
        self.residual_dtype = residual_dtype or dtype
        eps = config.rms_norm_eps
        self.input_layernorm = RMSNorm(config.hidden_size, eps, ops, device, dtype)
        self.self_attn = Attention(config, layer_id, rope, ops, device, dtype, tp)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps, ops, device, dtype)
        self.mlp = MLP(config, ops, device, dtype, tp)

    def forward(
        self, hidden: torch.Tensor, residual: torch.Tensor | None, batch: ForwardBatch
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(block output, residual stream before it)``; ``residual`` is None for the first layer."""
        if residual is None:
            residual, hidden = hidden.to(self.residual_dtype), self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm.add_forward(hidden, residual)
        hidden, residual = self.post_attention_layernorm.add_forward(self.self_attn(hidden, batch), residual)
        return self.mlp(hidden), residual


class LlamaForCausalLM(nn.Module):
    """Token ids in, logits of the rows the batch asks to sample out.

    With tensor parallelism (``tp``), every rank of the group builds this model from the whole model's config and
    holds its part (``tensor_parallel.py``): ``config`` is then the rank's shape and ``full_config`` the model's; every
    rank returns the full logits."""

    def __init__(
        self,
        config: ModelConfig,
        max_position: int,
        device: torch.device,
        dtype: torch.dtype,
        ops: ModelOps = TORCH_OPS,
        residual_dtype: torch.dtype | None = None,
        tp: TensorParallel | None = None,
    ) -> None:
        """``residual_dtype``: the residual stream's dtype; by default float32 for 16-bit models (see
        ``DecoderLayer``), else ``dtype``. ``tp``: this process's tensor-parallel rank (default: the whole model)."""
        super().__init__()
        self.tp = tp = tp or TensorParallel.single()
        self.full_config = config
        self.config = config = tp.local_config(config)
        self.vocab_start = tp.vocab_start(self.full_config)
        self.ops = ops
        if residual_dtype is None:
            residual_dtype = torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype
        self.rope = RotaryEmbedding(config, max_position, device, dtype, ops)
        self.embed_tokens = _empty(config.vocab_size, config.hidden_size, device=device, dtype=dtype)
        self.layers = nn.ModuleList(
            DecoderLayer(config, i, self.rope, ops, device, dtype, residual_dtype, tp) for i in range(config.num_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, ops, device, dtype)
        self.lm_head = (
            self.embed_tokens
            if config.tie_word_embeddings
            else _empty(config.vocab_size, config.hidden_size, device=device, dtype=dtype)
        )
        self.head_packed: PackedLinearWeight | None = None

    @torch.inference_mode()
    def forward(self, batch: ForwardBatch) -> torch.Tensor:
        hidden = self._embed(batch.input_ids)
        residual = None
        for layer in self.layers:
            hidden, residual = layer(hidden, residual, batch)
        # Only the rows that are sampled need the last residual add, the norm and the (vocabulary-sized) head.
        if not batch.samples_every_row:
            rows = batch.sample_indices
            hidden, residual = hidden[rows], (None if residual is None else residual[rows])
        if residual is None:
            hidden = self.norm(hidden)
        else:
            hidden, _ = self.norm.add_forward(hidden, residual)
        if self.head_packed is not None:
            logits = self.head_packed.matmul(hidden)
        else:
            logits = self.ops.linear(hidden, self.lm_head, None)
        return self.tp.gather_vocab(logits, self.full_config.vocab_size).float()

    def _embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Embedding rows of ``input_ids``; with a vocabulary slice per rank, ids outside this rank's slice give
        zeros and the all-reduce sums the one rank's row that holds each id."""
        if not self.tp.enabled:
            return F.embedding(input_ids, self.embed_tokens)
        local = input_ids - self.vocab_start
        outside = (local < 0) | (local >= self.config.vocab_size)
        hidden = F.embedding(local.masked_fill(outside, 0), self.embed_tokens)
        return self.tp.all_reduce(hidden.masked_fill(outside.unsqueeze(-1), 0.0))

    # ---- weights -------------------------------------------------------------------------------------------------

    def parameter_table(self) -> dict[str, torch.Tensor]:
        """Every weight by its HF name, pointing into the fused tensors (views, so copying into them loads)."""
        c = self.config
        table: dict[str, torch.Tensor] = {
            "model.embed_tokens.weight": self.embed_tokens,
            "model.norm.weight": self.norm.weight,
        }
        if not c.tie_word_embeddings:
            table["lm_head.weight"] = self.lm_head
        for i, layer in enumerate(self.layers):
            p = f"model.layers.{i}."
            qkv = layer.self_attn.qkv_proj
            q, k, v = qkv.weight.split([c.q_size, c.kv_size, c.kv_size], dim=0)
            table |= {
                p + "self_attn.q_proj.weight": q,
                p + "self_attn.k_proj.weight": k,
                p + "self_attn.v_proj.weight": v,
            }
            if qkv.bias is not None:
                qb, kb, vb = qkv.bias.split([c.q_size, c.kv_size, c.kv_size], dim=0)
                table |= {
                    p + "self_attn.q_proj.bias": qb,
                    p + "self_attn.k_proj.bias": kb,
                    p + "self_attn.v_proj.bias": vb,
                }
            gate, up = layer.mlp.gate_up_proj.weight.split(c.intermediate_size, dim=0)
            table |= {
                p + "self_attn.o_proj.weight": layer.self_attn.o_proj.weight,
                p + "mlp.gate_proj.weight": gate,
                p + "mlp.up_proj.weight": up,
                p + "mlp.down_proj.weight": layer.mlp.down_proj.weight,
                p + "input_layernorm.weight": layer.input_layernorm.weight,
                p + "post_attention_layernorm.weight": layer.post_attention_layernorm.weight,
            }
        return table

    def pack_weights(self, blocks: Callable[[str], BlockWeights | None]) -> int:
        """Keep the projections (and the head) whose checkpoint tensors ``blocks`` gives packed (``packed_weights.py``)
        instead of dense; a fused projection is packed when all its parts are. Returns how many were packed. The
        embedding stays dense (a lookup reads a few rows); a tied head is packed from the embedding's blocks."""
        if self.tp.enabled:
            raise ValueError("packed weights are not available with tensor parallelism")
        packed = 0
        for i, layer in enumerate(self.layers):
            p = f"model.layers.{i}."
            for linear, parts in (
                (layer.self_attn.qkv_proj, ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
                (layer.self_attn.o_proj, ("self_attn.o_proj",)),
                (layer.mlp.gate_up_proj, ("mlp.gate_proj", "mlp.up_proj")),
                (layer.mlp.down_proj, ("mlp.down_proj",)),
            ):
                found = [blocks(f"{p}{part}.weight") for part in parts]
                fused = None if None in found else concat_blocks(found)
                if fused is not None:
                    linear.pack(PackedLinearWeight(fused))
                    packed += 1
        tied = self.config.tie_word_embeddings
        head = blocks("model.embed_tokens.weight" if tied else "lm_head.weight")
        if head is not None:
            self.head_packed = PackedLinearWeight(head, shared_dense=self.embed_tokens.data if tied else None)
            if not tied:
                self.lm_head = nn.Parameter(self.lm_head.new_empty(0), requires_grad=False)
            packed += 1
        return packed

    @torch.no_grad()
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy ``(hf_name, tensor)`` pairs of the whole model into it (this rank's part of each, with tensor
        parallelism); every parameter must be given exactly once."""
        table = self.parameter_table()
        missing = set(table)
        for name, tensor in self.tp.shard_all(weights, self.full_config):
            if name == "lm_head.weight" and self.config.tie_word_embeddings:
                continue  # some tied checkpoints still ship the head; the embedding is authoritative
            target = table.get(name)
            if target is None:
                continue  # e.g. rotary inv_freq buffers in old checkpoints
            if tuple(tensor.shape) != tuple(target.shape):
                raise ModelLoadError(
                    f"tensor {name} has shape {tuple(tensor.shape)}, the config implies {tuple(target.shape)}"
                )
            target.copy_(tensor)
            missing.discard(name)
        if missing:
            raise ModelLoadError(f"the checkpoint lacks {len(missing)} tensors, e.g. {sorted(missing)[:3]}")
