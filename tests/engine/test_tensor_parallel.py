"""Tensor parallelism on CPU (gloo): a model split over 2 and 4 ranks gives the logits of the whole model.

Each rank is a process; float32 at a small shape, so the only difference is the order of the all-reduce's sums.
Covered: head and MLP splits, KV heads replicated when there are fewer than ranks, a vocabulary that does not
divide (padding), Q/K/V biases, dummy weights (each rank draws the whole matrix and keeps its part) and checkpoint
weights (each rank loads its part of the whole tensors).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from plait.cache import KVPool, ReqToTokenPool
from plait.engine import EngineConfig, EngineCore, GenerateRequest, SamplingParams
from plait.engine.attention.torch_backend import TorchAttentionBackend
from plait.engine.errors import InvalidRequestError, ModelLoadError
from plait.engine.forward_batch import ForwardBatch, SequenceLayout
from plait.engine.model import LlamaForCausalLM
from plait.engine.model_config import DUMMY_SHAPES, ModelConfig
from plait.engine.tensor_parallel import TensorParallel, check_tensor_parallel, init_tensor_parallel
from plait.engine.weights.dummy_weights import dummy_weights
from tests.conftest import TINY as TINY_ENGINE

TINY = DUMMY_SHAPES["tiny"]  # 4 heads, 2 KV heads, MLP 128, vocabulary 512
SHAPES = {
    "tiny": TINY,
    # 509 tokens: the vocabulary is padded to a multiple of the group; Q/K/V biases as in Qwen2
    "odd-vocab-bias": dataclasses.replace(TINY, vocab_size=509, attention_bias=True, architecture="qwen2"),
}
PROMPT = 12


def _logits(model: LlamaForCausalLM, config: ModelConfig) -> torch.Tensor:
    """Logits of a 12-token prefill, then of one decode step that reads the KV the prefill wrote."""
    local = model.config
    pool = KVPool(local.num_layers, 32, local.num_kv_heads, local.head_dim, torch.float32, "cpu")
    table = ReqToTokenPool(1, 32, torch.device("cpu"))
    attention = TorchAttentionBackend(pool, table, local.head_dim**-0.5)
    ids = torch.randint(0, config.vocab_size, (PROMPT + 1,), generator=torch.Generator().manual_seed(3))
    outputs = []
    for start, new in ((0, PROMPT), (PROMPT, 1)):
        slots = torch.arange(1 + start, 1 + start + new)
        table.write(0, start, slots)
        batch = ForwardBatch(
            input_ids=ids[start : start + new],
            positions=torch.arange(start, start + new),
            out_cache_loc=slots,
            sample_indices=torch.arange(new),
            num_decode=0 if start == 0 else 1,
            layouts=[SequenceLayout(0, start, new)],
            attention=attention,
        )
        batch.attn_meta = attention.prepare(batch)
        outputs.append(model(batch))
    return torch.cat(outputs)


def _whole_model(config: ModelConfig) -> LlamaForCausalLM:
    model = LlamaForCausalLM(config, 64, torch.device("cpu"), torch.float32)
    dummy_weights(model, seed=5)
    return model


def _rank_main(rank: int, size: int, init_file: str, out_dir: str, shape: str, loaded: bool) -> None:
    torch.set_num_threads(1)
    config = SHAPES[shape]
    tp = init_tensor_parallel(rank, size, f"file://{init_file}", "gloo")
    model = LlamaForCausalLM(config, 64, torch.device("cpu"), torch.float32, tp=tp)
    if loaded:  # the whole model's tensors by HF name, as a checkpoint gives them
        model.load_weights(_whole_model(config).parameter_table().items())
    else:
        dummy_weights(model, seed=5)
    logits = _logits(model, config)
    torch.save(logits, Path(out_dir) / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.parametrize("size", [2, 4])
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("loaded", [False, True], ids=["dummy", "checkpoint"])
def test_split_model_gives_the_whole_models_logits(tmp_path, size, shape, loaded):
    expected = _logits(_whole_model(SHAPES[shape]), SHAPES[shape])
    mp.spawn(_rank_main, args=(size, str(tmp_path / "init"), str(tmp_path), shape, loaded), nprocs=size, join=True)
    for rank in range(size):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)  # only the sums' order differs


def test_a_rank_holds_its_part_of_each_weight():
    config = SHAPES["odd-vocab-bias"]
    tp = TensorParallel(rank=3, size=4)
    local = tp.local_config(config)
    assert (local.num_heads, local.num_kv_heads, local.intermediate_size, local.vocab_size) == (1, 1, 32, 128)
    embed = torch.arange(config.vocab_size, dtype=torch.float32).unsqueeze(1).expand(-1, 64)
    part = tp.shard("model.embed_tokens.weight", embed, config)
    assert part.shape == (128, 64)
    assert part[:125, 0].tolist() == list(range(384, 509)) and not part[125:].any()  # padding rows are zero
    k = torch.arange(config.kv_size, dtype=torch.float32).unsqueeze(1)
    assert tp.shard("model.layers.0.self_attn.k_proj.weight", k, config)[:, 0].tolist() == list(range(16, 32))
    assert tp.shard("model.norm.weight", torch.ones(64), config).shape == (64,)


def test_shapes_that_do_not_split_are_refused_with_what_to_change():
    smollm = DUMMY_SHAPES["smollm2-135m"]  # 9 heads, 3 KV heads
    with pytest.raises(ModelLoadError, match="9 attention heads, not divisible by tensor parallel size 2"):
        check_tensor_parallel(smollm, 2)
    with pytest.raises(ModelLoadError, match="KV heads"):
        check_tensor_parallel(dataclasses.replace(TINY, num_heads=6, num_kv_heads=3), 2)
    with pytest.raises(ModelLoadError, match="must be >= 1"):
        check_tensor_parallel(TINY, 0)
    check_tensor_parallel(DUMMY_SHAPES["llama-3.1-8b"], 8)


def _generate(core: EngineCore, requests: list[GenerateRequest]) -> dict[tuple[str, int], list[int]]:
    for request in requests:
        core.add_request(request)
    tokens: dict[tuple[str, int], list[int]] = {}
    while core.has_work():
        for delta in core.step():
            tokens.setdefault((delta.request_id, delta.index), []).extend(delta.token_ids)
        core.check_invariants()
    assert core.kv_in_use() == 0
    return tokens


def _requests() -> list[GenerateRequest]:
    shared = "a shared system prompt that several requests start with; " * 3
    greedy = SamplingParams(max_tokens=12, temperature=0.0)
    return [
        GenerateRequest(prompt=shared + "first", sampling=greedy, request_id="a"),
        GenerateRequest(prompt=shared + "second", sampling=greedy, request_id="b"),  # a prefix-cache hit
        GenerateRequest(
            prompt="fan out", sampling=SamplingParams(max_tokens=8, temperature=0.9, seed=3, n=3), request_id="c"
        ),
        GenerateRequest(prompt="x" * 300, sampling=SamplingParams(max_tokens=4, temperature=0.0), request_id="d"),
    ]


@pytest.mark.parametrize("overlap", ["off", "on"])
def test_tensor_parallel_engine_generates_what_one_rank_does(overlap):
    """The engine path: rank 0 schedules and samples, a worker process runs each step with it (prefix hits, shared
    rows of n > 1, chunked prefill, and, with the overlap loop, tokens still on the device)."""
    config = {**TINY_ENGINE, "overlap": overlap, "chunk_size": 64, "kv_slots": 2048}
    whole = EngineCore(EngineConfig(**config))
    expected = _generate(whole, _requests())
    split = EngineCore(EngineConfig(**config, tensor_parallel=2))
    try:
        assert split.model.config.num_heads == 2 and split.kv_pool.k[0].shape[1] == 1  # half the heads here
        assert _generate(split, _requests()) == expected
        with pytest.raises(InvalidRequestError, match="tensor parallelism"):
            split.prompt_logits([1, 2, 3])
    finally:
        split.close()
    assert all(not worker.is_alive() for worker in split.tp_group.workers)


def test_tensor_parallel_settings_that_cannot_work_are_refused():
    with pytest.raises(InvalidRequestError, match="must be >= 1"):
        EngineConfig(**TINY_ENGINE, tensor_parallel=0).validate()
    with pytest.raises(InvalidRequestError, match="simulated"):
        EngineConfig(**TINY_ENGINE, tensor_parallel=2, simulate="h100").validate()
    with pytest.raises(InvalidRequestError, match="host KV tier"):
        EngineConfig(**TINY_ENGINE, tensor_parallel=2, host_kv_slots=1024).validate()
