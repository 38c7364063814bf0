"""The CPU serving backend against the reference backend: decodes with and without shared prefixes (several groups,
one unrelated sequence), padded extends with cached prefixes, float32 and bfloat16, and the engine end to end."""

from __future__ import annotations

import pytest
import torch

from plait.cache import KVPool, ReqToTokenPool
from plait.engine.attention.cpu_backend import MIN_SHARED_PREFIX, CpuAttentionBackend, CpuAttentionMeta
from plait.engine.attention.decode_kv_cache import DecodeKVPlan
from plait.engine.attention.torch_backend import TorchAttentionBackend
from plait.engine.forward_batch import ForwardBatch, SequenceLayout


def prepared_batch(backend, out_cache_loc: list[int], num_decode: int, layouts: list) -> ForwardBatch:
    """A step of ``len(out_cache_loc)`` tokens (the first ``num_decode`` decodes) with ``backend``'s metadata."""
    tokens = len(out_cache_loc)
    batch = ForwardBatch(
        input_ids=torch.zeros(tokens, dtype=torch.int64),
        positions=torch.zeros(tokens, dtype=torch.int64),
        out_cache_loc=torch.tensor(out_cache_loc),
        sample_indices=torch.zeros(0, dtype=torch.int64),
        num_decode=num_decode,
        layouts=layouts,
        attention=backend,
    )
    batch.attn_meta = backend.prepare(batch)
    return batch


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
        batch = prepared_batch(backend, new_slots, len(prefixes), layouts)
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
    prefill: identical on both backends (the CPU backend's decode cache kept across the steps); the CPU backend is
    what ``auto`` picks on the CPU."""
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
            if backend == "cpu":  # the runner keys the decode cache by each row's current holder
                held = core.runner.attention.decode_cache.holders
                assert all(epoch == core.req_to_token.epoch(row) > 0 for row, epoch, _ in held)
        outputs[backend] = [tokens[r.request_id] for r in requests]
    assert outputs["cpu"] == outputs["torch"]
    assert all(len(t) == 12 for t in outputs["cpu"])


class _Decoding:
    """Sequences decoding step by step in a ``layers``-layer pool, attended by a reference backend and by one CPU
    backend kept across steps (its decode cache with it). ``start(row, slots)`` gives a row to a new sequence."""

    heads, kv_heads, dim = 6, 2, 32

    def __init__(self, layers: int = 2, dtype: torch.dtype = torch.float32) -> None:
        torch.manual_seed(0)
        self.dtype = dtype
        self.pool = KVPool(layers, 4096, self.kv_heads, self.dim, dtype, "cpu")
        self.table = ReqToTokenPool(16, 1024, "cpu")
        self.free = iter(torch.randperm(4095).add(1).tolist())
        self.reference = TorchAttentionBackend(self.pool, self.table, self.dim**-0.5)
        self.cpu = CpuAttentionBackend(self.pool, self.table, self.dim**-0.5)
        self.slots: dict[int, list[int]] = {}  # row -> the slots of its tokens so far
        self.epochs: dict[int, int] = {}

    def new_slots(self, n: int) -> list[int]:
        """``n`` fresh slots, their K/V written in every layer (a computed prefix)."""
        slots = [next(self.free) for _ in range(n)]
        self.write(slots)
        return slots

    def write(self, slots: list[int]) -> None:
        index = torch.tensor(slots)
        for layer in range(self.pool.num_layers):
            k, v = (torch.randn(len(slots), self.kv_heads, self.dim) for _ in range(2))
            self.pool.write(layer, index, k, v)

    def start(self, row: int, slots: list[int]) -> None:
        self.table.write(row, 0, torch.tensor(slots))
        self.slots[row] = list(slots)
        self.epochs[row] = self.epochs.get(row, 0) + 1

    def step(self, rows: list[int], run_layers: bool = True) -> CpuAttentionMeta:
        """One decode step of the sequences on ``rows``; every layer's outputs of both backends must agree. Returns
        the CPU backend's metadata (``run_layers=False``: prepared only, the layers never run)."""
        new = [next(self.free) for _ in rows]
        layouts = []
        for row, slot in zip(rows, new, strict=True):
            self.slots[row].append(slot)
            self.table.write(row, len(self.slots[row]) - 1, torch.tensor([slot]))
            layouts.append(SequenceLayout(row, len(self.slots[row]) - 1, 1, self.epochs[row]))
        batches = []
        for backend in (self.reference, self.cpu):
            batches.append(prepared_batch(backend, new, len(rows), layouts))
        if not run_layers:
            self.write(new)  # the new tokens' K/V reach the pool, but not through this plan's layers
        for layer in range(self.pool.num_layers if run_layers else 0):
            q, k, v = (torch.randn(len(rows), h, self.dim).to(self.dtype) for h in (self.heads,) + (self.kv_heads,) * 2)
            ref, out = (b.attention.forward(q, k, v, layer, b).float() for b in batches)
            torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
            if batches[1].attn_meta.decode.plan is not None:
                self.check_cache(layer, batches[1].attn_meta.decode.plan)
        return batches[1].attn_meta

    def check_cache(self, layer: int, plan: DecodeKVPlan) -> None:
        """Each lane holds exactly the pool's K/V of its sequence's own slots (what a fresh gather reads)."""
        keys, values = self.cpu.decode_cache.layer(layer, plan)
        for lane in range(plan.order.numel()):
            length = int(plan.lengths[lane])
            own = plan.slots[lane, :length]
            assert torch.equal(keys[lane, :, :length], self.pool.k[layer][own].transpose(0, 1))
            assert torch.equal(values[lane, :, :length], self.pool.v[layer][own].transpose(0, 1))


def test_decodes_over_many_steps_match_the_reference_and_copy_only_new_rows():
    """Three sequences of a shared group and one unrelated decode for 40 steps (the cache grows past its capacity);
    one leaves and a new one joins midway (lanes change hands): every step and layer equals the reference, and a
    sequence that stays copies one row per step."""
    sim = _Decoding()
    system = sim.new_slots(40)
    for row in range(3):
        sim.start(row, system + sim.new_slots(5 + 7 * row))
    sim.start(3, sim.new_slots(20))
    rows = [0, 1, 2, 3]
    capacities = []
    for step in range(40):
        if step == 15:
            rows = [1, 3, 2]  # row 0 leaves, the order changes
        if step == 25:
            sim.start(5, system + sim.new_slots(9))
            rows = [5, 1, 3, 2]
        meta = sim.step(rows)
        plan = meta.decode.plan
        capacities.append(plan.capacity)
        assert sorted(p.members.numel() for p in meta.shared) == [len(rows) - 1]
        kept = [lane for lane in range(len(rows)) if rows[int(plan.order[lane])] in (1, 2) and step > 0]
        assert all(int(plan.copy_from[lane]) == int(plan.lengths[lane]) - 1 for lane in kept)
    assert capacities[-1] > capacities[0]  # it grew, keeping what it held


@pytest.mark.parametrize("reuse", ["new holder, same slots", "same holder, rewritten row"])
def test_a_cached_sequence_whose_row_changed_is_rebuilt_not_served_stale(reuse):
    """After a step, the row's cached slots get other K/V: either a new sequence took the row (a new epoch) and holds
    the same slot ids, whose K/V were rewritten, or the row now names other slots at cached positions. The cache must
    rebuild, not serve what it held; without its checks these outputs would differ from the reference."""
    sim = _Decoding()
    sim.start(0, sim.new_slots(50))
    sim.start(1, sim.new_slots(30))
    sim.step([0, 1])
    if reuse == "new holder, same slots":
        slots = sim.slots[0]
        sim.write(slots)  # the slots were freed, reallocated and computed again by the row's next holder
        sim.start(0, slots)
    else:
        sim.slots[0][10:20] = sim.new_slots(10)  # the row now names other slots at positions the lane holds
        sim.table.write(0, 0, torch.tensor(sim.slots[0]))
    meta = sim.step([0, 1])
    plan = meta.decode.plan
    assert int(plan.copy_from[int(plan.lane_of[0])]) == 0  # rebuilt
    assert int(plan.copy_from[int(plan.lane_of[1])]) == 31  # the other sequence still copies one row


def test_sequences_that_stop_decoding_are_dropped_and_a_step_without_decodes_frees_the_cache():
    sim = _Decoding()
    for row in range(3):
        sim.start(row, sim.new_slots(20 + row))
    sim.step([0, 1, 2])
    assert sim.cpu.decode_cache.num_lanes == 3
    sim.step([1])
    assert sim.cpu.decode_cache.num_lanes == 1 and sim.cpu.decode_cache.holders == [(1, 1, 0)]
    assert sim.cpu.decode_cache.nbytes > 0
    batch = ForwardBatch(
        input_ids=torch.zeros(4, dtype=torch.int64),
        positions=torch.zeros(4, dtype=torch.int64),
        out_cache_loc=torch.tensor(sim.new_slots(4)),
        sample_indices=torch.zeros(0, dtype=torch.int64),
        num_decode=0,
        layouts=[SequenceLayout(2, 0, 4)],
        attention=sim.cpu,
    )
    sim.cpu.prepare(batch)
    assert sim.cpu.decode_cache.num_lanes == 0 and sim.cpu.decode_cache.nbytes == 0


def test_a_step_prepared_but_not_run_leaves_no_layer_stale():
    """A plan that never reached the layers: the next step's layers rebuild instead of applying its increment."""
    sim = _Decoding()
    sim.start(0, sim.new_slots(30))
    sim.start(1, sim.new_slots(12))
    sim.step([0, 1])
    sim.step([0, 1], run_layers=False)
    sim.step([0, 1])


def test_past_its_memory_bound_the_cache_is_emptied_and_the_step_gathers():
    sim = _Decoding()
    sim.start(0, sim.new_slots(30))
    sim.start(1, sim.new_slots(12))
    sim.step([0, 1])
    sim.cpu.decode_cache.max_rows = 40  # two lanes of 31+ rows do not fit
    meta = sim.step([0, 1])
    assert meta.decode.plan is None and sim.cpu.decode_cache.nbytes == 0
    sim.cpu.decode_cache.max_rows = 4096
    assert sim.step([0, 1]).decode.plan is not None
