"""A GGUF checkpoint written out as an HF model folder (``config.json``, ``model.safetensors``, the tokenizer files):
what a server that does not read GGUF (vLLM's CPU backend, HF transformers) loads to run the same weights.

The weights are the GGUF's dequantized to float32 in HF layout (Q/K rows un-permuted, as plait itself loads them),
so the folder holds exactly the model that plait's float32 path runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from plait.engine.weights.gguf_weights import GGUFCheckpoint

_SOURCE_FILE = "plait_source.json"  # which GGUF (path, size, mtime) a folder was written from


def _source_stamp(gguf_path: Path) -> dict[str, object]:
    stat = gguf_path.stat()
    return {"gguf": str(gguf_path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def export_safetensors(gguf_path: str | Path, out_dir: str | Path) -> Path:
    """Write ``gguf_path`` as an HF folder at ``out_dir`` (reused when it was written from the same file)."""
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    stamp = _source_stamp(gguf_path)
    marker = out_dir / _SOURCE_FILE
    if marker.is_file() and json.loads(marker.read_text()) == stamp:
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = GGUFCheckpoint(gguf_path)
    c = checkpoint.config
    tensors = {name: t.contiguous() for name, t in checkpoint.weights(torch.float32)}
    save_file(tensors, out_dir / "model.safetensors")
    config = {
        "architectures": ["Qwen2ForCausalLM" if c.architecture == "qwen2" else "LlamaForCausalLM"],
        "model_type": c.architecture,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_layers,
        "num_attention_heads": c.num_heads,
        "num_key_value_heads": c.num_kv_heads,
        "head_dim": c.head_dim,
        "vocab_size": c.vocab_size,
        "max_position_embeddings": c.max_position,
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_theta,
        "tie_word_embeddings": c.tie_word_embeddings,
        "attention_bias": c.attention_bias,
        "hidden_act": "silu",
        "torch_dtype": "float32",
    }
    if c.rope_scaling is not None:
        config["rope_scaling"] = {"type": c.rope_scaling.kind, "factor": c.rope_scaling.factor}
    (out_dir / "config.json").write_text(json.dumps(config, indent=1))
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    tokenizer.save_pretrained(str(out_dir))
    marker.write_text(json.dumps(stamp))
    return out_dir
