"""One-row projections with cold weights: cuBLAS (``F.linear``) against Triton GEMV launch configurations.

A decode step reads each weight once, so a projection's weight is never in L2 when it runs. Timing one weight in a
loop flatters every kernel (an 8B Q/K/V weight is 50 MB, the size of the L2): here each call in the CUDA graph reads a
different copy of the weight, 512 MB or more in all, so every byte comes from HBM as in the engine.

Usage: python bench/gpu/gemv_cold.py   (prints a table: us per call and TB/s, best Triton configuration per shape)
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
import triton
from decode_variants import PROJECTION_SHAPES, graph_time_calls  # bench/gpu, the script's own folder

from plait.engine.kernels.gemv import _gemv_kernel

# The projections where cuBLAS leaves bandwidth unused at one row (the 8B gate/up and down already reach it).
SHAPES = {name: PROJECTION_SHAPES[name] for name in ("8b qkv", "8b o", "1b qkv", "1b o", "1b gate_up", "1b down")}
CONFIGS = [  # (BLOCK_N, BLOCK_K, num_warps, num_stages)
    (bn, bk, w, s)
    for (bn, bk, w), s in itertools.product(
        [(1, 4096, 4), (2, 2048, 4), (2, 4096, 8), (4, 1024, 4), (4, 2048, 8), (8, 512, 4), (8, 1024, 8),
         (16, 256, 4), (16, 512, 8), (4, 512, 2), (2, 1024, 2), (32, 256, 8)],
        (1, 3),
    )
]  # fmt: skip


def gemv(x, w, out, config):
    """The model's GEMV kernel (``plait/engine/kernels/gemv.py``) at launch configuration ``config``."""
    bn, bk, warps, stages = config
    n, k = w.shape
    grid = (triton.cdiv(n, bn),)
    _gemv_kernel[grid](x, w, w, out, n, k, w.stride(0), False, bn, bk, num_warps=warps, num_stages=stages)
    return out


def main() -> None:
    header = f"{'shape':11s} {'cuBLAS us':>9s} {'TB/s':>5s} | {'best GEMV us':>12s} {'TB/s':>5s}"
    print(header + " config (BN, BK, warps, stages)")
    for name, (n, k) in SHAPES.items():
        size = n * k * 2
        copies = max(8, -(-(512 << 20) // size))
        weights = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(copies)]
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        out = torch.empty(1, n, device="cuda", dtype=torch.bfloat16)
        reference = F.linear(x, weights[0]).float()
        cublas = graph_time_calls([lambda w=w, x=x: F.linear(x, w) for w in weights])
        timings = []
        for config in CONFIGS:
            got = gemv(x, weights[0], out, config).float()
            error = float((got - reference).norm() / reference.norm())
            if error > 1e-2:
                print(f"  {name} {config}: relative error {error:.1e}, skipped")
                continue
            timings.append(
                (graph_time_calls([lambda w=w, c=config, x=x, o=out: gemv(x, w, o, c) for w in weights]), config)
            )
        timings.sort()
        best, config = timings[0]
        print(
            f"{name:11s} {cublas:9.1f} {size / cublas / 1e6:5.2f} | {best:12.1f} {size / best / 1e6:5.2f} {config}"
            f"  (next: {', '.join(f'{t:.1f} {c}' for t, c in timings[1:4])})"
        )
        del weights
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
