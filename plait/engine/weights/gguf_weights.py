"""GGUF checkpoints: the model config from metadata and weights dequantised with the ``gguf`` package.

llama.cpp's converter permutes the rows of Q and K for ``llama``-architecture files (its RoPE rotates adjacent
pairs, HF's rotates halves); we undo that permutation so the model code is the same for every source.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from plait.engine.errors import ModelLoadError, ModelNotFoundError
from plait.engine.gguf_file import GGUFFile
from plait.engine.model_config import ModelConfig, RopeScaling
from plait.engine.packed_weights import PACKABLE_TYPES, BlockWeights, read_blocks

_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def unpermute_rotary(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Invert llama.cpp's Q/K row permutation (adjacent-pair RoPE layout -> rotate-half layout)."""
    rows = weight.shape[0]
    half = rows // num_heads // 2
    return weight.reshape(num_heads, half, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


class GGUFCheckpoint:
    """An opened GGUF file: ``config``, ``metadata`` (every key but the tokenizer's, which ``Tokenizer.from_gguf``
    reads) and the weights as HF-named tensors."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelNotFoundError(f"model file not found: {self.path}")
        try:
            self.file = GGUFFile(self.path, keep=lambda key: not key.startswith("tokenizer."))
        except (OSError, ValueError, struct.error) as error:  # UnicodeDecodeError is a ValueError
            raise ModelLoadError(f"{self.path} is not a readable GGUF file: {error}") from None
        self.metadata = self.file.metadata
        self.config = self._read_config()
        self._by_hf_name: dict[str | None, Any] | None = None

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def _read_config(self) -> ModelConfig:
        arch = self.get("general.architecture")
        if arch not in ("llama", "qwen2", "mistral"):
            raise ModelLoadError(
                f"{self.path.name}: unsupported GGUF architecture '{arch}'; supported: llama, mistral, qwen2"
            )
        tensor_names = {t.name for t in self.file.tensors}
        if "token_embd.weight" not in tensor_names:
            raise ModelLoadError(f"{self.path.name} holds no token embedding (is it a vocabulary-only file?)")

        def need(key: str) -> Any:
            value = self.get(f"{arch}.{key}")
            if value is None:
                raise ModelLoadError(f"{self.path.name}: metadata key '{arch}.{key}' is missing")
            return value

        num_heads = int(need("attention.head_count"))
        hidden = int(need("embedding_length"))
        vocab = self.get(f"{arch}.vocab_size") or self.file.array_lengths.get("tokenizer.ggml.tokens")
        if not vocab:
            vocab = next(t for t in self.file.tensors if t.name == "token_embd.weight").shape[-1]
        scaling = None
        if self.get(f"{arch}.rope.scaling.type") == "linear":
            scaling = RopeScaling("linear", float(self.get(f"{arch}.rope.scaling.factor")))
        return ModelConfig(
            architecture="llama" if arch == "mistral" else arch,
            hidden_size=hidden,
            intermediate_size=int(need("feed_forward_length")),
            num_layers=int(need("block_count")),
            num_heads=num_heads,
            num_kv_heads=int(self.get(f"{arch}.attention.head_count_kv", num_heads)),
            vocab_size=int(vocab),
            max_position=int(need("context_length")),
            head_dim=int(self.get(f"{arch}.attention.key_length", hidden // num_heads)),
            rms_norm_eps=float(need("attention.layer_norm_rms_epsilon")),
            rope_theta=float(self.get(f"{arch}.rope.freq_base", 10000.0)),
            rope_scaling=scaling,
            tie_word_embeddings="output.weight" not in tensor_names,
            attention_bias="blk.0.attn_q.bias" in tensor_names,
            name=str(self.get("general.name", self.path.stem)),
        )

    def weights(self, dtype: torch.dtype = torch.float32) -> Iterator[tuple[str, torch.Tensor]]:
        """Dequantised weights in HF naming (float32 on the CPU, then cast to ``dtype``)."""
        import gguf

        permute_qk = self.get("general.architecture") in ("llama", "mistral")
        for tensor in self.file.tensors:
            name = _hf_name(tensor.name)
            if name is None:
                continue
            quant_type = gguf.GGMLQuantizationType(tensor.type_id)  # a known type: GGUFFile checked it
            try:
                array = gguf.quants.dequantize(self.file.tensor_array(tensor), quant_type)
            except NotImplementedError:
                raise ModelLoadError(
                    f"{self.path.name}: tensor {tensor.name} uses quantisation {quant_type.name}, "
                    "which the gguf package cannot dequantise"
                ) from None
            except Exception as error:
                raise ModelLoadError(f"{self.path.name}: tensor {tensor.name} is corrupt: {error}") from None
            weight = torch.from_numpy(np.require(array, dtype=np.float32, requirements=["C", "W"]))
            if permute_qk and name.endswith(("q_proj.weight", "q_proj.bias")):
                weight = unpermute_rotary(weight, self.config.num_heads)
            elif permute_qk and name.endswith(("k_proj.weight", "k_proj.bias")):
                weight = unpermute_rotary(weight, self.config.num_kv_heads)
            yield name, weight.to(dtype)

    def packed_blocks(self, hf_name: str) -> BlockWeights | None:
        """The tensor called ``hf_name`` as integer codes and block scales (``packed_weights.py``), with Q/K rows
        un-permuted as in ``weights``; None when it is absent or not of a packable type."""
        if self._by_hf_name is None:
            self._by_hf_name = {_hf_name(t.name): t for t in self.file.tensors}
        tensor = self._by_hf_name.get(hf_name)
        if tensor is None:
            return None
        import gguf

        type_name = gguf.GGMLQuantizationType(tensor.type_id).name
        if type_name not in PACKABLE_TYPES:
            return None
        blocks = read_blocks(self.file.tensor_array(tensor), type_name)
        if self.get("general.architecture") in ("llama", "mistral"):
            if hf_name.endswith("q_proj.weight"):
                return blocks.permute_rows(lambda t: unpermute_rotary(t, self.config.num_heads))
            if hf_name.endswith("k_proj.weight"):
                return blocks.permute_rows(lambda t: unpermute_rotary(t, self.config.num_kv_heads))
        return blocks


def _hf_name(gguf_name: str) -> str | None:
    """``blk.3.attn_q.weight`` -> ``model.layers.3.self_attn.q_proj.weight``; None for tensors we do not use."""
    parts = gguf_name.split(".")
    if parts[0] == "blk" and len(parts) == 4 and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{parts[3]}"
    if len(parts) == 2 and parts[0] in _GLOBAL_NAMES:
        return f"{_GLOBAL_NAMES[parts[0]]}.{parts[1]}"
    return None
