"""Where the wall time of a full decode step goes, with CUDA graphs and the overlap loop as served.

Prints, per step: the wall time, the host time of each phase of ``EngineCore.step`` (the wait for the previous
step's tokens apart), the device time of all kernels (torch.profiler) and the host functions that cost the most
(cProfile). A step is host-bound when its host work without the wait exceeds the device time.

Usage: python bench/gpu/step_breakdown.py [--model llama-3.1-8b] [--batch 128] [--prompt-len 1024] [--steps 30]
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import pstats
import time

import torch
from torch.profiler import ProfilerActivity, profile

import plait.engine.inflight as inflight
from plait.engine import EngineConfig, EngineCore, GenerateRequest, SamplingParams


def timed(spent: collections.Counter, name: str, fn):
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[name] += time.perf_counter() - t0

    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="llama-3.1-8b")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--prompt-len", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--overlap", default="on")
    parser.add_argument("--top", type=int, default=8, help="kernels listed")
    args = parser.parse_args()
    tokens = args.batch * args.prompt_len
    config = EngineConfig(
        model=args.model,
        weights="dummy",
        attention_backend="triton",
        kv_slots=tokens + args.batch * (3 * args.steps + 64) + 1024,
        max_batch_tokens=16384,
        chunk_size=min(args.prompt_len, 16384),
        max_running=max(256, args.batch),
        overlap=args.overlap,
    )
    core = EngineCore(config)
    prompts = torch.randint(100, 30000, (args.batch, args.prompt_len)).tolist()
    sampling = SamplingParams(max_tokens=3 * args.steps + 40, temperature=0.0, ignore_eos=True)
    for ids in prompts:
        core.add_request(GenerateRequest(prompt_token_ids=ids, sampling=sampling))
    sched = core.scheduler
    while sched.waiting or any(not s.is_decode for s in sched.running):
        core.step()
    for _ in range(5):
        core.step()
    torch.cuda.synchronize()

    spent: collections.Counter = collections.Counter()
    core.scheduler.schedule = timed(spent, "schedule", core.scheduler.schedule)
    core.runner.prepare = timed(spent, "runner.prepare", core.runner.prepare)
    core.runner.forward = timed(spent, "runner.forward (launch)", core.runner.forward)
    core.scheduler.commit = timed(spent, "scheduler.commit", core.scheduler.commit)
    core._resolve = timed(spent, "resolve (incl. wait)", core._resolve)
    core._launch_sampling = timed(spent, "launch sampling", core._launch_sampling)
    token_list = inflight.InflightStep.token_list
    inflight.InflightStep.token_list = timed(spent, "  wait for tokens", token_list)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        core.step()
    torch.cuda.synchronize()
    wall = (time.perf_counter() - t0) / args.steps
    inflight.InflightStep.token_list = token_list
    print(f"{args.model} batch {args.batch} context {args.prompt_len}: wall {wall * 1e3:.2f} ms per step")
    for name, seconds in spent.most_common():
        print(f"  {name:28s} {seconds / args.steps * 1e3:7.3f} ms")

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(args.steps):
            core.step()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    total = sum(e.self_device_time_total for e in events) / args.steps / 1e3
    print(f"device: {total:.3f} ms of kernels per step")
    for e in sorted(events, key=lambda e: -e.self_device_time_total)[: args.top]:
        per_call = e.self_device_time_total / max(e.count, 1)
        print(
            f"  {e.self_device_time_total / args.steps / 1e3:8.3f} ms {e.count / args.steps:6.1f}x "
            f"{per_call:8.1f} us  {e.key[:80]}"
        )

    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(args.steps):
        core.step()
    profiler.disable()
    stats = pstats.Stats(profiler)
    stats.sort_stats("tottime").print_stats(22)


if __name__ == "__main__":
    main()
