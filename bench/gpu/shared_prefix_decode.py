"""Shared-prefix decode attention against plain decode attention, timed in CUDA graphs, with a correctness check.

Shapes of the workflow suites (Llama-3.1-8B attention: 32 query heads, 8 KV heads, head dim 128, bf16): ``batch``
decodes of which all but ``--loners`` share a ``prefix``-token prompt prefix (text-to-SQL: 2.6k instructions; ReAct:
3.4k system prompt), each with ``own`` tokens of its own after it. Both paths use the engine's split choice for a
decode graph. Prints microseconds per layer call, the KV bytes each path must read, and the speed-up.

Usage: python bench/gpu/shared_prefix_decode.py [--json PATH]
"""

from __future__ import annotations

import argparse
import functools
import json
import random

import torch

import plait.engine.kernels.decode_attention as dk
import plait.engine.kernels.shared_prefix_attention as sp
from bench.gpu.decode_variants import graph_time

HEADS, KV_HEADS, HEAD_DIM = 32, 8, 128
BYTES_PER_TOKEN = 2 * KV_HEADS * HEAD_DIM * 2  # K and V of one layer, bf16


def case(
    batch: int, prefix: int, own: tuple[int, int], loners: int, width: int = 8192, sweep: bool = False
) -> dict[str, float]:
    rng = random.Random(batch * 7 + prefix)
    device = torch.device("cuda")
    lengths = [prefix + rng.randint(*own) for _ in range(batch)]
    total = sum(lengths) + 1
    k = torch.randn(total, KV_HEADS, HEAD_DIM, device=device, dtype=torch.bfloat16)
    v = torch.randn_like(k)
    table = torch.zeros(batch + 1, width, dtype=torch.int32, device=device)
    slots = torch.randperm(total - 1, device=device).to(torch.int32) + 1
    at = 0
    for row, length in enumerate(lengths, start=1):
        table[row, :length] = slots[at : at + length]
        at += length
    members = list(range(batch - loners))
    for row in range(2, len(members) + 1):
        table[row, :prefix] = table[1, :prefix]  # the group's rows read the first member's prefix slots
    rows = torch.arange(1, batch + 1, dtype=torch.int32, device=device)
    lens = torch.tensor(lengths, dtype=torch.int32, device=device)
    q = torch.randn(batch, HEADS, HEAD_DIM, device=device, dtype=torch.bfloat16)
    out_plain, out_shared = torch.empty_like(q), torch.empty_like(q)
    splits = dk.choose_num_kv_splits(batch, KV_HEADS, width, device)
    groups = [(prefix, members)] if len(members) >= 2 else []
    starts, tile_rows, tile_lens, tile_members = sp.layout_tiles(groups, rows.tolist(), batch)
    as_t = lambda values: torch.tensor(values, dtype=torch.int32, device=device)  # noqa: E731
    num_tiles = len(tile_rows)
    tiles = sp.PrefixTiles(
        as_t(starts), as_t(tile_rows), as_t(tile_lens), as_t(tile_members).view(num_tiles, sp.TILE_SEQS),
        sp.choose_prefix_slices(num_tiles, KV_HEADS, prefix, device),
    )  # fmt: skip
    scratch_plain = dk.alloc_decode_scratch(batch, HEADS, splits, HEAD_DIM, device)
    scratch_shared = dk.alloc_decode_scratch(batch, HEADS, splits + sp.MAX_PREFIX_SLICES, HEAD_DIM, device)
    scale = HEAD_DIM**-0.5

    def plain() -> None:
        dk.decode_attention(q, k, v, table, rows, lens, out_plain, scale, splits, scratch_plain)

    def shared() -> None:
        dk.decode_attention(q, k, v, table, rows, lens, out_shared, scale, splits, scratch_shared, tiles)

    plain()
    shared()
    torch.cuda.synchronize()
    error = ((out_shared.float() - out_plain.float()).norm() / out_plain.float().norm()).item()
    plain_us, shared_us = graph_time(plain), graph_time(shared)
    if sweep:  # the prefix kernel alone, and the whole path per launch setting and slice count
        dot = dk.dot_options(q.dtype, device)

        def prefix_only(launch: dict) -> None:
            sp.shared_prefix_partials(
                q, k, v, table, tiles, *scratch_shared, scale * dk.LOG2E, splits, dk.BLOCK_N, dot, launch
            )

        base = dk._launch_config(sp.PREFIX_LAUNCH, device)
        print(f"  batch {batch}: plain {plain_us:.1f} us, shared {shared_us:.1f} us (slices {tiles.num_slices})")
        for warps, stages in ((4, 2), (4, 3), (8, 2), (2, 2)):
            launch = {**base, "num_warps": warps, "num_stages": stages}
            took = graph_time(functools.partial(prefix_only, launch))
            print(f"    prefix kernel alone, {warps} warps {stages} stages: {took:.1f} us")
        saved = tiles.num_slices
        for slices in (1, 2, 4, 8, 16):
            tiles.num_slices = slices
            print(f"    whole path, {slices} prefix slices: {graph_time(shared):.1f} us")
        tiles.num_slices = saved
    plain_bytes = sum(lengths) * BYTES_PER_TOKEN
    shared_bytes = (sum(lengths) - prefix * (len(members) - num_tiles)) * BYTES_PER_TOKEN if groups else plain_bytes
    return {
        "batch": batch,
        "prefix": prefix,
        "own": list(own),
        "loners": loners,
        "splits": splits,
        "prefix_slices": tiles.num_slices,
        "tiles": num_tiles,
        "plain_us": round(plain_us, 1),
        "shared_us": round(shared_us, 1),
        "speedup": round(plain_us / shared_us, 2),
        "plain_tb_per_s": round(plain_bytes / plain_us / 1e6, 2),
        "shared_kv_bytes_fraction": round(shared_bytes / plain_bytes, 3),
        "rel_err_vs_plain": error,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default=None, help="write the rows here")
    parser.add_argument("--sweep", action="store_true", help="also time the prefix kernel's launch settings")
    args = parser.parse_args()
    if args.sweep:
        for batch, prefix, own, loners in ((128, 2560, (150, 500), 8), (48, 3328, (300, 2500), 0)):
            case(batch, prefix, own, loners, sweep=True)
    rows = [
        case(batch, prefix, own, loners)
        for batch, prefix, own, loners in (
            (128, 2560, (150, 500), 8),  # text-to-SQL candidates and revisions beside a few schema-linking calls
            (64, 2560, (150, 500), 4),
            (16, 3328, (300, 2500), 0),  # ReAct: the system prompt, then each program's history
            (48, 3328, (300, 2500), 0),
            (256, 2560, (150, 500), 0),
            (32, 256, (16, 64), 0),  # a short shared prefix: the break-even end
        )
    ]
    header = (
        f"{'batch':>5} {'prefix':>6} {'own':>10} {'plain us':>9} {'shared us':>9} {'x':>5} {'kv read':>7} {'err':>8}"
    )
    print(header)
    for r in rows:
        own = f"{r['own'][0]}-{r['own'][1]}"
        print(
            f"{r['batch']:>5} {r['prefix']:>6} {own:>10} {r['plain_us']:>9} {r['shared_us']:>9} {r['speedup']:>5} "
            f"{r['shared_kv_bytes_fraction']:>7} {r['rel_err_vs_plain']:>8.1e}"
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, handle, indent=1)


if __name__ == "__main__":
    main()
