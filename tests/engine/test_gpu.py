"""The engine on a CUDA GPU (run on the lent GPU machine; skipped elsewhere): the same checks as on CPU."""

from __future__ import annotations

import random

import pytest
import torch

from plait.engine import EngineConfig, EngineCore, GenerateRequest, SamplingParams
from tests.conftest import run_to_completion

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _core(device: str, dtype: str, **overrides) -> EngineCore:
    config = EngineConfig(model="smollm2-135m", weights="dummy", device=device, dtype=dtype, seed=3, **overrides)
    return EngineCore(config)


def _cpu_twin(gpu: EngineCore) -> EngineCore:
    """A CPU float32 core with the GPU core's weights (dummy weights are seeded per device)."""
    cpu = _core("cpu", "float32", kv_slots=4096)
    cpu.model.load_state_dict({k: v.float().cpu() for k, v in gpu.model.state_dict().items()})
    return cpu


def test_gpu_logits_match_cpu_reference():
    gpu = _core("cuda", "float32", kv_slots=4096)
    cpu = _cpu_twin(gpu)
    ids = [random.Random(0).randrange(256) for _ in range(200)]
    reference = cpu.prompt_logits(ids)
    ours = gpu.prompt_logits(ids).cpu()
    assert ((ours - reference).abs().max() / reference.abs().max()) < 1e-3


def test_gpu_greedy_decoding_matches_cpu_and_is_batch_invariant():
    rng = random.Random(1)
    prompts = [[rng.randrange(256) for _ in range(rng.randint(5, 120))] for _ in range(8)]
    sampling = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)

    def requests(tag: str) -> list[GenerateRequest]:
        return [
            GenerateRequest(prompt_token_ids=p, sampling=sampling, request_id=f"{tag}{i}")
            for i, p in enumerate(prompts)
        ]

    gpu_core = _core("cuda", "float32", kv_slots=4096)
    cpu = run_to_completion(_cpu_twin(gpu_core), requests("x"))
    batched = run_to_completion(gpu_core, requests("x"))
    alone = {f"x{i}": run_to_completion(gpu_core, [r])[f"x{i}"] for i, r in enumerate(requests("x"))}
    assert batched == alone
    agree = sum(batched[k][0] == cpu[k][0] for k in cpu)
    assert agree >= 7, f"only {agree}/8 greedy sequences match the CPU reference"


def test_gpu_randomized_requests_with_host_tier_leak_nothing():
    rng = random.Random(2)
    core = _core("cuda", "bfloat16", kv_slots=600, host_kv_slots=400, max_context=512, max_running=16)
    shared = [[rng.randrange(256) for _ in range(100)] for _ in range(4)]
    finished = 0
    for round_ in range(6):
        batch = []
        for i in range(12):
            prompt = rng.choice(shared) + [rng.randrange(256) for _ in range(rng.randint(1, 60))]
            sampling = SamplingParams(
                max_tokens=rng.randint(1, 30), temperature=rng.choice([0.0, 1.0]), n=rng.choice([1, 2])
            )
            batch.append(GenerateRequest(prompt_token_ids=prompt, sampling=sampling, request_id=f"g{round_}-{i}"))
        for request in batch:
            core.add_request(request)
        while core.has_work():
            finished += sum(1 for d in core.step() if d.finish_reason)
            core.check_invariants()
    stats = core.stats()
    assert stats.cached_prefix_tokens > 0 and stats.evictions > 0
    assert core.kv_in_use() == 0
    core.flush_prefix_cache()
    assert core.allocator.num_free == core.kv_slots


@pytest.mark.parametrize("batch", [1, 4, 64, 200])
def test_gpu_triton_graphs_decode_like_eager(batch: int):
    """Decode CUDA graphs (every bucket's split count, the scratch they capture) give the eager path's tokens."""
    rng = random.Random(batch)
    prompts = [[rng.randrange(256) for _ in range(rng.randint(5, 300))] for _ in range(batch)]
    sampling = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)

    def run(graphs: str) -> tuple[dict, int]:
        core = _core("cuda", "float32", kv_slots=120_000, attention_backend="triton", cuda_graphs=graphs)
        requests = [
            GenerateRequest(prompt_token_ids=p, sampling=sampling, request_id=f"r{i}") for i, p in enumerate(prompts)
        ]
        waste = [torch.empty(1 << 20, device="cuda") for _ in range(64)]  # churn the allocator between steps
        out = run_to_completion(core, requests)
        del waste
        return out, core.runner.graph_steps

    eager, eager_replays = run("off")
    graphed, replays = run("on")
    assert eager_replays == 0 and replays > 0
    same = sum(graphed[k][0] == eager[k][0] for k in eager)
    assert same >= batch - max(1, batch // 32), f"{same}/{batch} sequences decode the same with and without graphs"


def test_gpu_a_prefix_loaded_back_from_the_host_tier_gives_the_same_tokens():
    """A prompt's KV is evicted to the host tier (asynchronous write-back) under pressure from other prompts, then
    the prompt comes again: it is served from the host tier and the greedy tokens are those of its first run."""
    rng = random.Random(5)
    core = _core("cuda", "float32", kv_slots=512, host_kv_slots=2048, max_context=512, max_running=8)
    prompt = [rng.randrange(256) for _ in range(200)]
    sampling = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    first = run_to_completion(core, [GenerateRequest(prompt_token_ids=prompt, sampling=sampling, request_id="a")])
    for i in range(6):  # each needs most of the pool: the first prompt's KV goes to the host
        other = [rng.randrange(256) for _ in range(300)]
        run_to_completion(core, [GenerateRequest(prompt_token_ids=other, sampling=sampling, request_id=f"p{i}")])
        core.check_invariants()
    assert core.stats().write_backs > 0
    hits = core.stats().host_hit_tokens
    again = run_to_completion(core, [GenerateRequest(prompt_token_ids=prompt, sampling=sampling, request_id="b")])
    assert core.stats().host_hit_tokens - hits > 100
    assert again["b"] == first["a"]
    core.check_invariants()
    assert core.kv_in_use() == 0
