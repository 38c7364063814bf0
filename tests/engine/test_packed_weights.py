"""Packed GGUF weights (Q4_0, Q4_1, Q8_0 through torch's int4 weight-only kernel) against the float32 path: the
blocks decode to what gguf dequantizes, and the products and a whole model's logits stay well inside the error the
quantization itself makes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from plait.engine.default_model import default_model_path  # noqa: E402
from plait.engine.packed_weights import (  # noqa: E402
    DENSE_MIN_ROWS,
    SHARED_DENSE_MIN_ROWS,
    PackedLinearWeight,
    read_blocks,
)

TYPES = ["Q4_0", "Q4_1", "Q8_0"]


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("type_name", TYPES)
def test_blocks_decode_to_what_gguf_dequantizes(type_name):
    weights = np.random.default_rng(0).standard_normal((48, 96)).astype(np.float32)
    quant = gguf.GGMLQuantizationType[type_name]
    raw = gguf.quants.quantize(weights, quant)
    blocks = read_blocks(raw, type_name)
    expected = torch.from_numpy(gguf.quants.dequantize(raw, quant))
    assert torch.equal(blocks.dequantize(), expected)


@pytest.mark.parametrize("type_name", TYPES)
@pytest.mark.parametrize("rows", [1, 5, 64, DENSE_MIN_ROWS])
def test_a_packed_product_is_within_a_fraction_of_the_quantization_error(type_name, rows):
    rng = np.random.default_rng(1)
    weights = rng.standard_normal((160, 256)).astype(np.float32)
    raw = gguf.quants.quantize(weights, gguf.GGMLQuantizationType[type_name])
    blocks = read_blocks(raw, type_name)
    x = torch.from_numpy(rng.standard_normal((rows, 256)).astype(np.float32))
    exact = x @ torch.from_numpy(weights).t()  # what the unquantized weights give
    dense = x @ blocks.dequantize().t()  # the float32 path: the same quantized weights, dense
    packed = PackedLinearWeight(blocks).matmul(x)
    assert packed.dtype == torch.float32 and packed.shape == (rows, 160)
    # The kernel rounds its output to bfloat16 (0.2-0.3%): half of Q4's error, three quarters of Q8_0's (0.5%).
    assert _relative(packed, dense) <= (0.75 if type_name == "Q8_0" else 0.5) * _relative(dense, exact)


@pytest.mark.parametrize("type_name", ["Q4_0", "Q4_1"])
def test_the_expanded_matrix_is_the_dequantized_one_in_bfloat16(type_name):
    weights = np.random.default_rng(3).standard_normal((64, 96)).astype(np.float32)
    blocks = read_blocks(gguf.quants.quantize(weights, gguf.GGMLQuantizationType[type_name]), type_name)
    dense = PackedLinearWeight(blocks).dense()
    assert dense.dtype == torch.bfloat16
    expected = blocks.dequantize()
    # bfloat16 rounding of the scale, the offset and their sum: a few units in the last place of the largest weight.
    assert (dense.float() - expected).abs().max().item() <= 2**-6 * expected.abs().max().item()


def test_a_head_with_a_dense_bfloat16_copy_multiplies_it_from_a_few_rows():
    """The tied head's Q8_0 blocks beside the embedding the model holds anyway: one row takes the 4-bit terms,
    SHARED_DENSE_MIN_ROWS rows the dense copy; both agree within bfloat16 rounding."""
    weights = np.random.default_rng(4).standard_normal((96, 64)).astype(np.float32)
    blocks = read_blocks(gguf.quants.quantize(weights, gguf.GGMLQuantizationType.Q8_0), "Q8_0")
    dense = blocks.dequantize().to(torch.bfloat16)
    head = PackedLinearWeight(blocks, shared_dense=dense)
    assert head.shared_dense is dense
    assert PackedLinearWeight(blocks, shared_dense=dense.float()).shared_dense is None  # float32 would be slower
    x = torch.randn(SHARED_DENSE_MIN_ROWS, 64)
    many = head.matmul(x)
    torch.testing.assert_close(many, torch.nn.functional.linear(x.bfloat16(), dense).float())
    one = head.matmul(x[:1])
    assert _relative(one, many[:1]) <= 1e-2


def _write_llama(path, weights: dict[str, np.ndarray], types: dict[str, str]) -> None:
    """A two-layer Llama GGUF with ``weights`` (GGUF names) stored as ``types`` (F32 where absent)."""
    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_name("tiny-packed")
    writer.add_context_length(256)
    writer.add_embedding_length(64)
    writer.add_block_count(2)
    writer.add_feed_forward_length(128)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    for name, array in weights.items():
        type_name = types.get(name, "F32")
        if type_name == "F32":
            writer.add_tensor(name, array)
        else:
            quant = gguf.GGMLQuantizationType[type_name]
            writer.add_tensor(name, gguf.quants.quantize(array, quant), raw_dtype=quant)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_a_packed_models_logits_stay_within_a_fraction_of_the_quantization_error(tmp_path):
    """The same random model three ways: float32 weights, its Q4_0/Q4_1/Q8_0 GGUF dequantized to float32, and that
    GGUF packed. The packed logits differ from the dequantized ones by well under what quantizing did."""
    from plait.engine import EngineConfig, EngineCore

    tokenizer = default_model_path()  # the vocabulary (49152 tokens) of the default model
    rng = np.random.default_rng(2)
    vocab, hidden = 49152, 64
    weights = {"token_embd.weight": rng.standard_normal((vocab, hidden)).astype(np.float32) * 0.5}
    weights["output_norm.weight"] = np.ones(hidden, dtype=np.float32)
    types = {"token_embd.weight": "Q8_0"}
    for i in range(2):
        shapes = {"attn_q": (64, 64), "attn_k": (32, 64), "attn_v": (32, 64), "attn_output": (64, 64)}
        shapes |= {"ffn_gate": (128, 64), "ffn_up": (128, 64), "ffn_down": (64, 128)}
        for part, shape in shapes.items():
            weights[f"blk.{i}.{part}.weight"] = (rng.standard_normal(shape) / np.sqrt(shape[1])).astype(np.float32)
            types[f"blk.{i}.{part}.weight"] = "Q4_0" if part == "ffn_down" else "Q4_1"
        weights[f"blk.{i}.attn_norm.weight"] = np.ones(hidden, dtype=np.float32)
        weights[f"blk.{i}.ffn_norm.weight"] = np.ones(hidden, dtype=np.float32)
    _write_llama(tmp_path / "float.gguf", weights, {})
    _write_llama(tmp_path / "quant.gguf", weights, types)
    prompt = rng.integers(100, vocab, 40).tolist()

    def logits(name: str, packed: str) -> tuple[torch.Tensor, EngineCore]:
        config = EngineConfig(
            model=str(tmp_path / name), tokenizer=str(tokenizer), dtype="float32", packed_weights=packed
        )
        core = EngineCore(config)
        return core.prompt_logits(prompt), core

    exact, _ = logits("float.gguf", "off")
    dense, _ = logits("quant.gguf", "off")
    packed, core = logits("quant.gguf", "on")
    model = core.model
    assert model.head_packed is not None and all(
        linear.packed is not None
        for layer in model.layers
        for linear in (layer.self_attn.qkv_proj, layer.self_attn.o_proj, layer.mlp.gate_up_proj, layer.mlp.down_proj)
    )
    assert _relative(packed, dense) <= 0.5 * _relative(dense, exact)


def test_the_default_model_runs_packed_on_the_cpu_and_dense_when_asked():
    """The default model (Q4_1 layers, Q8_0 embedding) is packed by default on the CPU; an explicit float32 dtype or
    ``packed_weights='off'`` dequantizes it; packed and dense answer a prompt with close logits (bfloat16
    activations in the products are the only difference)."""
    from plait.engine import EngineConfig, EngineCore

    assert EngineConfig().resolve_packed_weights(torch.device("cpu"))
    assert not EngineConfig(dtype="float32").resolve_packed_weights(torch.device("cpu"))
    assert not EngineConfig(packed_weights="off").resolve_packed_weights(torch.device("cpu"))
    prompt = list(range(300, 340))
    packed_core = EngineCore(EngineConfig(dtype="float32", packed_weights="on"))
    dense_core = EngineCore(EngineConfig(dtype="float32"))
    assert packed_core.model.head_packed is not None and dense_core.model.head_packed is None
    packed, dense = packed_core.prompt_logits(prompt), dense_core.prompt_logits(prompt)
    assert _relative(packed, dense) <= 0.05
    assert (packed.argmax(-1) == dense.argmax(-1)).float().mean().item() >= 0.9
