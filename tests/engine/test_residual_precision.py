"""The float32 residual stream of 16-bit models: closer to the float32 model than a bfloat16 stream."""

from __future__ import annotations

import torch

from plait.cache import KVPool, ReqToTokenPool
from plait.engine.attention.torch_backend import TorchAttentionBackend
from plait.engine.forward_batch import ForwardBatch, SequenceLayout
from plait.engine.model import LlamaForCausalLM
from plait.engine.model_loader import resolve_model
from plait.engine.weights.dummy_weights import dummy_weights

TOKENS = 40


CONFIG = resolve_model("smollm2-135m", "dummy").config  # 30 layers: rounding errors have room to add up


def _float32_weights() -> dict[str, torch.Tensor]:
    model = LlamaForCausalLM(CONFIG, 256, torch.device("cpu"), torch.float32)
    dummy_weights(model, seed=0)
    return {name: t.clone() for name, t in model.parameter_table().items()}


WEIGHTS = _float32_weights()  # every variant gets these, rounded to its dtype (random draws differ by dtype)


def _prefill_logits(dtype: torch.dtype, residual_dtype: torch.dtype | None) -> torch.Tensor:
    config = CONFIG
    model = LlamaForCausalLM(config, 256, torch.device("cpu"), dtype, residual_dtype=residual_dtype)
    model.load_weights(WEIGHTS.items())
    pool = KVPool(config.num_layers, TOKENS + 1, config.num_kv_heads, config.head_dim, dtype, "cpu")
    table = ReqToTokenPool(1, TOKENS + 1, torch.device("cpu"))
    slots = torch.arange(1, TOKENS + 1)
    table.write(0, 0, slots)
    attention = TorchAttentionBackend(pool, table, config.head_dim**-0.5)
    ids = torch.randint(0, 1000, (TOKENS,), generator=torch.Generator().manual_seed(1))
    batch = ForwardBatch(
        input_ids=ids,
        positions=torch.arange(TOKENS),
        out_cache_loc=slots,
        sample_indices=torch.arange(TOKENS),
        num_decode=0,
        layouts=[SequenceLayout(0, 0, TOKENS)],
        attention=attention,
    )
    batch.attn_meta = attention.prepare(batch)
    return model(batch)


def test_float32_residual_stream_is_the_default_and_is_more_precise():
    exact = _prefill_logits(torch.float32, None)
    default = _prefill_logits(torch.bfloat16, None)
    rounded = _prefill_logits(torch.bfloat16, torch.bfloat16)

    def rel(x: torch.Tensor) -> float:
        return float((x - exact).norm() / exact.norm())

    assert torch.equal(default, _prefill_logits(torch.bfloat16, torch.float32))  # float32 is the default
    assert rel(default) < 0.85 * rel(rounded), (rel(default), rel(rounded))
