"""Model shapes (named dummy shapes, HF config.json parsing), RoPE frequency scaling and the GGUF Q/K unpermute."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from plait.engine.errors import ModelLoadError
from plait.engine.model_config import DUMMY_SHAPES, ModelConfig, RopeScaling, config_from_hf, rope_scaling_from_dict
from plait.engine.rope import RotaryEmbedding, inverse_frequencies
from plait.engine.weights.gguf_weights import unpermute_rotary

LLAMA_31_8B_CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009],
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 14336,
    "max_position_embeddings": 131072,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "vocab_size": 128256,
}

QWEN2_7B_CONFIG: dict[str, Any] = {
    "architectures": ["Qwen2ForCausalLM"],
    "attention_dropout": 0.0,
    "hidden_act": "silu",
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "max_position_embeddings": 32768,
    "max_window_layers": 28,
    "model_type": "qwen2",
    "num_attention_heads": 28,
    "num_hidden_layers": 28,
    "num_key_value_heads": 4,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000.0,
    "sliding_window": 131072,
    "tie_word_embeddings": False,
    "use_sliding_window": False,
    "vocab_size": 152064,
}


# --- named dummy shapes ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "published"),
    [("llama-3.2-1b", 1.24e9), ("llama-3.1-8b", 8.03e9), ("qwen2.5-7b", 7.6e9), ("smollm2-135m", 1.35e8)],
)
def test_dummy_shape_parameter_count_matches_published(name: str, published: float) -> None:
    assert DUMMY_SHAPES[name].num_parameters() == pytest.approx(published, rel=0.02)


def test_llama_parameter_counts_are_exact() -> None:
    # The safetensors totals of the released checkpoints.
    assert DUMMY_SHAPES["llama-3.2-1b"].num_parameters() == 1_235_814_400
    assert DUMMY_SHAPES["llama-3.1-8b"].num_parameters() == 8_030_261_248


def test_qwen_parameter_count_includes_qkv_biases() -> None:
    assert DUMMY_SHAPES["qwen2.5-7b"].num_parameters() == 7_615_616_512


def test_dummy_shape_names_match_their_keys() -> None:
    for name, config in DUMMY_SHAPES.items():
        assert config.name == name


def test_head_dim_defaults_to_hidden_over_heads() -> None:
    assert DUMMY_SHAPES["llama-3.1-8b"].head_dim == 128
    assert DUMMY_SHAPES["llama-3.2-1b"].head_dim == 64  # given explicitly
    assert DUMMY_SHAPES["tiny"].head_dim == 16


def test_q_and_kv_sizes() -> None:
    config = DUMMY_SHAPES["llama-3.1-8b"]
    assert config.q_size == 4096
    assert config.kv_size == 1024


def test_tied_embeddings_are_counted_once() -> None:
    untied = ModelConfig("llama", 64, 128, 2, 4, 2, 512, 4096, tie_word_embeddings=False)
    tied = ModelConfig("llama", 64, 128, 2, 4, 2, 512, 4096, tie_word_embeddings=True)
    assert untied.num_parameters() - tied.num_parameters() == 512 * 64


def test_with_max_position_returns_a_copy() -> None:
    config = DUMMY_SHAPES["tiny"]
    capped = config.with_max_position(128)
    assert capped.max_position == 128
    assert config.max_position == 4096
    assert capped.hidden_size == config.hidden_size


def test_unsupported_architecture_is_rejected() -> None:
    with pytest.raises(ModelLoadError, match="gpt2"):
        ModelConfig("gpt2", 64, 128, 2, 4, 2, 512, 4096)


def test_heads_not_multiple_of_kv_heads_is_rejected() -> None:
    with pytest.raises(ModelLoadError, match="multiple"):
        ModelConfig("llama", 64, 128, 2, 6, 4, 512, 4096)


# --- config_from_hf ----------------------------------------------------------------------------------------------


def test_config_from_hf_parses_llama_31() -> None:
    config = config_from_hf(LLAMA_31_8B_CONFIG, name="llama-3.1-8b")
    assert config.architecture == "llama"
    assert (config.hidden_size, config.intermediate_size, config.num_layers) == (4096, 14336, 32)
    assert (config.num_heads, config.num_kv_heads, config.head_dim) == (32, 8, 128)
    assert config.vocab_size == 128256
    assert config.max_position == 131072
    assert config.rope_theta == 500000.0
    assert config.rope_scaling == RopeScaling(
        "llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position=8192
    )
    assert not config.attention_bias
    assert not config.tie_word_embeddings
    assert config == DUMMY_SHAPES["llama-3.1-8b"]


def test_config_from_hf_parses_qwen2_with_attention_bias() -> None:
    config = config_from_hf(QWEN2_7B_CONFIG, name="qwen2.5-7b")
    assert config.architecture == "qwen2"
    assert config.attention_bias is True
    assert config.rope_scaling is None
    assert config.rms_norm_eps == 1e-6
    assert config.rope_theta == 1e6
    assert (config.num_heads, config.num_kv_heads, config.head_dim) == (28, 4, 128)
    assert config == DUMMY_SHAPES["qwen2.5-7b"]


def test_config_from_hf_defaults_kv_heads_to_heads() -> None:
    hf = {k: v for k, v in LLAMA_31_8B_CONFIG.items() if k != "num_key_value_heads"}
    assert config_from_hf(hf).num_kv_heads == 32


def test_config_from_hf_reads_explicit_head_dim() -> None:
    assert config_from_hf({**LLAMA_31_8B_CONFIG, "head_dim": 64}).head_dim == 64


def test_config_from_hf_explicit_attention_bias_wins() -> None:
    assert config_from_hf({**QWEN2_7B_CONFIG, "attention_bias": False}).attention_bias is False
    assert config_from_hf({**LLAMA_31_8B_CONFIG, "attention_bias": True}).attention_bias is True


def test_config_from_hf_mistral() -> None:
    hf = {**LLAMA_31_8B_CONFIG, "model_type": "mistral", "rope_scaling": None}
    config = config_from_hf(hf)
    assert config.architecture == "mistral"
    assert config.rope_scaling is None


@pytest.mark.parametrize("model_type", ["gpt2", "gemma2", "phi3"])
def test_config_from_hf_unsupported_model_type_raises(model_type: str) -> None:
    with pytest.raises(ModelLoadError, match=model_type):
        config_from_hf({**LLAMA_31_8B_CONFIG, "model_type": model_type})


def test_config_from_hf_missing_key_raises_model_load_error() -> None:
    hf = {k: v for k, v in LLAMA_31_8B_CONFIG.items() if k != "hidden_size"}
    with pytest.raises(ModelLoadError, match="hidden_size"):
        config_from_hf(hf)


def test_rope_scaling_from_dict_variants() -> None:
    assert rope_scaling_from_dict(None) is None
    assert rope_scaling_from_dict({}) is None
    assert rope_scaling_from_dict({"rope_type": "default", "rope_theta": 1e4}) is None
    assert rope_scaling_from_dict({"type": "linear", "factor": 2}) == RopeScaling("linear", factor=2.0)
    with pytest.raises(ModelLoadError, match="yarn"):
        rope_scaling_from_dict({"rope_type": "yarn", "factor": 4.0})


# --- RoPE --------------------------------------------------------------------------------------------------------


def test_unscaled_inverse_frequencies() -> None:
    inv_freq = inverse_frequencies(8, 10000.0, None)
    expected = [1.0 / 10000.0 ** (i / 8) for i in range(0, 8, 2)]
    assert inv_freq.dtype == torch.float64
    assert inv_freq.tolist() == pytest.approx(expected, rel=1e-12)


def test_linear_scaling_divides_every_frequency() -> None:
    plain = inverse_frequencies(64, 10000.0, None)
    scaled = inverse_frequencies(64, 10000.0, RopeScaling("linear", factor=4.0))
    torch.testing.assert_close(scaled, plain / 4.0)


def test_llama3_scaling_keeps_high_and_divides_low_frequencies() -> None:
    scaling = DUMMY_SHAPES["llama-3.1-8b"].rope_scaling
    assert scaling is not None
    plain = inverse_frequencies(128, 500000.0, None)
    scaled = inverse_frequencies(128, 500000.0, scaling)
    wavelen = 2 * math.pi / plain
    high = wavelen < scaling.original_max_position / scaling.high_freq_factor
    low = wavelen > scaling.original_max_position / scaling.low_freq_factor
    assert high.any()
    assert low.any()
    assert bool(high[0]) and bool(low[-1])
    torch.testing.assert_close(scaled[high], plain[high], rtol=0, atol=0)
    torch.testing.assert_close(scaled[low], plain[low] / scaling.factor)
    assert scaled[0] == plain[0]  # the highest frequency is untouched
    assert scaled[-1] == pytest.approx(float(plain[-1]) / scaling.factor)  # the lowest divided by factor


def test_llama3_scaling_is_monotone_and_bounded_in_between() -> None:
    scaling = RopeScaling("llama3", factor=32.0)
    plain = inverse_frequencies(64, 500000.0, None)
    ratio = inverse_frequencies(64, 500000.0, scaling) / plain
    assert bool((ratio <= 1.0 + 1e-12).all())
    assert bool((ratio >= 1.0 / 32.0 - 1e-12).all())
    assert bool((ratio[1:] <= ratio[:-1] + 1e-12).all())  # lower frequencies are scaled down at least as much
    medium = (ratio < 1.0 - 1e-9) & (ratio > 1.0 / 32.0 + 1e-9)
    assert medium.any()  # the smooth band exists


def _rope_interleaved(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """llama.cpp's RoPE: rotate adjacent pairs (x[2i], x[2i+1]) by position * inv_freq[i]."""
    angles = positions[:, None].double() * inv_freq[None, :]  # [tokens, dim/2]
    cos, sin = angles.cos()[:, None, :], angles.sin()[:, None, :]
    even, odd = x[..., 0::2].double(), x[..., 1::2].double()
    out = torch.empty_like(x, dtype=torch.float64)
    out[..., 0::2] = even * cos - odd * sin
    out[..., 1::2] = even * sin + odd * cos
    return out


def test_rotary_embedding_rotates_halves_and_preserves_norm() -> None:
    config = DUMMY_SHAPES["tiny"]
    rope = RotaryEmbedding(config, 64, torch.device("cpu"), torch.float32)
    q = torch.randn(5, config.num_heads, config.head_dim, generator=torch.Generator().manual_seed(0))
    k = torch.randn(5, config.num_kv_heads, config.head_dim, generator=torch.Generator().manual_seed(1))
    positions = torch.tensor([0, 1, 7, 30, 63])
    q_rot, k_rot = rope(positions, q, k)
    torch.testing.assert_close(q_rot[0], q[0])  # position 0 is the identity
    torch.testing.assert_close(q_rot.norm(dim=-1), q.norm(dim=-1))
    torch.testing.assert_close(k_rot.norm(dim=-1), k.norm(dim=-1))


# --- GGUF unpermute ----------------------------------------------------------------------------------------------


def _llama_cpp_permute(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """The row permutation llama.cpp's converter applies to Q and K (rotate-half -> adjacent-pair layout)."""
    rows = weight.shape[0]
    return weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


@pytest.mark.parametrize(("n_head", "head_dim", "cols"), [(4, 16, 8), (8, 64, 3), (2, 2, 5), (3, 8, 1)])
def test_unpermute_rotary_inverts_llama_cpp_permutation(n_head: int, head_dim: int, cols: int) -> None:
    weight = torch.randn(n_head * head_dim, cols, generator=torch.Generator().manual_seed(n_head))
    permuted = _llama_cpp_permute(weight, n_head)
    assert not torch.equal(permuted, weight) or head_dim == 2
    assert torch.equal(unpermute_rotary(permuted, n_head), weight)
    assert torch.equal(_llama_cpp_permute(unpermute_rotary(weight, n_head), n_head), weight)


def test_unpermute_rotary_handles_bias_vectors() -> None:
    bias = torch.arange(4 * 8, dtype=torch.float32)
    assert torch.equal(unpermute_rotary(_llama_cpp_permute(bias, 4), 4), bias)


def test_unpermute_rotary_maps_adjacent_pair_rope_to_rotate_half_rope() -> None:
    config = DUMMY_SHAPES["tiny"]
    heads, dim = config.num_heads, config.head_dim
    rope = RotaryEmbedding(config, 32, torch.device("cpu"), torch.float64)
    inv_freq = inverse_frequencies(dim, config.rope_theta, config.rope_scaling)
    positions = torch.tensor([0, 3, 17, 31])
    # A projection output in llama.cpp's layout, and the same one in HF's (unpermuted) layout.
    gguf_q = torch.randn(4, heads * dim, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    hf_q = unpermute_rotary(gguf_q.T, heads).T
    hf_rotated, _ = rope(positions, hf_q.reshape(4, heads, dim), hf_q.reshape(4, heads, dim))
    gguf_rotated = _rope_interleaved(gguf_q.reshape(4, heads, dim), positions, inv_freq)
    expected = unpermute_rotary(gguf_rotated.reshape(4, heads * dim).T, heads).T.reshape(4, heads, dim)
    torch.testing.assert_close(hf_rotated, expected, atol=1e-5, rtol=1e-5)  # the tables are built in float32
