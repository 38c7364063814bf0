"""The fused Triton kernels of the model (RMSNorm with the residual add, RoPE, SiLU-and-mul) against the torch
reference ops, and the engine with them on against the engine with them off.

Without CUDA the kernels run through Triton's interpreter (``TRITON_INTERPRET=1`` must be set before triton is
first imported: this module sets it, or reruns itself in a subprocess when triton was imported earlier without it).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

import pytest
import torch
import torch.nn.functional as F

from tests.engine.triton_interpret import run_interpreted_in_subprocess

if importlib.util.find_spec("triton") is None:
    pytest.skip("the fused kernels need the triton package", allow_module_level=True)

HAS_CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if HAS_CUDA else "cpu")
KERNEL_MODULES = (
    "plait.engine.kernels.rms_norm",
    "plait.engine.kernels.rotary",
    "plait.engine.kernels.silu_and_mul",
    "plait.engine.kernels.gemv",
)


def _import_kernels() -> bool:
    """Import the kernel modules, interpreted when there is no CUDA; True when they can run in this process."""
    if not HAS_CUDA and "triton" not in sys.modules:
        os.environ["TRITON_INTERPRET"] = "1"
    from plait.engine.kernels.attention_block import is_interpreted

    standard = importlib.import_module("triton.language.standard")
    modules = [importlib.import_module(name) for name in KERNEL_MODULES]
    usable = HAS_CUDA or (is_interpreted(standard.cdiv) and os.environ.get("TRITON_INTERPRET") == "1")
    if usable and not HAS_CUDA and not is_interpreted(modules[0]._rms_norm_kernel):
        for module in modules:
            importlib.reload(module)
    return usable


IN_PROCESS = _import_kernels()
needs_kernels = pytest.mark.skipif(not IN_PROCESS, reason="triton imported without TRITON_INTERPRET=1; see subprocess")


@pytest.mark.skipif(IN_PROCESS, reason="the kernels run in this process")
def test_interpreted_in_subprocess():
    run_interpreted_in_subprocess(__file__)


def _ops():
    from plait.engine.model_ops import TORCH_OPS, triton_ops

    return TORCH_OPS, triton_ops()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30))


DTYPES = [torch.float32, torch.bfloat16]
# bf16: one ulp is 2^-8 relative. Triton's interpreter truncates float32 -> bf16 (the GPU rounds to nearest), so
# under it results may sit an ulp lower than the reference's; on a GPU they agree to rounding.
TOL = {torch.float32: 1e-6, torch.bfloat16: 2e-2 if not HAS_CUDA else 4e-3}  # up to two roundings
EXACT_BF16 = HAS_CUDA


@needs_kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,size", [(1, 64), (5, 96), (3, 576)])
def test_rms_norm_and_add_match_reference(dtype, rows, size):
    ref, fused = _ops()
    gen = torch.Generator().manual_seed(rows * size)
    x = torch.randn(rows, size, generator=gen).to(DEVICE, dtype)
    residual = torch.randn(rows, size, generator=gen).to(DEVICE, dtype)
    weight = (1 + 0.1 * torch.randn(size, generator=gen)).to(DEVICE, dtype)
    assert _rel(fused.rms_norm(x, weight, 1e-5), ref.rms_norm(x, weight, 1e-5)) <= TOL[dtype]
    want_normed, want_residual = ref.add_rms_norm(x, residual.clone(), weight, 1e-5)
    fused_residual = residual.clone()
    normed, out_residual = fused.add_rms_norm(x, fused_residual, weight, 1e-5)
    if dtype == torch.float32 or EXACT_BF16:  # the add is rounded exactly like the reference
        assert torch.equal(out_residual, want_residual)
    assert _rel(out_residual, want_residual) <= TOL[dtype]
    assert out_residual.data_ptr() == fused_residual.data_ptr()  # in place
    assert _rel(normed, want_normed) <= TOL[dtype]


@needs_kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens,heads,kv_heads,dim", [(1, 4, 2, 16), (7, 6, 2, 64), (3, 8, 1, 32)])
def test_rotary_matches_reference_on_strided_views(dtype, tokens, heads, kv_heads, dim):
    ref, fused = _ops()
    gen = torch.Generator().manual_seed(tokens * heads * dim)
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * dim, generator=gen).to(DEVICE, dtype)
    max_pos = 50
    inv = 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))
    freqs = torch.outer(torch.arange(max_pos).float(), inv)
    emb = torch.cat([freqs, freqs], dim=-1)
    cos, sin = emb.cos().to(DEVICE, dtype), emb.sin().to(DEVICE, dtype)
    positions = torch.randint(0, max_pos, (tokens,), generator=gen).to(DEVICE)

    def views(t: torch.Tensor):
        q, k, _ = t.split([heads * dim, kv_heads * dim, kv_heads * dim], dim=-1)
        return q.view(tokens, heads, dim), k.view(tokens, kv_heads, dim)

    want_q, want_k = ref.rotary(positions, *views(qkv.clone()), cos, sin)
    fused_qkv = qkv.clone()
    got_q, got_k = fused.rotary(positions, *views(fused_qkv), cos, sin)
    assert _rel(got_q, want_q) <= TOL[dtype] and _rel(got_k, want_k) <= TOL[dtype]
    assert torch.equal(fused_qkv[:, (heads + kv_heads) * dim :], qkv[:, (heads + kv_heads) * dim :])  # V untouched


@needs_kernels
def test_add_rms_norm_keeps_a_float32_residual_stream():
    """A bfloat16 block output added into a float32 residual: the sum stays float32 (exactly the reference's), the
    normalised rows come out in the weight's dtype."""
    ref, fused = _ops()
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(3, 96, generator=gen).to(DEVICE, torch.bfloat16)
    residual = torch.randn(3, 96, generator=gen).to(DEVICE)
    weight = (1 + 0.1 * torch.randn(96, generator=gen)).to(DEVICE, torch.bfloat16)
    want_normed, want_residual = ref.add_rms_norm(x, residual.clone(), weight, 1e-5)
    normed, got_residual = fused.add_rms_norm(x, residual.clone(), weight, 1e-5)
    assert got_residual.dtype == want_residual.dtype == torch.float32
    assert normed.dtype == want_normed.dtype == torch.bfloat16
    assert torch.allclose(got_residual, want_residual, rtol=1e-6, atol=1e-6)
    assert _rel(normed, want_normed) <= TOL[torch.bfloat16]
    assert _rel(got_residual, residual + x.float()) <= 1e-7  # not rounded to bfloat16


@needs_kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens,heads,kv_heads,dim", [(1, 4, 2, 16), (5, 6, 3, 64)])
def test_rotary_stores_rotated_k_and_v_in_their_slots(dtype, tokens, heads, kv_heads, dim):
    """The fused rotate-and-store writes each token's rotated K and its V at its slot, and nothing else."""
    from plait.engine.kv_store import KVStore

    ref, fused = _ops()
    gen = torch.Generator().manual_seed(tokens + dim)
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * dim, generator=gen).to(DEVICE, dtype)
    max_pos = 40
    inv = 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))
    emb = torch.cat([torch.outer(torch.arange(max_pos).float(), inv)] * 2, dim=-1)
    cos, sin = emb.cos().to(DEVICE, dtype), emb.sin().to(DEVICE, dtype)
    positions = torch.randint(0, max_pos, (tokens,), generator=gen).to(DEVICE)
    slots = torch.randperm(20, generator=gen)[:tokens].to(DEVICE)

    def run(ops):
        t = qkv.clone()
        q, k, v = t.split([heads * dim, kv_heads * dim, kv_heads * dim], dim=-1)
        q, k, v = q.view(tokens, heads, dim), k.view(tokens, kv_heads, dim), v.view(tokens, kv_heads, dim)
        k_cache = torch.full((21, kv_heads, dim), 7.0, dtype=dtype, device=DEVICE)
        v_cache = torch.full((21, kv_heads, dim), 7.0, dtype=dtype, device=DEVICE)
        q, k = ops.rotary(positions, q, k, cos, sin, KVStore(v, k_cache, v_cache, slots))
        return q, k, v, k_cache, v_cache

    want_q, want_k, want_v, want_kc, _ = run(ref)
    got_q, got_k, _, got_kc, got_vc = run(fused)
    assert _rel(got_q, want_q) <= TOL[dtype] and _rel(got_k, want_k) <= TOL[dtype]
    assert _rel(got_kc, want_kc) <= TOL[dtype]
    assert torch.equal(got_kc[slots], got_k) and torch.equal(got_vc[slots], want_v)
    untouched = torch.ones(21, dtype=torch.bool)
    untouched[slots.cpu()] = False
    assert bool((got_kc[untouched.to(DEVICE)] == 7.0).all()) and bool((got_vc[untouched.to(DEVICE)] == 7.0).all())


@needs_kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,size", [(1, 32), (4, 1500)])
def test_silu_and_mul_matches_reference(dtype, rows, size):
    ref, fused = _ops()
    x = torch.randn(rows, 2 * size, generator=torch.Generator().manual_seed(size)).to(DEVICE, dtype)
    assert _rel(fused.silu_and_mul(x), ref.silu_and_mul(x)) <= TOL[dtype]


@needs_kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k,bias", [(8, 64, False), (37, 1030, True), (3, 5, True)])
def test_gemv_matches_linear(dtype, n, k, bias):
    from plait.engine.kernels.gemv import gemv

    gen = torch.Generator().manual_seed(n * k)
    x = torch.randn(1, k, generator=gen).to(DEVICE, dtype)
    weight = (0.05 * torch.randn(n, k, generator=gen)).to(DEVICE, dtype)
    b = torch.randn(n, generator=gen).to(DEVICE, dtype) if bias else None
    got = gemv(x, weight, b)
    assert got.shape == (1, n) and got.dtype == dtype
    assert _rel(got, F.linear(x.float(), weight.float(), None if b is None else b.float())) <= TOL[dtype]


@needs_kernels
def test_gemv_rejects_what_it_cannot_compute():
    from plait.engine.kernels.gemv import gemv, linear

    weight = torch.randn(4, 8, device=DEVICE)
    with pytest.raises(ValueError, match="x \\[1, K\\]"):
        gemv(torch.randn(2, 8, device=DEVICE), weight)
    with pytest.raises(ValueError, match="rows contiguous"):
        gemv(torch.randn(1, 4, device=DEVICE), weight.t())
    x = torch.randn(3, 8, device=DEVICE)  # several rows: the GEMM
    assert torch.allclose(linear(x, weight), F.linear(x, weight))


@needs_kernels
def test_engine_with_fused_ops_decodes_like_reference():
    from plait.engine import EngineConfig, EngineCore, GenerateRequest, SamplingParams
    from tests.conftest import run_to_completion

    prompts = [[(7 * i + j) % 250 + 1 for j in range(9 + 5 * i)] for i in range(3)]
    sampling = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)

    def run(fused: str):
        config = EngineConfig(model="tiny", weights="dummy", dtype="float32", kv_slots=512, fused_ops=fused)
        core = EngineCore(config)
        assert core.model.ops.name == ("triton" if fused == "on" else "torch")
        logits = core.prompt_logits(prompts[0])
        requests = [
            GenerateRequest(prompt_token_ids=p, sampling=sampling, request_id=f"r{i}") for i, p in enumerate(prompts)
        ]
        return logits, run_to_completion(core, requests)

    ref_logits, ref_out = run("off")
    fused_logits, fused_out = run("on")
    error = _rel(fused_logits, ref_logits)
    assert error <= 1e-5, f"prompt logits differ by {error:.2e}"
    assert fused_out == ref_out, f"{fused_out} != {ref_out}"
