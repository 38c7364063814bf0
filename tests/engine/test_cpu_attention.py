"""The CPU serving backend against the reference backend: decodes with and without shared prefixes (several groups,
one unrelated sequence), padded extends with cached prefixes, float32 and bfloat16, and the engine end to end."""

from __future__ import annotations

import pytest
import torch

from plait.cache import KVPool, ReqToTokenPool
from plait.engine.attention.cpu_backend import MIN_SHARED_PREFIX, CpuAttentionBackend
from plait.engine.attention.torch_backend import TorchAttentionBackend
from plait.engine.forward_batch import ForwardBatch, SequenceLayout


def _step(prefixes: list[tuple[int, int]], extends: list[tuple[int, int]], dtype: torch.dtype, seed: int = 0):
    """A one-layer pool and a step: ``prefixes`` are decodes ``(shared group or -1, own prefix length)`` (a group's
    decodes start with the same 60 slots), ``extends`` are ``(prefix_len, new_len)``. Returns both backends' outputs
    and the CPU backend's metadata."""
    torch.manual_seed(seed)
    heads, kv_heads, dim = 6, 2, 32
    pool = KVPool(1, 4096, kv_heads, dim, dtype, "cpu")
    table = ReqToTokenPool(16, 1024, "cpu")
    free = iter(torch.randperm(4095).add(1).tolist())
    group_slots = {g: [next(free) for _ in range(60)] for g, _ in prefixes if g >= 0}
    layouts, new_slots, row = [], [], 0
    for group, own in prefixes:
        slots = (group_slots[group] if group >= 0 else []) + [next(free) for _ in range(own + 1)]
        layouts.append(SequenceLayout(row, len(slots) - 1, 1))
        table.write(row, 0, torch.tensor(slots))
        new_slots.append(slots[-1])
        row += 1
    for prefix_len, new_len in extends:
        slots = [next(free) for _ in range(prefix_len + new_len)]
        layouts.append(SequenceLayout(row, prefix_len, new_len))
        table.write(row, 0, torch.tensor(slots))
        new_slots += slots[prefix_len:]
        row += 1
    every = torch.arange(1, 4096)
    pool.write(0, every, torch.randn(len(every), kv_heads, dim), torch.randn(len(every), kv_heads, dim))
    tokens = len(new_slots)
    q, k, v = (torch.randn(tokens, h, dim).to(dtype) for h in (heads, kv_heads, kv_heads))
    outputs, metas = [], []
    for backend_class in (TorchAttentionBackend, CpuAttentionBackend):
        backend = backend_class(pool, table, dim**-0.5)
        batch = ForwardBatch(
            input_ids=torch.zeros(tokens, dtype=torch.int64),
            positions=torch.zeros(tokens, dtype=torch.int64),
            out_cache_loc=torch.tensor(new_slots),
            sample_indices=torch.zeros(0, dtype=torch.int64),
            num_decode=len(prefixes),
            layouts=layouts,
            attention=backend,
        )
        batch.attn_meta = backend.prepare(batch)
        outputs.append(backend.forward(q, k, v, 0, batch).float())
        metas.append(batch.attn_meta)
    return outputs[0], outputs[1], metas[1]


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_decodes_with_two_shared_groups_and_an_unrelated_one_match_the_reference(dtype, tolerance):
    ref, out, meta = _step([(0, 5), (0, 40), (1, 0), (1, 17), (-1, 70), (0, 12)], [], dtype)
    assert sorted(p.members.tolist() for p in meta.shared) == [[0, 1, 5], [2, 3]]
    assert all(p.slots.numel() >= 60 for p in meta.shared)
    assert (out - ref).abs().max().item() <= tolerance * max(1.0, ref.abs().max().item())


def test_a_group_sharing_less_than_the_minimum_is_attended_per_sequence():
    """Decodes whose rows share only their first slots (below MIN_SHARED_PREFIX) take the plain path."""
    ref, out, meta = _step([(-1, MIN_SHARED_PREFIX // 2), (-1, 3)], [], torch.float32)
    assert meta.shared == []
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_padded_extends_with_cached_prefixes_match_the_reference(dtype):
    """Chunks of different lengths after different cached prefixes (one without), beside decodes, in one step."""
    ref, out, meta = _step([(0, 3), (0, 9)], [(0, 17), (50, 4), (200, 31)], dtype)
    assert meta.max_new == 31 and meta.extend.slots.shape == (3, 231)
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    assert (out - ref).abs().max().item() <= tolerance * max(1.0, ref.abs().max().item())


def test_the_engine_on_the_cpu_backend_decodes_what_the_reference_backend_does():
    """Greedy tokens of concurrent requests sharing a system prompt (plus one that does not), float32, chunked
    prefill: identical on both backends; the CPU backend is what ``auto`` picks on the CPU."""
    from plait.engine import EngineConfig, EngineCore, GenerateRequest, SamplingParams

    assert EngineConfig().resolve_attention_backend(torch.device("cpu")) == "cpu"
    system = list(range(200, 300))
    prompts = [system + list(range(400 + i, 410 + 5 * i)) for i in range(5)] + [list(range(1000, 1090))]
    outputs = {}
    for backend in ("torch", "cpu"):
        core = EngineCore(
            EngineConfig(
                model="smollm2-135m", weights="dummy", dtype="float32", attention_backend=backend, chunk_size=64
            )
        )
        sampling = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
        requests = [GenerateRequest(prompt_token_ids=p, sampling=sampling) for p in prompts]
        for request in requests:
            core.add_request(request)
        tokens: dict[str, list[int]] = {}
        while core.has_work():
            for delta in core.step():
                tokens.setdefault(delta.request_id, []).extend(delta.token_ids)
        outputs[backend] = [tokens[r.request_id] for r in requests]
    assert outputs["cpu"] == outputs["torch"]
    assert all(len(t) == 12 for t in outputs["cpu"])
