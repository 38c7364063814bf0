"""Issue 44, acceptance 1: logits of the model split over N ranks against the whole model's, beside the bf16 noise
floor measured the same way as the fast path's (the whole model against itself with the first layer's input-norm
weights one ulp off).

Each size runs N processes (NCCL, one GPU each; ``--same-device`` puts every rank on cuda:0 and talks gloo, which
checks the numerics on a one-GPU machine, not the speed). Every rank builds the model from the same dummy weights,
runs a prefill of ``--prompt`` tokens and one decode step through the torch attention path; rank 0 writes its logits.
Usage: python bench/gpu/tensor_parallel_logits.py [--model llama-3.1-8b] [--sizes 2,4] [--same-device]
Writes $OUT/tensor_parallel_logits.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
from pathlib import Path

import torch
import torch.multiprocessing as mp

from plait.cache import KVPool, ReqToTokenPool
from plait.engine.attention.torch_backend import TorchAttentionBackend
from plait.engine.forward_batch import ForwardBatch, SequenceLayout
from plait.engine.model import LlamaForCausalLM
from plait.engine.model_loader import resolve_model
from plait.engine.tensor_parallel import TensorParallel, init_tensor_parallel
from plait.engine.weights.dummy_weights import dummy_weights


def logits_of(model: LlamaForCausalLM, prompt: int, device: torch.device) -> torch.Tensor:
    """Logits of a ``prompt``-token prefill's last row and of one decode step after it."""
    local = model.config
    pool = KVPool(local.num_layers, prompt + 2, local.num_kv_heads, local.head_dim, model.embed_tokens.dtype, device)
    table = ReqToTokenPool(1, prompt + 2, device)
    attention = TorchAttentionBackend(pool, table, local.head_dim**-0.5)
    ids = torch.randint(0, model.full_config.vocab_size, (prompt + 1,), generator=torch.Generator().manual_seed(3))
    rows = []
    for start, new in ((0, prompt), (prompt, 1)):
        slots = torch.arange(1 + start, 1 + start + new, device=device)
        table.write(0, start, slots)
        batch = ForwardBatch(
            input_ids=ids[start : start + new].to(device),
            positions=torch.arange(start, start + new, device=device),
            out_cache_loc=slots,
            sample_indices=torch.tensor([new - 1], device=device),
            num_decode=int(start > 0),
            layouts=[SequenceLayout(0, start, new)],
            attention=attention,
        )
        batch.attn_meta = attention.prepare(batch)
        rows.append(model(batch))
    return torch.cat(rows).cpu()


def device_of(rank: int, same: bool) -> torch.device:
    """cuda:rank (cuda:0 for every rank with ``same``); the CPU where there is no GPU (a dry run of the script)."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    device = torch.device("cuda", 0 if same else rank)
    torch.cuda.set_device(device)
    return device


def rank_main(rank: int, size: int, port: int, model_name: str, dtype: str, prompt: int, same: bool, out: str) -> None:
    device = device_of(rank, same)
    backend = "nccl" if device.type == "cuda" and not same else "gloo"
    tp = init_tensor_parallel(rank, size, f"tcp://127.0.0.1:{port}", backend)
    config = resolve_model(model_name, "dummy").config
    model = LlamaForCausalLM(config, prompt + 2, device, getattr(torch, dtype), tp=tp)
    dummy_weights(model, seed=0)
    logits = logits_of(model, prompt, device)
    if rank == 0:
        torch.save(logits, out)
    torch.distributed.destroy_process_group()


def whole_model(model_name: str, dtype: str, prompt: int, perturb: bool) -> torch.Tensor:
    device = device_of(0, True)
    config = resolve_model(model_name, "dummy").config
    model = LlamaForCausalLM(config, prompt + 2, device, getattr(torch, dtype), tp=TensorParallel.single())
    dummy_weights(model, seed=0)
    if perturb:  # the first layer's input-norm weights one bf16 ulp up (triton_vs_torch_logits.py's control)
        weight = model.layers[0].input_layernorm.weight
        with torch.no_grad():
            weight.copy_(torch.nextafter(weight, torch.full_like(weight, float("inf"))))
    return logits_of(model, prompt, device)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="llama-3.1-8b")
    parser.add_argument("--sizes", default="2,4")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--prompt", type=int, default=256)
    parser.add_argument("--same-device", action="store_true", help="every rank on cuda:0, gloo (numerics only)")
    args = parser.parse_args()
    whole = whole_model(args.model, args.dtype, args.prompt, perturb=False)
    floor = relative_error(whole_model(args.model, args.dtype, args.prompt, perturb=True), whole)
    results = {"model": args.model, "dtype": args.dtype, "noise_floor": floor, "sizes": {}}
    for size in [int(s) for s in args.sizes.split(",") if s]:
        if torch.cuda.is_available() and not args.same_device and size > torch.cuda.device_count():
            results["sizes"][size] = {"skipped": f"{torch.cuda.device_count()} GPUs"}
            continue
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        with tempfile.TemporaryDirectory() as tmp:
            path = str(Path(tmp) / "logits.pt")
            run_args = (size, port, args.model, args.dtype, args.prompt, args.same_device, path)
            mp.spawn(rank_main, args=run_args, nprocs=size, join=True)
            split = torch.load(path)
        error = relative_error(split, whole)
        results["sizes"][size] = {"relative_error": error, "vs_floor": error / floor if floor else None}
    out = Path(os.environ.get("OUT", "/tmp/out"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "tensor_parallel_logits.json").write_text(json.dumps(results, indent=2))
    print(f"{'TP':>3} {'rel. error':>11} {'x floor':>8}   (floor {floor:.2e}, {args.model}, {args.dtype})")
    for size, row in results["sizes"].items():
        if "skipped" in row:
            print(f"{size:>3} skipped: {row['skipped']}")
        else:
            print(f"{size:>3} {row['relative_error']:>11.2e} {row['vs_floor'] or 0:>8.2f}")


if __name__ == "__main__":
    main()
