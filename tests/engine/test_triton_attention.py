"""The Triton attention kernels and backend against a dense float32 reference, and the engine on both backends.

Without CUDA the kernels run through Triton's interpreter at small shapes (this module sets ``TRITON_INTERPRET=1``
before importing triton, or reruns itself in a subprocess when triton was imported earlier without it); with CUDA
the same tests run on the GPU, plus ``gpu``-marked ones at full shapes. bf16 products are computed in float32 under
the interpreter, which multiplies bf16 operands as raw integers (see ``attention_block.block_dot``).
Error measure: per sequence, ``||out - ref||_F / ||ref||_F`` over its tokens, heads and head dims; the largest one
over the batch must stay within the tolerance (1e-2 for bf16/fp16, 1e-4 for float32).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import random
import sys
from types import SimpleNamespace

import pytest
import torch

from tests.engine.triton_interpret import run_interpreted_in_subprocess

if importlib.util.find_spec("triton") is None:
    pytest.skip("the triton attention backend needs the triton package", allow_module_level=True)

HAS_CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if HAS_CUDA else "cpu")
KERNEL_MODULES = (
    "plait.engine.kernels.attention_block",
    "plait.engine.kernels.decode_attention",
    "plait.engine.kernels.extend_attention",
    "plait.engine.attention.triton_backend",
)
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 1e-2, torch.float16: 1e-2}
NUM_KV_HEADS = 2


def _import_kernels() -> tuple[bool, SimpleNamespace]:
    """Import triton and the kernel modules; without CUDA, under Triton's interpreter when still possible.

    ``@triton.jit`` reads ``TRITON_INTERPRET`` when a function is defined, Triton's own library functions
    (``tl.cdiv``, ``tl.sum``, ...) included, so the variable must be set before triton is first imported; it stays
    set, since Triton also reads it at launch (on a machine without CUDA, Triton can only interpret anyway). If
    something imported triton earlier without it, the kernels cannot be interpreted in this process: the tests
    then run in a subprocess (``test_interpreted_in_subprocess``). Returns ``(usable here, modules)``.
    """
    if not HAS_CUDA and "triton" not in sys.modules:
        os.environ["TRITON_INTERPRET"] = "1"
    standard = importlib.import_module("triton.language.standard")
    modules = [importlib.import_module(name) for name in KERNEL_MODULES]
    block, decode = modules[0], modules[1]
    usable = HAS_CUDA or (block.is_interpreted(standard.cdiv) and os.environ.get("TRITON_INTERPRET") == "1")
    if usable and not HAS_CUDA and not block.is_interpreted(decode._decode_split_kernel):
        modules = [importlib.reload(module) for module in modules]  # imported before the variable was set
    return usable, SimpleNamespace(**dict(zip(("block", "decode", "extend", "backend"), modules, strict=True)))


IN_PROCESS, _KERNELS = _import_kernels()


@pytest.fixture
def kernels() -> SimpleNamespace:
    if not IN_PROCESS:
        pytest.skip("triton was imported without TRITON_INTERPRET=1; test_interpreted_in_subprocess runs this")
    return _KERNELS


@pytest.mark.skipif(IN_PROCESS, reason="the kernels run in this process")
def test_interpreted_in_subprocess():
    """The CPU tests of this module in a fresh interpreter with ``TRITON_INTERPRET=1`` set from the start."""
    run_interpreted_in_subprocess(__file__)


# ---- inputs and the dense reference ----------------------------------------------------------------------------


def paged_cache(
    lengths: list[int], kv_heads: int, head_dim: int, dtype: torch.dtype, rng: random.Random
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random K/V pools and a req_to_token table holding ``lengths[i]`` scattered slots in a shuffled row each.
    Returns ``(k_pool, v_pool, table, rows)``; slot 0 (padding) is never used."""
    total = sum(lengths)
    gen = torch.Generator().manual_seed(rng.randrange(2**31))
    k_pool = torch.randn(total + 1, kv_heads, head_dim, generator=gen).to(DEVICE, dtype)
    v_pool = torch.randn(total + 1, kv_heads, head_dim, generator=gen).to(DEVICE, dtype)
    slots = torch.randperm(total, generator=gen) + 1
    num_rows = len(lengths) + 3
    rows = torch.tensor(rng.sample(range(num_rows), len(lengths)))
    table = torch.zeros(num_rows, max(lengths) + 5, dtype=torch.int64)
    start = 0
    for row, length in zip(rows.tolist(), lengths, strict=True):
        table[row, :length] = slots[start : start + length]
        start += length
    return k_pool, v_pool, table.to(DEVICE), rows.to(DEVICE, torch.int32)


def dense_reference(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, positions: torch.Tensor, scale: float):
    """Float32 attention of ``q`` ``[n, heads, dim]`` at ``positions`` over ``keys``/``values`` ``[L, kv_heads,
    dim]``: query ``i`` sees keys ``0..positions[i]``. Computed in query chunks to bound memory."""
    group = q.shape[1] // keys.shape[1]
    k = keys.float().repeat_interleave(group, 1)
    v = values.float().repeat_interleave(group, 1)
    outs = []
    for start in range(0, q.shape[0], 256):
        qc, pos = q[start : start + 256].float(), positions[start : start + 256]
        scores = torch.einsum("nhd,lhd->hnl", qc, k) * scale
        visible = torch.arange(k.shape[0], device=q.device)[None, :] <= pos[:, None]
        outs.append(torch.einsum("hnl,lhd->nhd", scores.masked_fill(~visible, float("-inf")).softmax(-1), v))
    return torch.cat(outs)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref).norm() / ref.norm()).item()


# ---- the two kernels -------------------------------------------------------------------------------------------


def check_decode(kernels, lengths, group, head_dim, dtype, num_splits, rng) -> float:
    """Run the decode kernel on random inputs; the largest per-sequence relative error."""
    k_pool, v_pool, table, rows = paged_cache(lengths, NUM_KV_HEADS, head_dim, dtype, rng)
    q = torch.randn(len(lengths), NUM_KV_HEADS * group, head_dim, device=DEVICE).to(dtype)
    out = torch.full_like(q, float("nan"))
    lens = torch.tensor(lengths, dtype=torch.int32, device=DEVICE)
    scale = head_dim**-0.5
    kernels.decode.decode_attention(q, k_pool, v_pool, table, rows, lens, out, scale, num_splits)
    errors = []
    for i, (row, length) in enumerate(zip(rows.tolist(), lengths, strict=True)):
        slots = table[row, :length]
        ref = dense_reference(q[i : i + 1], k_pool[slots], v_pool[slots], torch.tensor([length - 1]).to(DEVICE), scale)
        errors.append(rel_err(out[i : i + 1], ref))
    return max(errors)


def check_extend(kernels, prefix_lens, new_lens, group, head_dim, dtype, rng) -> float:
    """Run the extend kernel on random inputs (after one decode-like token row, so starts are offset). The new
    tokens' K/V are passed in their query rows and their pool slots are overwritten with NaN first: the kernel must
    read only the cached prefixes through the table."""
    totals = [p + n for p, n in zip(prefix_lens, new_lens, strict=True)]
    k_pool, v_pool, table, rows = paged_cache(totals, NUM_KV_HEADS, head_dim, dtype, rng)
    lead = 1  # a row before the first extend, as a decode token would be
    starts = [lead + sum(new_lens[:i]) for i in range(len(new_lens))]
    q = torch.randn(lead + sum(new_lens), NUM_KV_HEADS * group, head_dim, device=DEVICE).to(dtype)
    k_new = torch.full((q.shape[0], NUM_KV_HEADS, head_dim), float("nan"), device=DEVICE).to(dtype)
    v_new = k_new.clone()
    scale = head_dim**-0.5
    refs = []
    for row, prefix, new, start in zip(rows.tolist(), prefix_lens, new_lens, starts, strict=True):
        slots = table[row, : prefix + new]
        positions = torch.arange(prefix, prefix + new, device=DEVICE)
        refs.append(dense_reference(q[start : start + new], k_pool[slots], v_pool[slots], positions, scale))
        k_new[start : start + new], v_new[start : start + new] = k_pool[slots[prefix:]], v_pool[slots[prefix:]]
    for row, prefix, new in zip(rows.tolist(), prefix_lens, new_lens, strict=True):
        k_pool[table[row, prefix : prefix + new]] = float("nan")
        v_pool[table[row, prefix : prefix + new]] = float("nan")
    out = torch.full_like(q, float("nan"))
    as_tensor = lambda values: torch.tensor(values, dtype=torch.int32, device=DEVICE)  # noqa: E731
    kernels.extend.extend_attention(
        q, k_new, v_new, k_pool, v_pool, table, rows, as_tensor(prefix_lens), as_tensor(new_lens), as_tensor(starts),
        out, scale, max(new_lens),
    )  # fmt: skip
    assert out[:lead].isnan().all(), "rows outside the extends must be left alone"
    errors = [rel_err(out[start : start + new], ref) for start, new, ref in zip(starts, new_lens, refs, strict=True)]
    return max(errors)


SMALL_CASES = [
    (group, head_dim, dtype)
    for dtype in (torch.float32, torch.bfloat16)
    for group in (1, 4, 8)
    for head_dim in (64, 128)
] + [(4, 64, torch.float16)]


@pytest.mark.parametrize(("group", "head_dim", "dtype"), SMALL_CASES)
def test_decode_matches_dense_reference(kernels, group, head_dim, dtype):
    rng = random.Random(f"decode{group}{head_dim}{dtype}")
    lengths = [rng.randint(1, 300) for _ in range(rng.randint(1, 4))]
    lengths[0] = rng.choice([1, 64, 65, 300])  # block edges and the extremes
    auto = kernels.decode.choose_num_kv_splits(len(lengths), NUM_KV_HEADS, max(lengths), DEVICE)
    for num_splits in sorted({1, rng.choice([2, 3, 8]), auto}):
        err = check_decode(kernels, lengths, group, head_dim, dtype, num_splits, rng)
        assert err <= TOLERANCE[dtype], f"lengths {lengths}, splits {num_splits}: rel err {err:.2e}"


@pytest.mark.parametrize(("group", "head_dim", "dtype"), SMALL_CASES)
def test_extend_matches_dense_reference(kernels, group, head_dim, dtype):
    rng = random.Random(f"extend{group}{head_dim}{dtype}")
    batch = rng.randint(2, 3)
    prefix_lens = [0] + [rng.choice([rng.randint(1, 200), 64]) for _ in range(batch - 1)]  # with and without
    new_lens = [rng.randint(1, 100) for _ in range(batch)]
    rng.shuffle(prefix_lens)
    err = check_extend(kernels, prefix_lens, new_lens, group, head_dim, dtype, rng)
    assert err <= TOLERANCE[dtype], f"prefixes {prefix_lens}, new {new_lens}: rel err {err:.2e}"


def test_extend_with_a_padded_head_dim_and_other_tiles_matches_dense_reference(kernels, monkeypatch):
    """Head dim 80 (tiles padded to 128: masked loads) and a tile configuration other than the default."""
    rng = random.Random("extend-padded")
    prefix_lens, new_lens = [0, 70, 33], [45, 17, 64]
    err = check_extend(kernels, prefix_lens, new_lens, 2, 80, torch.float32, rng)
    assert err <= TOLERANCE[torch.float32]
    monkeypatch.setattr(kernels.extend, "block_config", lambda *_: {"BLOCK_M": 32, "BLOCK_N": 32})
    err = check_extend(kernels, prefix_lens, new_lens, 4, 64, torch.float32, rng)
    assert err <= TOLERANCE[torch.float32]
    monkeypatch.setattr(kernels.extend, "block_config", lambda *_: {"BLOCK_M": 32, "BLOCK_N": 64})
    with pytest.raises(ValueError, match="multiple of BLOCK_N"):
        check_extend(kernels, prefix_lens, new_lens, 4, 64, torch.float32, rng)


def test_num_kv_splits_is_bounded_and_follows_length(kernels):
    choose = kernels.decode.choose_num_kv_splits
    cuda = torch.device("cuda")
    for batch in (1, 3, 16, 256):
        for max_len in (1, 100, 4096, 32768):
            splits = choose(batch, 8, max_len, DEVICE)
            assert 1 <= splits <= kernels.decode.MAX_KV_SPLITS
            assert splits <= -(-max_len // kernels.decode.MIN_TOKENS_PER_SPLIT)
    if HAS_CUDA:
        assert choose(1, 8, 32768, cuda) > choose(256, 8, 32768, cuda) == 1


# ---- the backend and the engine ----------------------------------------------------------------------------------


class StepInputs:
    """A one-layer KV pool holding random prefixes for ``layouts`` and the step's new q/k/v and slots."""

    def __init__(self, layouts, heads: int = 8, kv_heads: int = 2, head_dim: int = 64, dtype=torch.bfloat16):
        from plait.cache import KVPool, ReqToTokenPool

        self.layouts, self.scale = layouts, head_dim**-0.5
        self.pool = KVPool(1, 2048, kv_heads, head_dim, dtype, DEVICE)
        self.table = ReqToTokenPool(8, 512, DEVICE)
        free = iter(torch.randperm(2048).add(1).tolist())
        new_slots = []
        for layout in layouts:
            slots = torch.tensor([next(free) for _ in range(layout.prefix_len + layout.new_len)])
            self.table.write(layout.req_row, 0, slots)
            prefix = slots[: layout.prefix_len].to(DEVICE)
            kv = (torch.randn(len(prefix), kv_heads, head_dim, device=DEVICE) for _ in range(2))
            self.pool.write(0, prefix, *kv)
            new_slots.append(slots[layout.prefix_len :])
        self.slots = torch.cat(new_slots).to(DEVICE)
        tokens = len(self.slots)
        self.q, self.k, self.v = (
            torch.randn(tokens, h, head_dim).to(DEVICE, dtype) for h in (heads, kv_heads, kv_heads)
        )

    def run(self, backend, num_decode: int, meta=None, pad: int = 0) -> torch.Tensor:
        """``backend``'s attention output (``pad`` extra decode rows writing slot 0, as in a graph bucket)."""
        from plait.engine.forward_batch import ForwardBatch

        q, k, v = (torch.cat([x, x[:1].expand(pad, -1, -1)]) if pad else x for x in (self.q, self.k, self.v))
        slots = torch.cat([self.slots, torch.zeros(pad, dtype=torch.int64, device=DEVICE)])
        batch = ForwardBatch(
            input_ids=torch.zeros(len(q), dtype=torch.int64, device=DEVICE),
            positions=torch.zeros(len(q), dtype=torch.int64, device=DEVICE),
            out_cache_loc=slots,
            sample_indices=torch.zeros(0, dtype=torch.int64, device=DEVICE),
            num_decode=num_decode,
            layouts=self.layouts,
            attention=backend,
        )
        batch.attn_meta = meta if meta is not None else backend.prepare(batch)
        return backend.forward(q, k, v, 0, batch)


def test_backend_matches_torch_backend_on_a_mixed_batch(kernels):
    """Decodes then extends (with and without cached prefixes) in one step, through prepare + forward."""
    from plait.engine.attention import TorchAttentionBackend
    from plait.engine.forward_batch import SequenceLayout

    layouts = [SequenceLayout(3, 130, 1), SequenceLayout(0, 7, 1), SequenceLayout(5, 0, 40), SequenceLayout(1, 90, 25)]
    step = StepInputs(layouts)
    ref = step.run(TorchAttentionBackend(step.pool, step.table, step.scale), num_decode=2)
    out = step.run(kernels.backend.TritonAttentionBackend(step.pool, step.table, step.scale), num_decode=2)
    assert rel_err(out, ref.float()) <= 1e-2


@pytest.mark.parametrize("num_decode", [0, 1, 2, 3, 5])
@pytest.mark.parametrize("num_extend", [0, 1, 3])
def test_step_metadata_is_16_byte_aligned_whatever_the_batch(kernels, num_decode, num_extend):
    """Every metadata array starts 16-byte aligned: Triton specialises kernels on pointer alignment, so offsets that
    varied with the batch compiled new variants in the middle of serving (a stall each)."""
    from plait.engine.forward_batch import SequenceLayout

    layouts = [SequenceLayout(i, 10 + i, 1) for i in range(num_decode)]
    layouts += [SequenceLayout(num_decode + i, 3 * i, 5 + i) for i in range(num_extend)]
    if not layouts:
        return
    step = StepInputs(layouts)
    backend = kernels.backend.TritonAttentionBackend(step.pool, step.table, step.scale)
    batch = type("Batch", (), {"layouts": layouts, "num_decode": num_decode})()
    meta = backend.prepare(batch)
    arrays = [meta.decode_rows, meta.decode_lens, meta.extend_rows, meta.extend_prefix_lens]
    arrays += [meta.extend_new_lens, meta.extend_starts]
    assert all(a.data_ptr() % 16 == 0 for a in arrays if a.numel())
    assert meta.decode_rows.tolist() == list(range(num_decode))
    assert meta.decode_lens.tolist() == [11 + i for i in range(num_decode)]
    assert meta.extend_new_lens.tolist() == [5 + i for i in range(num_extend)]
    starts = [num_decode + sum(5 + j for j in range(i)) for i in range(num_extend)]
    assert meta.extend_starts.tolist() == starts and meta.extend_prefix_lens.tolist() == [
        3 * i for i in range(num_extend)
    ]


def test_precompile_launches_every_decode_split_bucket_and_extend(kernels):
    from plait.engine.forward_batch import SequenceLayout

    step = StepInputs([SequenceLayout(0, 4, 1)])
    backend = kernels.backend.TritonAttentionBackend(step.pool, step.table, step.scale)
    assert backend.precompile(num_heads=8, dtype=torch.bfloat16) == 8  # splits 1, 2, 4, ..., 64 and extend


def test_graph_metadata_serves_a_padded_decode_batch(kernels):
    """The decode path a CUDA graph replays (static buffers, fixed split count, padding rows), run eagerly."""
    from plait.engine.attention import TorchAttentionBackend
    from plait.engine.forward_batch import SequenceLayout

    layouts = [SequenceLayout(3, 300, 1), SequenceLayout(0, 7, 1), SequenceLayout(5, 0, 1)]
    step = StepInputs(layouts)
    ref = step.run(TorchAttentionBackend(step.pool, step.table, step.scale), num_decode=3)
    triton_backend = kernels.backend.TritonAttentionBackend(step.pool, step.table, step.scale)
    triton_backend.init_graph_buffers(8)
    meta = triton_backend.graph_metadata(4)
    assert meta.num_kv_splits == kernels.decode.choose_num_kv_splits(4, 2, step.table.max_context, DEVICE)
    for splits in (meta.num_kv_splits, 5):  # the graph's own split count, then a forced split-K
        meta.num_kv_splits, meta.decode_scratch = splits, None
        triton_backend.fill_graph_metadata(layouts, 4)  # the second fill reuses the same buffers
        out = step.run(triton_backend, num_decode=4, meta=meta, pad=1)
        assert rel_err(out[:3], ref.float()) <= 1e-2, f"{splits} splits"
    assert meta.decode_lens.tolist() == [301, 8, 1, 1]


def _engine_outputs(backend: str) -> tuple[dict, list[list[float]], torch.Tensor, int]:
    """Greedy tokens, their log-probabilities, prompt logits and prefix-cache hits of the tiny engine."""
    from plait.engine import EngineConfig, EngineCore, GenerateRequest, SamplingParams

    config = EngineConfig(
        model="tiny", weights="dummy", device=str(DEVICE), dtype="float32", attention_backend=backend,
        kv_slots=2048, max_context=512, chunk_size=32, max_batch_tokens=48, seed=11,
    )  # fmt: skip
    core = EngineCore(config)
    rng = random.Random(3)
    prefix = [rng.randrange(256) for _ in range(70)]
    sampling = SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True, logprobs=True)
    prompts = [prefix + [rng.randrange(256) for _ in range(n)] for n in (9, 4, 23)]
    tokens: dict[str, list[int]] = {}
    logprobs: list[list[float]] = []
    # The first request computes the prefix in chunks; the next two arrive together and hit the prefix cache.
    for wave in ([0], [1, 2]):
        for i in wave:
            core.add_request(GenerateRequest(prompt_token_ids=prompts[i], sampling=sampling, request_id=f"r{i}"))
        while core.has_work():
            for delta in core.step():
                tokens.setdefault(delta.request_id, []).extend(delta.token_ids)
                logprobs.append([entry.logprob for entry in delta.logprobs or []])
    logits = core.prompt_logits(prompts[2])
    if HAS_CUDA and backend == "triton":
        assert core.runner.graph_steps > 0, "decode steps should replay CUDA graphs"
    return tokens, logprobs, logits, core.stats().cached_prefix_tokens


def test_engine_on_triton_matches_torch_backend(kernels, one_thread):
    tokens, logprobs, logits, hits = _engine_outputs("triton")
    ref_tokens, ref_logprobs, ref_logits, _ = _engine_outputs("torch")
    assert hits >= 2 * 64, "the second wave should reuse the cached prefix"
    assert tokens == ref_tokens
    flat, ref_flat = ([x for xs in lps for x in xs] for lps in (logprobs, ref_logprobs))
    assert torch.allclose(torch.tensor(flat), torch.tensor(ref_flat), atol=1e-4)
    assert ((logits - ref_logits).abs().max() / ref_logits.abs().max()).item() <= 1e-4


def test_create_backend_names_triton(kernels):
    from plait.cache import KVPool, ReqToTokenPool
    from plait.engine.attention import create_backend

    pool = KVPool(1, 16, 2, 64, torch.float32, DEVICE)
    backend = create_backend("triton", pool, ReqToTokenPool(2, 16, DEVICE), 0.125)
    assert backend.name == "triton"
    with pytest.raises(ValueError, match="torch, cpu, triton"):
        create_backend("flash", pool, ReqToTokenPool(2, 16, DEVICE), 0.125)


# ---- full shapes on the GPU ----------------------------------------------------------------------------------------

GPU_CASES = [(group, head_dim) for group in (1, 4, 8) for head_dim in (64, 128)]
needs_gpu = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize(("group", "head_dim"), GPU_CASES)
@pytest.mark.parametrize(("batch", "max_len"), [(1, 32768), (16, 32768), (64, 4096), (256, 2048), (256, 32768)])
def test_gpu_decode_full_shapes(kernels, group, head_dim, batch, max_len):
    rng = random.Random(f"gpu-decode{group}{head_dim}{batch}{max_len}")
    # Mostly short contexts plus one at the maximum, so batch 256 stays within memory.
    lengths = [rng.randint(1, min(max_len, 4096)) for _ in range(batch)]
    lengths[rng.randrange(batch)] = max_len
    splits = kernels.decode.choose_num_kv_splits(batch, NUM_KV_HEADS, max_len, DEVICE)
    err = check_decode(kernels, lengths, group, head_dim, torch.bfloat16, splits, rng)
    assert err <= 1e-2, f"batch {batch}, max_len {max_len}: rel err {err:.2e}"


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize(("group", "head_dim"), GPU_CASES)
@pytest.mark.parametrize(("batch", "max_prefix", "max_new"), [(1, 0, 4096), (4, 30000, 2048), (16, 4096, 512)])
def test_gpu_extend_full_shapes(kernels, group, head_dim, batch, max_prefix, max_new):
    rng = random.Random(f"gpu-extend{group}{head_dim}{batch}{max_prefix}")
    prefix_lens = [rng.randint(0, max_prefix) if i else 0 for i in range(batch)]
    new_lens = [rng.randint(1, max_new) for _ in range(batch)]
    new_lens[0] = max_new
    err = check_extend(kernels, prefix_lens, new_lens, group, head_dim, torch.bfloat16, rng)
    assert err <= 1e-2, f"prefixes {prefix_lens}, new {new_lens}: rel err {err:.2e}"
