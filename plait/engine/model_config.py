"""The shape of a Llama-family model, from GGUF metadata, an HF ``config.json`` or a named dummy shape."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from plait.engine.errors import ModelLoadError

SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2")


@dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling. ``kind`` is ``llama3`` (Llama 3.1+ band-wise scaling) or ``linear``."""

    kind: str
    factor: float
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position: int = 8192


@dataclass(frozen=True)
class ModelConfig:
    """Everything the model code needs to know about a Llama-family checkpoint."""

    architecture: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    vocab_size: int
    max_position: int
    head_dim: int = 0  # 0: hidden_size // num_heads
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # Qwen2: biases on the Q, K and V projections
    name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise ModelLoadError(
                f"unsupported architecture '{self.architecture}'; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        if self.head_dim == 0:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        if self.num_heads % self.num_kv_heads:
            raise ModelLoadError(
                f"num_heads ({self.num_heads}) is not a multiple of num_kv_heads ({self.num_kv_heads})"
            )

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    def num_parameters(self) -> int:
        """Parameter count (embeddings counted once when tied)."""
        attn = self.hidden_size * (self.q_size + 2 * self.kv_size) + self.q_size * self.hidden_size
        mlp = 3 * self.hidden_size * self.intermediate_size
        bias = (self.q_size + 2 * self.kv_size) if self.attention_bias else 0
        per_layer = attn + bias + mlp + 2 * self.hidden_size
        embed = self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * per_layer + embed + self.hidden_size

    def with_max_position(self, max_position: int) -> ModelConfig:
        return replace(self, max_position=max_position)


_LLAMA3_SCALING = RopeScaling(
    "llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position=8192
)
_LLAMA31_SCALING = replace(_LLAMA3_SCALING, factor=8.0)

# Named shapes for random ("dummy") weights: the published configs of these models.
DUMMY_SHAPES: dict[str, ModelConfig] = {
    "llama-3.2-1b": ModelConfig(
        "llama", 2048, 8192, 16, 32, 8, 128256, 131072, head_dim=64, rope_theta=500000.0,
        rope_scaling=_LLAMA3_SCALING, tie_word_embeddings=True, name="llama-3.2-1b",
    ),
    "llama-3.1-8b": ModelConfig(
        "llama", 4096, 14336, 32, 32, 8, 128256, 131072, rope_theta=500000.0, rope_scaling=_LLAMA31_SCALING,
        name="llama-3.1-8b",
    ),
    "qwen2.5-7b": ModelConfig(
        "qwen2", 3584, 18944, 28, 28, 4, 152064, 32768, rms_norm_eps=1e-6, rope_theta=1000000.0,
        attention_bias=True, name="qwen2.5-7b",
    ),
    "smollm2-135m": ModelConfig(
        "llama", 576, 1536, 30, 9, 3, 49152, 8192, rope_theta=100000.0, tie_word_embeddings=True, name="smollm2-135m",
    ),
    # A few-MB shape for fast tests of engine mechanics.
    "tiny": ModelConfig("llama", 64, 128, 2, 4, 2, 512, 4096, rope_theta=10000.0, name="tiny"),
}  # fmt: skip


def config_from_hf(hf: dict[str, Any], name: str = "") -> ModelConfig:
    """Build a ``ModelConfig`` from an HF ``config.json`` dictionary."""
    model_type = hf.get("model_type", "llama")
    arch = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2"}.get(model_type)
    if arch is None:
        raise ModelLoadError(f"unsupported model_type '{model_type}'; supported: {', '.join(SUPPORTED_ARCHITECTURES)}")
    try:
        num_heads = hf["num_attention_heads"]
        scaling = hf.get("rope_scaling") or (hf.get("rope_parameters") or {})
        return ModelConfig(
            architecture=arch,
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=num_heads,
            num_kv_heads=hf.get("num_key_value_heads", num_heads),
            vocab_size=hf["vocab_size"],
            max_position=hf.get("max_position_embeddings", 4096),
            head_dim=hf.get("head_dim") or 0,
            rms_norm_eps=hf.get("rms_norm_eps", 1e-5),
            rope_theta=hf.get("rope_theta", scaling.get("rope_theta", 10000.0)),
            rope_scaling=rope_scaling_from_dict(scaling),
            tie_word_embeddings=hf.get("tie_word_embeddings", False),
            attention_bias=hf.get("attention_bias", arch == "qwen2"),
            name=name,
        )
    except KeyError as missing:
        raise ModelLoadError(f"config.json lacks {missing}") from None


def rope_scaling_from_dict(scaling: dict[str, Any] | None) -> RopeScaling | None:
    """Parse an HF ``rope_scaling`` dict; ``None`` or type ``default`` mean no scaling."""
    if not scaling:
        return None
    kind = scaling.get("rope_type") or scaling.get("type") or "default"
    if kind == "default":
        return None
    if kind == "llama3":
        return RopeScaling(
            "llama3",
            factor=float(scaling["factor"]),
            low_freq_factor=float(scaling.get("low_freq_factor", 1.0)),
            high_freq_factor=float(scaling.get("high_freq_factor", 4.0)),
            original_max_position=int(scaling.get("original_max_position_embeddings", 8192)),
        )
    if kind == "linear":
        return RopeScaling("linear", factor=float(scaling["factor"]))
    raise ModelLoadError(f"unsupported rope scaling type '{kind}'; supported: llama3, linear")
