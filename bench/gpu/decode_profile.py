"""Where the device time of a decode step goes: the top kernels of eager decode steps under torch.profiler.

Usage: python bench/gpu/decode_profile.py [--model llama-3.1-8b] [--batch 1] [--prompt-len 512]
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from plait.engine import EngineConfig, EngineCore, GenerateRequest, SamplingParams


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="llama-3.1-8b")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prompt-len", type=int, default=512)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--graphs", default="off", help="decode CUDA graphs (off: every kernel is listed)")
    parser.add_argument("--host", action="store_true", help="also list the host's top operations and CUDA API calls")
    args = parser.parse_args()
    tokens = args.batch * args.prompt_len
    config = EngineConfig(
        model=args.model,
        weights="dummy",
        attention_backend="triton",
        kv_slots=max(65536, tokens + args.batch * (args.steps + 32)),
        cuda_graphs=args.graphs,
        max_batch_tokens=tokens,  # the whole prefill in one step: every profiled step is a decode step
        chunk_size=args.prompt_len,
        max_running=max(256, args.batch),
    )
    core = EngineCore(config)
    prompts = torch.randint(100, 30000, (args.batch, args.prompt_len)).tolist()
    sampling = SamplingParams(max_tokens=args.steps + 4, temperature=0.0, ignore_eos=True)
    for ids in prompts:
        core.add_request(GenerateRequest(prompt_token_ids=ids, sampling=sampling))
    core.step()  # prefill
    core.step()
    torch.cuda.synchronize()
    activities = [ProfilerActivity.CUDA] + ([ProfilerActivity.CPU] if args.host else [])
    with profile(activities=activities) as prof:
        for _ in range(args.steps):
            core.step()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    total = sum(e.self_device_time_total for e in events)
    count = sum(e.count for e in events)
    print(
        f"{args.model} batch {args.batch}: {total / args.steps / 1e3:.3f} ms device time per step, "
        f"{count / args.steps:.0f} kernels per step"
    )
    for e in sorted(events, key=lambda e: -e.self_device_time_total)[:14]:
        print(f"{e.self_device_time_total / args.steps / 1e3:8.3f} ms {e.count / args.steps:6.0f}x  {e.key[:90]}")
    if args.host:
        host = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CPU]
        print("host: self CPU time per step")
        for e in sorted(host, key=lambda e: -e.self_cpu_time_total)[:22]:
            print(f"{e.self_cpu_time_total / args.steps / 1e3:8.3f} ms {e.count / args.steps:6.0f}x  {e.key[:90]}")


if __name__ == "__main__":
    main()
