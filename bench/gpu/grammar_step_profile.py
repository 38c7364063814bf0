"""Where the time of a constrained decode step goes (GPU diagnostic for the grammar overhead).

Wraps the engine's grammar fill / apply / accept and the model call with wall-clock timers (no extra syncs) and
prints the median per pure decode step for unconstrained and JSON-schema decoding at the same batch.
Usage: python bench/gpu/grammar_step_profile.py --tokenizer VOCAB.gguf [--batch 64]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict

import torch

from plait.bench.grammar_bench import _records_schema
from plait.engine import EngineConfig, EngineCore, GenerateRequest, SamplingParams


def timed(store: dict[str, list[float]], name: str, fn):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            store[name].append(time.perf_counter() - start)

    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="llama-3.1-8b")
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--prompt-len", type=int, default=512)
    parser.add_argument("--gen-len", type=int, default=64)
    args = parser.parse_args()
    config = EngineConfig(model=args.model, weights="dummy", tokenizer=args.tokenizer, kv_slots=65536)
    config.max_running = max(config.max_running, args.batch)
    core = EngineCore(config)
    store: dict[str, list[float]] = defaultdict(list)
    g = core.grammars
    g.fill = timed(store, "fill", g.fill)
    g.apply = timed(store, "apply", g.apply)
    g.accept = timed(store, "accept", g.accept)
    core.model = timed(store, "model_launch", core.model)
    prompts = torch.randint(100, 30000, (args.batch, args.prompt_len)).tolist()
    common = {"max_tokens": args.gen_len, "temperature": 0.0, "ignore_eos": True}
    sides = {
        "unconstrained": SamplingParams(**common),
        "json_schema": SamplingParams(**common, json_schema=_records_schema(args.gen_len)),
    }
    report = {}
    for repeat in range(2):
        for name, sampling in sides.items():
            core.flush_prefix_cache()
            for ids in prompts:
                core.add_request(GenerateRequest(prompt_token_ids=ids, sampling=sampling))
            steps: list[dict[str, float]] = []
            while core.has_work():
                store.clear()
                prefilled = core.meter.totals[1]
                start = time.perf_counter()
                core.step()
                total = time.perf_counter() - start
                if core.meter.totals[1] == prefilled:
                    row = {k: sum(v) for k, v in store.items()}
                    row["step"] = total
                    steps.append(row)
            if repeat == 1:
                keys = sorted({k for s in steps for k in s})
                report[name] = {k: 1e3 * statistics.median(s.get(k, 0.0) for s in steps) for k in keys}
    print(json.dumps(report, indent=1))
    print(f"{'part (median ms per decode step)':34s}" + "".join(f"{n:>16s}" for n in sides))
    for key in sorted({k for r in report.values() for k in r}):
        print(f"{key:34s}" + "".join(f"{report[n].get(key, 0.0):16.3f}" for n in sides))


if __name__ == "__main__":
    main()
