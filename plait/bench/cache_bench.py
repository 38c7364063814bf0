"""``plait bench cache``: what the radix cache and its hints buy, measured on the engine in one run.

Workloads:
- ``multi-agent``: several agents with large fixed prompts called in a known cyclic order; the device KV pool holds
  only about half of them, the host tier is on. Run once with LRU eviction (request-level: no hints) and once with
  next-use hints (the caller tells the cache each agent's steps to next use, and prefetches the next agent's
  prompt from the host tier). Reports GPU hit rate, host hits, computed prefill tokens and wall time.
- ``overhead``: 256 running requests with shared prefixes; time spent inside the prefix cache per scheduling step,
  as a fraction of the step, against the same run with the cache off.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from plait.cli.engine_args import add_engine_arguments, engine_config_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "cache",
        help="prefix cache: LRU vs next-use hints (multi-agent), radix overhead",
        description="Measure the radix prefix cache: a cyclic multi-agent workload with LRU vs next-use hints, "
        "and the CPU overhead of the cache per scheduling step at 256 running requests.",
    )
    parser.add_argument("--workload", choices=["multi-agent", "overhead", "all"], default="all")
    parser.add_argument("--agents", type=int, default=8, help="multi-agent: number of agents")
    parser.add_argument("--agent-prompt-len", type=int, default=512, help="multi-agent: tokens per agent prompt")
    parser.add_argument("--rounds", type=int, default=4, help="multi-agent: calls per agent")
    parser.add_argument("--gen-len", type=int, default=4, help="tokens generated per call")
    parser.add_argument(
        "--device-agents", type=float, default=4.0, help="multi-agent: device KV pool size, in agent prompts"
    )
    parser.add_argument("--host-agents", type=float, default=3.0, help="multi-agent: host tier size, in agent prompts")
    parser.add_argument("--running", type=int, default=256, help="overhead: running requests")
    parser.add_argument("--output", type=Path, default=None, help="JSON path (default under plait-results/)")
    add_engine_arguments(parser)
    parser.set_defaults(handler=run)


def _agent_prompts(count: int, length: int, vocab: int) -> list[list[int]]:
    import torch

    generator = torch.Generator().manual_seed(1)
    return torch.randint(100, vocab, (count, length), generator=generator).tolist()


def _multi_agent(args: argparse.Namespace, hints: bool) -> dict[str, Any]:
    from plait.engine import EngineCore, GenerateRequest, SamplingParams

    config = engine_config_from_args(args)
    prompt_len = args.agent_prompt_len
    suffix_len = 16
    call_len = prompt_len + suffix_len + args.gen_len
    config.kv_slots = int(args.device_agents * prompt_len) + 2 * call_len  # + room for the running call
    config.host_kv_slots = int(args.host_agents * prompt_len)
    config.eviction_policy = "next-use" if hints else "lru"
    config.prefix_cache = "radix"
    core = EngineCore(config)
    agents = _agent_prompts(args.agents, prompt_len, core.model_config.vocab_size)
    order = [a for _ in range(args.rounds) for a in range(args.agents)]
    sampling = SamplingParams(max_tokens=args.gen_len, temperature=0.0, ignore_eos=True)
    prompt_tokens = 0
    start = time.perf_counter()
    for step, agent in enumerate(order):
        if hints:
            # Steps to next use of every agent from here on; the next agent's prompt is fetched ahead.
            for other in range(args.agents):
                upcoming = [i for i in range(step + 1, len(order)) if order[i] == other]
                distance = (upcoming[0] - step) if upcoming else float("inf")
                core.hint_next_use(prefix_token_ids=agents[other], steps=distance)
            if step + 1 < len(order):
                core.prefetch(prefix_token_ids=agents[order[step + 1]])
        suffix = [100 + (step * 7 + i) % 1000 for i in range(suffix_len)]
        prompt = agents[agent] + suffix
        prompt_tokens += len(prompt)
        core.add_request(GenerateRequest(prompt_token_ids=prompt, sampling=sampling, request_id=f"call{step}"))
        while core.has_work():
            core.step()
    elapsed = time.perf_counter() - start
    stats = core.stats()
    core.check_invariants()
    return {
        "mode": "next-use hints + prefetch" if hints else "LRU (baseline)",
        "calls": len(order),
        "prompt_tokens": prompt_tokens,
        "gpu_hit_rate": stats.cached_prefix_tokens / prompt_tokens,
        "host_hit_tokens": stats.host_hit_tokens,
        "computed_prefill_tokens": stats.prefill_tokens,
        "evictions": stats.evictions,
        "write_backs": stats.write_backs,
        "loads": stats.loads,
        "bytes_moved": stats.bytes_moved,
        "wall_s": elapsed,
    }


class _TimedCache:
    """Wraps a prefix cache and accumulates the time spent in its methods."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.seconds = 0.0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return attr(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        return timed


def _overhead(args: argparse.Namespace, prefix_cache: str) -> dict[str, Any]:
    import random

    from plait.engine import EngineCore, GenerateRequest, SamplingParams

    config = engine_config_from_args(args)
    config.prefix_cache = prefix_cache
    config.max_running = max(config.max_running, args.running)
    config.max_batch_tokens = max(config.max_batch_tokens, 8192)
    config.kv_slots = (
        config.kv_slots or args.running * 400
    )  # all running requests fit: measure the cache, not retraction
    core = EngineCore(config)
    timed = _TimedCache(core.prefix_cache)
    core.scheduler.prefix_cache = timed
    rng = random.Random(0)
    vocab = core.model_config.vocab_size
    shared = [[rng.randrange(100, vocab) for _ in range(256)] for _ in range(8)]
    sampling = SamplingParams(max_tokens=32, temperature=0.0, ignore_eos=True)
    for i in range(args.running):
        prompt = shared[i % 8] + [rng.randrange(100, vocab) for _ in range(rng.randint(8, 64))]
        core.add_request(GenerateRequest(prompt_token_ids=prompt, sampling=sampling, request_id=f"o{i}"))
    step_seconds = 0.0
    steps = 0
    wall = time.perf_counter()
    while core.has_work():
        start = time.perf_counter()
        core.step()
        step_seconds += time.perf_counter() - start
        steps += 1
    return {
        "prefix_cache": prefix_cache,
        "running": args.running,
        "steps": steps,
        "step_ms": 1000 * step_seconds / steps,
        "cache_ms_per_step": 1000 * timed.seconds / steps,
        "cache_fraction": timed.seconds / step_seconds,
        "computed_prefill_tokens": core.stats().prefill_tokens,
        "retractions": core.stats().retractions,
        "wall_s": time.perf_counter() - wall,
    }


def run(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from plait.bench.report import default_output, print_table, write_json

    payload: dict[str, Any] = {"bench": "cache", "model": args.model, "weights": args.weights}
    jobs = []
    if args.workload in ("multi-agent", "all"):
        jobs += [
            ("multi-agent", lambda: _multi_agent(args, hints=False)),
            ("multi-agent", lambda: _multi_agent(args, True)),
        ]
    if args.workload in ("overhead", "all"):
        jobs += [("overhead", lambda: _overhead(args, "none")), ("overhead", lambda: _overhead(args, "radix"))]
    results: dict[str, list[dict[str, Any]]] = {}
    with Progress() as progress:
        task = progress.add_task("cache bench", total=len(jobs))
        for name, job in jobs:
            results.setdefault(name, []).append(job())
            progress.advance(task)
    if "multi-agent" in results:
        rows = [
            [r["mode"], f"{100 * r['gpu_hit_rate']:.1f}%", r["host_hit_tokens"], r["computed_prefill_tokens"],
             r["evictions"], r["loads"], f"{r['wall_s']:.2f}"]
            for r in results["multi-agent"]
        ]  # fmt: skip
        print_table(
            f"multi-agent: {args.agents} agents x {args.agent_prompt_len} tokens, {args.rounds} rounds, "
            f"device pool ~{args.device_agents} agents, host ~{args.host_agents}",
            ["mode", "GPU hit rate", "host hit tok", "computed prefill tok", "evictions", "loads", "wall s"],
            rows,
        )
    if "overhead" in results:
        baseline = next((r for r in results["overhead"] if r["prefix_cache"] == "none"), None)
        for r in results["overhead"]:
            # The timing wrapper costs the same in both runs; what radix adds is the difference.
            added = r["cache_ms_per_step"] - (baseline["cache_ms_per_step"] if baseline else 0.0)
            r["added_fraction"] = added / r["step_ms"]
        rows = [
            [r["prefix_cache"], r["running"], r["steps"], f"{r['step_ms']:.2f}", f"{r['cache_ms_per_step']:.3f}",
             f"{100 * r['cache_fraction']:.2f}%", f"{100 * r['added_fraction']:.2f}%", r["computed_prefill_tokens"],
             f"{r['wall_s']:.2f}"]
            for r in results["overhead"]
        ]  # fmt: skip
        print_table(
            "radix overhead per scheduling step",
            [
                "prefix cache",
                "running",
                "steps",
                "step ms",
                "cache ms/step",
                "cache share",
                "added vs none",
                "computed prefill",
                "wall s",
            ],
            rows,
        )
    payload["results"] = results
    path = write_json(args.output or default_output("cache"), payload)
    print(f"wrote {path}")
    return 0
