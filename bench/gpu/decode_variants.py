"""Small-batch decode building blocks, timed in CUDA graphs (launch overhead excluded as in serving).

1. Paged decode attention at batch 1-16 for the 8B and 1B shapes: the split count a graph uses (chosen for the
   longest context the table holds), the split count the context needs, and launch parameters.
2. The M=1..16 projections of the 8B and 1B shapes: ``F.linear`` (what the model runs) against ``W @ x^T``.

Usage: python bench/gpu/decode_variants.py [--projections]   (attention by default, projections with the flag)
"""

from __future__ import annotations

import functools
import sys

import torch
import torch.nn.functional as F

import plait.engine.kernels.decode_attention as dk
from plait.engine.engine_config import DEFAULT_MAX_CONTEXT

MAX_CONTEXT = DEFAULT_MAX_CONTEXT + 1  # the width of the engine's req_to_token table


def graph_time(fn, iters: int = 50) -> float:
    """Microseconds per call of ``fn`` replayed in a CUDA graph of ``iters`` calls."""
    return graph_time_calls([fn] * iters)


def graph_time_calls(calls) -> float:
    """Microseconds per call of the list ``calls`` replayed in one CUDA graph (best of five replays)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for fn in calls[:3]:
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for fn in calls:
            fn()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    best = float("inf")
    for _ in range(5):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) * 1e3 / len(calls))
    return best


CONFIGS = (  # (BLOCK_N, num_warps, num_stages)
    (64, 4, 2), (32, 4, 2), (64, 2, 2), (128, 2, 2), (128, 4, 2), (64, 2, 3), (128, 4, 3), (64, 1, 2), (32, 2, 2),
)  # fmt: skip


def attention_variants() -> None:
    print("decode attention (us per call, CUDA graph; 'graph' = the engine's choice in a decode graph)")
    block_n_default, launch_default = dk.BLOCK_N, dict(dk.SPLIT_LAUNCH)
    default = (block_n_default, launch_default["num_warps"], launch_default["num_stages"])
    for name, heads, kv_heads, dim in (("8b", 32, 8, 128), ("1b", 32, 8, 64)):
        for batch, ctx in ((1, 512), (1, 1024), (16, 1024), (64, 1024), (128, 1024), (256, 1024)):
            slots = batch * ctx + 1
            k = torch.randn(slots, kv_heads, dim, device="cuda", dtype=torch.bfloat16)
            v = torch.randn_like(k)
            table = torch.arange(1, slots, device="cuda", dtype=torch.int64).view(batch, ctx)
            table = torch.cat([table, torch.zeros(batch, MAX_CONTEXT - ctx, dtype=torch.int64, device="cuda")], 1)
            rows = torch.arange(batch, device="cuda", dtype=torch.int32)
            lens = torch.full((batch,), ctx, device="cuda", dtype=torch.int32)
            q = torch.randn(batch, heads, dim, device="cuda", dtype=torch.bfloat16)
            out = torch.empty_like(q)
            graph_splits = dk.choose_num_kv_splits(batch, kv_heads, MAX_CONTEXT, q.device)
            ctx_splits = dk.choose_num_kv_splits(batch, kv_heads, ctx, q.device)
            results = []
            candidates = {graph_splits, ctx_splits, max(1, ctx_splits // 2), 1}
            sms = torch.cuda.get_device_properties(0).multi_processor_count
            candidates |= {max(1, min(64, -(-per_sm * sms // (batch * kv_heads)), -(-ctx // 128))) for per_sm in (1, 2)}
            for splits in sorted(candidates):
                for block_n, warps, stages in CONFIGS:
                    dk.BLOCK_N = block_n
                    dk.SPLIT_LAUNCH = {"num_warps": warps, "num_stages": stages}
                    scratch = dk.alloc_decode_scratch(batch, heads, splits, dim, q.device)
                    try:
                        call = functools.partial(
                            dk.decode_attention, q, k, v, table, rows, lens, out, dim**-0.5, splits, scratch
                        )
                        us = graph_time(call)
                    except Exception as error:  # a launch configuration the compiler rejects
                        print(f"  {name} b{batch} ctx{ctx} splits {splits} {block_n}/{warps}/{stages}: {error}")
                        continue
                    results.append((us, splits, block_n, warps, stages))
            dk.BLOCK_N, dk.SPLIT_LAUNCH = block_n_default, dict(launch_default)
            base = next(r for r in results if r[1] == graph_splits and r[2:] == default)
            best = min(results)
            kv_bytes = 2 * batch * ctx * kv_heads * dim * 2
            print(
                f"  {name} b{batch:<3d} ctx{ctx:<5d} graph: splits {graph_splits:2d} {base[0]:6.1f} us | best "
                f"{best[0]:6.1f} us (splits {best[1]}, BLOCK_N {best[2]}, warps {best[3]}, stages {best[4]}) | "
                f"KV {kv_bytes / best[0] / 1e6:.2f} TB/s"
            )


PROJECTION_SHAPES = {  # name: (rows N, columns K) of the weight
    "8b qkv": (6144, 4096),
    "8b o": (4096, 4096),
    "8b gate_up": (28672, 4096),
    "8b down": (4096, 14336),
    "1b qkv": (3072, 2048),
    "1b o": (2048, 2048),
    "1b gate_up": (16384, 2048),
    "1b down": (2048, 8192),
}


def linear_variants() -> None:
    print("projections (us per call, CUDA graph)")
    for name, (n, k) in PROJECTION_SHAPES.items():
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
        for m in (1, 16):
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            a = graph_time(functools.partial(F.linear, x, w))
            b = graph_time(functools.partial(torch.matmul, w, x.T))
            gbs = n * k * 2 / min(a, b) / 1e6
            print(f"  {name:11s} M={m:<3d} F.linear {a:7.1f} us | W @ x^T {b:7.1f} us | best {gbs:.2f} TB/s")


def main() -> None:
    if "--projections" in sys.argv:
        linear_variants()
    else:
        attention_variants()


if __name__ == "__main__":
    main()
