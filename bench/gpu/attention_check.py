"""The Triton attention kernels on a CUDA GPU: correctness at full shapes, then decode speed against the roofline.

1. Correctness: decode and extend kernels against a dense float32 torch reference (bf16 inputs; GQA 1/4/8; head
   dims 64/128; batch 1-256; contexts up to 32k; with and without cached prefixes). Error: per sequence
   ``||out - ref|| / ||ref||`` (for big batches on a sample of sequences, the longest included); must be <= 1e-2.
2. Decode timing at the Llama-3.1-8B attention shape (32 query heads, 8 KV heads, dim 128, bf16) for batch
   1/16/64/256 x context 512/1k/4k/32k: the kernel alone, the triton backend's forward (KV write included) and the
   torch backend's forward. Achieved bandwidth counts the K and V bytes read; the device-to-device copy rate
   measured in the same run is the practical roofline.

Usage: python bench/gpu/attention_check.py [--quick] [--scatter]  (JSON to $OUT/attention_check.json, OUT=./out)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from plait.cache import KVPool, ReqToTokenPool
from plait.engine.attention import TorchAttentionBackend
from plait.engine.attention.triton_backend import TritonAttentionBackend
from plait.engine.forward_batch import ForwardBatch, SequenceLayout
from plait.engine.kernels.decode_attention import choose_num_kv_splits, decode_attention
from plait.engine.kernels.extend_attention import extend_attention

DEVICE = torch.device("cuda")
DTYPE = torch.bfloat16
KV_HEADS_CHECK = 4  # correctness: 4 KV heads x GQA ratio query heads


# ---- correctness -------------------------------------------------------------------------------------------------


def paged(lengths: list[int], kv_heads: int, head_dim: int, scatter: bool, seed: int):
    """K/V pools holding ``lengths[i]`` tokens for sequence ``i`` in row ``i`` of a req_to_token table."""
    total = sum(lengths)
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    k = torch.randn(total + 1, kv_heads, head_dim, device=DEVICE, dtype=DTYPE, generator=gen)
    v = torch.randn(total + 1, kv_heads, head_dim, device=DEVICE, dtype=DTYPE, generator=gen)
    slots = (
        torch.randperm(total, device=DEVICE, generator=gen) + 1
        if scatter
        else torch.arange(1, total + 1, device=DEVICE)
    )
    table = torch.zeros(len(lengths), max(lengths), dtype=torch.int64, device=DEVICE)
    start = 0
    for row, length in enumerate(lengths):
        table[row, :length] = slots[start : start + length]
        start += length
    return k, v, table


def reference(q, keys, values, positions, scale):
    """Float32 attention; query ``i`` sees keys ``0..positions[i]``. Query chunks bound the score memory."""
    group = q.shape[1] // keys.shape[1]
    k, v = keys.float().repeat_interleave(group, 1), values.float().repeat_interleave(group, 1)
    outs = []
    for s in range(0, q.shape[0], 256):
        scores = torch.einsum("nhd,lhd->hnl", q[s : s + 256].float(), k) * scale
        visible = torch.arange(k.shape[0], device=DEVICE)[None, :] <= positions[s : s + 256, None]
        outs.append(torch.einsum("hnl,lhd->nhd", scores.masked_fill(~visible, float("-inf")).softmax(-1), v))
    return torch.cat(outs)


def sample_rows(lengths: list[int], limit: int = 16) -> list[int]:
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    rest = order[1:-1]
    random.Random(0).shuffle(rest)
    return sorted({order[0], order[-1], *rest[: limit - 2]})


def check_decode(lengths: list[int], group: int, head_dim: int, scatter: bool) -> float:
    k, v, table = paged(lengths, KV_HEADS_CHECK, head_dim, scatter, seed=len(lengths) * 7 + group)
    q = torch.randn(len(lengths), KV_HEADS_CHECK * group, head_dim, device=DEVICE, dtype=DTYPE)
    out = torch.empty_like(q)
    rows = torch.arange(len(lengths), dtype=torch.int32, device=DEVICE)
    lens = torch.tensor(lengths, dtype=torch.int32, device=DEVICE)
    splits = choose_num_kv_splits(len(lengths), KV_HEADS_CHECK, max(lengths), DEVICE)
    decode_attention(q, k, v, table, rows, lens, out, head_dim**-0.5, splits)
    errors = []
    for i in sample_rows(lengths):
        slots = table[i, : lengths[i]]
        pos = torch.tensor([lengths[i] - 1], device=DEVICE)
        ref = reference(q[i : i + 1], k[slots], v[slots], pos, head_dim**-0.5)
        errors.append(((out[i : i + 1].float() - ref).norm() / ref.norm()).item())
    return max(errors)


def check_extend(prefix_lens: list[int], new_lens: list[int], group: int, head_dim: int, scatter: bool) -> float:
    totals = [p + n for p, n in zip(prefix_lens, new_lens, strict=True)]
    k, v, table = paged(totals, KV_HEADS_CHECK, head_dim, scatter, seed=len(totals) * 11 + group)
    starts = [sum(new_lens[:i]) for i in range(len(new_lens))]
    q = torch.randn(sum(new_lens), KV_HEADS_CHECK * group, head_dim, device=DEVICE, dtype=DTYPE)
    out = torch.empty_like(q)
    ints = lambda xs: torch.tensor(xs, dtype=torch.int32, device=DEVICE)  # noqa: E731
    rows = ints(list(range(len(totals))))
    new_slots = torch.cat([table[i, p:t] for i, (p, t) in enumerate(zip(prefix_lens, totals, strict=True))])
    extend_attention(
        q, k[new_slots], v[new_slots], k, v, table, rows, ints(prefix_lens), ints(new_lens), ints(starts), out,
        head_dim**-0.5, max(new_lens),
    )  # fmt: skip
    errors = []
    for i in sample_rows(totals, limit=8):
        slots = table[i, : totals[i]]
        pos = torch.arange(prefix_lens[i], totals[i], device=DEVICE)
        rows_i = slice(starts[i], starts[i] + new_lens[i])
        ref = reference(q[rows_i], k[slots], v[slots], pos, head_dim**-0.5)
        errors.append(((out[rows_i].float() - ref).norm() / ref.norm()).item())
    return max(errors)


def correctness(quick: bool, scatter: bool) -> list[dict]:
    rng = random.Random(1)
    decode_cases = [(1, [32768]), (16, None), (64, None), (256, None)]
    extend_cases = [
        ([0], [4096]),
        ([0, 30000, 1000, 17], [2048, 512, 1, 300]),
        ([rng.randint(0, 4096) for _ in range(16)], None),
    ]
    results = []
    combos = [(g, d) for g in (1, 4, 8) for d in (64, 128)]
    for group, head_dim in combos[:2] if quick else combos:
        for batch, lengths in decode_cases:
            if lengths is None:
                lengths = [rng.randint(1, 32768 if batch <= 16 else 4096) for _ in range(batch)]
                lengths[0] = 32768
            err = check_decode(lengths, group, head_dim, scatter)
            results.append({"kernel": "decode", "group": group, "head_dim": head_dim, "batch": batch,
                            "max_len": max(lengths), "rel_err": err, "ok": err <= 1e-2})  # fmt: skip
        for prefix_lens, new_lens in extend_cases:
            new_lens = new_lens or [rng.randint(1, 512) for _ in prefix_lens]
            err = check_extend(prefix_lens, new_lens, group, head_dim, scatter)
            results.append({"kernel": "extend", "group": group, "head_dim": head_dim, "batch": len(prefix_lens),
                            "max_prefix": max(prefix_lens), "max_new": max(new_lens), "rel_err": err,
                            "ok": err <= 1e-2})  # fmt: skip
        torch.cuda.empty_cache()
    return results


# ---- timing ------------------------------------------------------------------------------------------------------


def time_ms(fn, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def copy_gbps() -> float:
    """Device-to-device copy rate, bytes read plus written: the practical bandwidth roofline."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device=DEVICE)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), repeats=10)
    return 2 * (1 << 30) / ms / 1e6


def decode_case(batch: int, ctx: int, scatter: bool, repeats: int) -> dict:
    """Decode of ``batch`` sequences of ``ctx`` tokens each at the Llama-3.1-8B attention shape."""
    heads, kv_heads, head_dim = 32, 8, 128
    tokens = batch * ctx
    kv_bytes = 2 * tokens * kv_heads * head_dim * 2  # K and V, bf16
    pool = KVPool(1, tokens, kv_heads, head_dim, DTYPE, DEVICE)
    table = ReqToTokenPool(batch, ctx, DEVICE)
    order = torch.randperm(tokens, device=DEVICE) if scatter else torch.arange(tokens, device=DEVICE)
    table.table.copy_((order + 1).view(batch, ctx))
    pool.k[0].normal_()
    pool.v[0].normal_()
    q = torch.randn(batch, heads, head_dim, device=DEVICE, dtype=DTYPE)
    k_new = torch.randn(batch, kv_heads, head_dim, device=DEVICE, dtype=DTYPE)
    v_new = torch.randn_like(k_new)

    def prepared(backend) -> ForwardBatch:
        fb = ForwardBatch(
            input_ids=torch.zeros(batch, dtype=torch.int64, device=DEVICE),
            positions=torch.full((batch,), ctx - 1, dtype=torch.int64, device=DEVICE),
            out_cache_loc=table.table[:, ctx - 1].clone(),
            sample_indices=torch.arange(batch, device=DEVICE),
            num_decode=batch,
            layouts=[SequenceLayout(i, ctx - 1, 1) for i in range(batch)],
            attention=backend,
        )
        fb.attn_meta = backend.prepare(fb)
        return fb

    triton_backend = TritonAttentionBackend(pool, table, head_dim**-0.5)
    fb = prepared(triton_backend)
    meta = fb.attn_meta
    row: dict = {"batch": batch, "ctx": ctx, "splits": meta.num_kv_splits}
    row["triton_ms"] = time_ms(lambda: triton_backend.forward(q, k_new, v_new, 0, fb), repeats)
    out = torch.empty_like(q)
    args = (q, pool.k[0], pool.v[0], table.table, meta.decode_rows, meta.decode_lens, out, head_dim**-0.5)
    row["kernel_ms"] = time_ms(lambda: decode_attention(*args, meta.num_kv_splits, meta.decode_scratch), repeats)
    row["kernel_gbps"] = kv_bytes / row["kernel_ms"] / 1e6
    row["torch_ms"] = None
    if 3 * kv_bytes < torch.cuda.mem_get_info()[0]:  # the torch backend gathers a padded copy of the KV
        torch_backend = TorchAttentionBackend(pool, table, head_dim**-0.5)
        torch_fb = prepared(torch_backend)
        with contextlib.suppress(torch.cuda.OutOfMemoryError):  # stays None
            row["torch_ms"] = time_ms(lambda: torch_backend.forward(q, k_new, v_new, 0, torch_fb), repeats)
    row["triton_vs_torch"] = row["torch_ms"] / row["triton_ms"] if row["torch_ms"] else None
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="two GQA/dim combinations and fewer timing cases")
    parser.add_argument("--scatter", action="store_true", help="shuffle KV slots instead of contiguous runs")
    parser.add_argument("--skip-correctness", action="store_true")
    args = parser.parse_args()
    out_dir = Path(os.environ.get("OUT", "./out"))
    out_dir.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name(DEVICE)
    report: dict = {"device": name, "scatter": args.scatter}

    if not args.skip_correctness:
        checks = correctness(args.quick, args.scatter)
        report["correctness"] = checks
        bad = [c for c in checks if not c["ok"]]
        print(f"correctness: {len(checks) - len(bad)}/{len(checks)} ok, worst rel err "
              f"{max(c['rel_err'] for c in checks):.2e}")  # fmt: skip
        for c in bad:
            print("  FAIL", c)

    roofline = copy_gbps()
    report["copy_gbps"] = roofline
    print(f"\n{name}: device-to-device copy {roofline:.0f} GB/s (read + write)")
    print(f"{'batch':>5} {'ctx':>6} {'splits':>6} {'kernel ms':>10} {'GB/s':>7} {'of copy':>7} "
          f"{'triton ms':>10} {'torch ms':>9} {'speedup':>7}")  # fmt: skip
    rows = []
    batches, contexts = ((1, 64), (512, 4096)) if args.quick else ((1, 16, 64, 256), (512, 1024, 4096, 32768))
    for batch in batches:
        for ctx in contexts:
            row = decode_case(batch, ctx, args.scatter, repeats=20 if batch * ctx <= 1 << 20 else 8)
            torch.cuda.empty_cache()
            row["fraction_of_copy"] = row["kernel_gbps"] / roofline
            rows.append(row)
            torch_ms = f"{row['torch_ms']:.3f}" if row.get("torch_ms") else "-"
            speedup = f"{row['triton_vs_torch']:.1f}x" if row["triton_vs_torch"] else "-"
            print(f"{batch:>5} {ctx:>6} {row['splits']:>6} {row['kernel_ms']:>10.3f} {row['kernel_gbps']:>7.0f} "
                  f"{row['fraction_of_copy']:>7.2f} {row['triton_ms']:>10.3f} {torch_ms:>9} {speedup:>7}")  # fmt: skip
    report["decode_timing"] = rows
    path = out_dir / "attention_check.json"
    path.write_text(json.dumps(report, indent=1))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
