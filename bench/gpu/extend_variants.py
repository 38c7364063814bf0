"""Extend (prefill) attention at the Llama-3.1-8B attention shape on a CUDA GPU: tile configurations of the kernel,
the previous kernel and torch's SDPA side by side.

Cases: one 32k prompt from scratch, the last 8k chunk of a 32k prompt (24k cached), four 2k prompts. Each variant's
output is checked against the previous kernel's (itself checked against SDPA on the 32k case); TFLOP/s count the
causal triangle only (``4 * heads * head_dim`` per visible query-key pair), the rate ``plait.bench.roofline`` uses.

Usage: python bench/gpu/extend_variants.py [--previous PATH_TO_OLD_extend_attention.py]
(JSON to $OUT/extend_variants.json, OUT=./out)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from plait.engine.kernels import extend_attention as kernel

DEVICE = torch.device("cuda")
DTYPE = torch.bfloat16
HEADS, KV_HEADS, HEAD_DIM = 32, 8, 128
SCALE = HEAD_DIM**-0.5
CASES = {"1x32k": ([0], [32768]), "8k after 24k": ([24576], [8192]), "4x2k": ([0] * 4, [2048] * 4)}
CONFIGS = {
    "m128 n64 w8 s3": {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3},
    "m128 n64 w8 s2": {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 2},
    "m128 n64 w8 s4": {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 4},
    "m128 n128 w8 s2": {"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 2},
    "m128 n128 w8 s3": {"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 3},
    "m128 n64 w4 s3": {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3},
    "m64 n64 w4 s3": {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3},
    "m128 n64 w8 s3 ws": {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3, "WARP_SPECIALIZE": True},
    "m128 n128 w8 s2 ws": {"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 2, "WARP_SPECIALIZE": True},
}


def build(prefix_lens: list[int], new_lens: list[int]) -> dict:
    """Pools with each sequence's tokens in contiguous slots (as a fresh prompt gets them), its queries and its new
    tokens' K/V in the step's rows."""
    totals = [p + n for p, n in zip(prefix_lens, new_lens, strict=True)]
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    k_pool = torch.randn(sum(totals) + 1, KV_HEADS, HEAD_DIM, device=DEVICE, dtype=DTYPE, generator=gen)
    v_pool = torch.randn(sum(totals) + 1, KV_HEADS, HEAD_DIM, device=DEVICE, dtype=DTYPE, generator=gen)
    table = torch.zeros(len(totals), max(totals), dtype=torch.int32, device=DEVICE)
    first, new_slots = 1, []
    for row, (prefix, total) in enumerate(zip(prefix_lens, totals, strict=True)):
        table[row, :total] = torch.arange(first, first + total, device=DEVICE)
        new_slots.append(table[row, prefix:total].long())
        first += total
    new_slots = torch.cat(new_slots)
    ints = lambda xs: torch.tensor(xs, dtype=torch.int32, device=DEVICE)  # noqa: E731
    q = torch.randn(sum(new_lens), HEADS, HEAD_DIM, device=DEVICE, dtype=DTYPE, generator=gen)
    return {
        "q": q,
        "k_new": k_pool[new_slots],
        "v_new": v_pool[new_slots],
        "k_pool": k_pool,
        "v_pool": v_pool,
        "table": table,
        "rows": ints(list(range(len(totals)))),
        "prefix": ints(prefix_lens),
        "new": ints(new_lens),
        "starts": ints([sum(new_lens[:i]) for i in range(len(new_lens))]),
        "max_new": max(new_lens),
    }


def flops(prefix_lens: list[int], new_lens: list[int]) -> float:
    return sum(4 * HEADS * HEAD_DIM * (n * p + n * (n + 1) / 2) for p, n in zip(prefix_lens, new_lens, strict=True))


def run_new(case: dict, config: dict | None) -> torch.Tensor:
    out = torch.empty_like(case["q"])
    kernel.extend_attention(
        case["q"], case["k_new"], case["v_new"], case["k_pool"], case["v_pool"], case["table"], case["rows"],
        case["prefix"], case["new"], case["starts"], out, SCALE, case["max_new"], config,
    )  # fmt: skip
    return out


def run_previous(module, case: dict) -> torch.Tensor:
    out = torch.empty_like(case["q"])
    module.extend_attention(
        case["q"], case["k_pool"], case["v_pool"], case["table"], case["rows"], case["prefix"], case["new"],
        case["starts"], out, SCALE, case["max_new"],
    )  # fmt: skip
    return out


def run_sdpa(case: dict, backend) -> torch.Tensor:
    """One sequence without prefix only: causal SDPA over ``[1, heads, L, dim]``."""
    from torch.nn.attention import sdpa_kernel

    q = case["q"].transpose(0, 1).unsqueeze(0)
    k = case["k_new"].transpose(0, 1).unsqueeze(0)
    v = case["v_new"].transpose(0, 1).unsqueeze(0)
    with sdpa_kernel(backend):
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=SCALE, enable_gqa=True)
    return out.squeeze(0).transpose(0, 1)


def variants_for(inputs: dict, previous, sdpa: bool) -> dict:
    """Label -> a call computing ``inputs``'s output: the default and every configuration of the kernel, the previous
    kernel (when given) and torch's SDPA backends (``sdpa``: one sequence without prefix)."""
    from torch.nn.attention import SDPBackend

    variants = {"default": lambda: run_new(inputs, None)}
    variants |= {label: (lambda c=c: run_new(inputs, c)) for label, c in CONFIGS.items()}
    if previous:
        variants["previous kernel"] = lambda: run_previous(previous, inputs)
    if sdpa:
        for label, backend in (("sdpa flash", SDPBackend.FLASH_ATTENTION), ("sdpa cudnn", SDPBackend.CUDNN_ATTENTION)):
            variants[label] = lambda b=backend: run_sdpa(inputs, b)
    return variants


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--previous", help="the previous extend_attention.py, timed and used as the reference")
    args = parser.parse_args()
    previous = None
    if args.previous:
        spec = importlib.util.spec_from_file_location("previous_extend_attention", args.previous)
        previous = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(previous)

    results = []
    for name, (prefix_lens, new_lens) in CASES.items():
        inputs = build(prefix_lens, new_lens)
        work = flops(prefix_lens, new_lens)
        reference = run_previous(previous, inputs) if previous else run_new(inputs, None)
        variants = variants_for(inputs, previous, sdpa=not any(prefix_lens) and len(new_lens) == 1)
        for label, fn in variants.items():
            try:
                err = rel_err(fn(), reference)
                ms = do_bench(fn, warmup=10, rep=60)
            except Exception as exc:  # a variant that does not compile is reported, not fatal
                results.append({"case": name, "variant": label, "error": f"{type(exc).__name__}: {exc}"[:300]})
                print(f"{name:14s} {label:22s} FAILED {type(exc).__name__}: {str(exc)[:160]}", flush=True)
                continue
            row = {"case": name, "variant": label, "ms": ms, "tflops": work / ms / 1e9, "rel_err_vs_reference": err}
            results.append(row)
            print(f"{name:14s} {label:22s} {ms:8.3f} ms {row['tflops']:6.1f} TFLOP/s err {err:.1e}", flush=True)
        del inputs
        torch.cuda.empty_cache()
    out_dir = Path(os.environ.get("OUT", "out"))
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {"device": torch.cuda.get_device_name(), "results": results}
    (out_dir / "extend_variants.json").write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
