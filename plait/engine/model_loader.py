"""Open a model (``default``, a GGUF file, an HF directory or a dummy shape) and build it on a device."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from plait.engine.default_model import default_model_path
from plait.engine.errors import ModelLoadError, ModelNotFoundError
from plait.engine.model import LlamaForCausalLM
from plait.engine.model_config import DUMMY_SHAPES, ModelConfig
from plait.engine.model_ops import TORCH_OPS, ModelOps
from plait.engine.tensor_parallel import TensorParallel
from plait.engine.weights import GGUFCheckpoint, SafetensorsCheckpoint, dummy_weights

WEIGHT_FORMATS = ("auto", "gguf", "safetensors", "dummy")


@dataclass
class ModelSource:
    """A resolved model: its config and where its weights (and tokenizer) come from."""

    config: ModelConfig
    weights_format: str  # gguf | safetensors | dummy
    path: Path | None  # the GGUF file or HF directory; None for dummy shapes
    checkpoint: GGUFCheckpoint | SafetensorsCheckpoint | None


def resolve_model(model: str = "default", weights: str = "auto") -> ModelSource:
    """Find ``model``: ``default``, a dummy shape name (with ``weights='dummy'``), a ``.gguf`` file or an HF dir."""
    if weights not in WEIGHT_FORMATS:
        raise ModelLoadError(f"unknown weights format '{weights}'; choose one of {', '.join(WEIGHT_FORMATS)}")
    if weights == "dummy" or (weights == "auto" and model in DUMMY_SHAPES):
        if model == "default":
            model = "smollm2-135m"
        if model not in DUMMY_SHAPES:
            raise ModelNotFoundError(f"unknown dummy shape '{model}'; available: {', '.join(DUMMY_SHAPES)}")
        return ModelSource(DUMMY_SHAPES[model], "dummy", None, None)
    path = default_model_path() if model == "default" else Path(model).expanduser()
    if not path.exists():
        raise ModelNotFoundError(
            f"model '{model}' not found: give 'default', a .gguf file, an HF model directory, "
            f"or a dummy shape ({', '.join(DUMMY_SHAPES)}) with --weights dummy"
        )
    if path.is_dir() and weights in ("auto", "safetensors"):
        checkpoint = SafetensorsCheckpoint(path)
        return ModelSource(checkpoint.config, "safetensors", path, checkpoint)
    if path.is_file() and weights in ("auto", "gguf"):
        gguf_checkpoint = GGUFCheckpoint(path)
        return ModelSource(gguf_checkpoint.config, "gguf", path, gguf_checkpoint)
    raise ModelLoadError(f"cannot read '{path}' as {weights} weights (a GGUF file or an HF safetensors directory)")


def build_model(
    source: ModelSource,
    max_position: int,
    device: torch.device,
    dtype: torch.dtype,
    seed: int = 0,
    ops: ModelOps = TORCH_OPS,
    tp: TensorParallel | None = None,
    packed: bool = False,
) -> LlamaForCausalLM:
    """Instantiate the model on ``device`` (its elementwise operations from ``ops``; ``tp``: this rank's part of
    it) and fill its weights; ``packed``: keep a GGUF's Q4_0/Q4_1/Q8_0 projections packed (``packed_weights.py``)."""
    model = LlamaForCausalLM(source.config, max_position, device, dtype, ops, tp=tp)
    if source.checkpoint is None:
        dummy_weights(model, seed)
    else:
        model.load_weights((name, t.to(device)) for name, t in source.checkpoint.weights(dtype))
        if packed and isinstance(source.checkpoint, GGUFCheckpoint):
            model.pack_weights(source.checkpoint.packed_blocks)
    return model.eval()
