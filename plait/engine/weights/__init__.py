"""Weight sources: GGUF files (dequantised), HF safetensors directories, and random weights of a named shape.

Each source yields ``(hf_name, tensor)`` pairs that ``LlamaForCausalLM.load_weights`` copies into the model.
"""

from __future__ import annotations

from plait.engine.weights.dummy_weights import dummy_weights
from plait.engine.weights.gguf_weights import GGUFCheckpoint
from plait.engine.weights.safetensors_weights import SafetensorsCheckpoint

__all__ = ["GGUFCheckpoint", "SafetensorsCheckpoint", "dummy_weights"]
