"""What moving a running program costs (``plait bench migration``): the pause of a live migration against the time
to compute the program's prompt again.

Two engine replicas in this process (the ``local`` backend: one device is enough; replicas share it). For each prompt
length, a program's call starts on one replica; after ``--tokens-before`` tokens it is migrated to the other: the
call stops after the tokens it has sent, the KV of its prompt and those tokens is copied through host memory into the
other replica's prefix cache, and the call continues there. The pause is from the stop to the first token on the
target. The recompute time is the time to first token of the same prompt on an idle replica that holds none of it
(what a migration without its KV, or a lost KV, costs). Outputs are checked equal to an unmigrated run (greedy).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

from plait.cli.engine_args import add_engine_arguments, engine_config_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "migration",
        help="live migration of a running program between engine replicas: pause vs recomputing its prompt",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--prompt-lens", default="512,2048,8192", help="prompt lengths in tokens, comma-separated")
    parser.add_argument("--tokens-before", type=int, default=8, help="tokens generated before the migration")
    parser.add_argument("--tokens-after", type=int, default=8, help="tokens generated after it")
    parser.add_argument("--repeats", type=int, default=3, help="migrations per length (the median is reported)")
    parser.add_argument("--output", type=Path, default=None, help="JSON path (default under plait-results/)")
    add_engine_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from plait.bench.report import default_output, print_table, write_json

    try:
        lengths = [int(x) for x in args.prompt_lens.split(",") if x]
    except ValueError:
        print(f"error: --prompt-lens {args.prompt_lens!r}: give whole numbers, comma-separated", file=sys.stderr)
        return 2
    if not lengths or min(lengths) < 1 or args.tokens_before < 1 or args.tokens_after < 1 or args.repeats < 1:
        print("error: --prompt-lens, --tokens-before, --tokens-after and --repeats must be >= 1", file=sys.stderr)
        return 2
    rows, results = asyncio.run(_measure(args, lengths))
    print_table("live migration: pause vs recomputing the prompt", _COLUMNS, rows)
    output = write_json(args.output or default_output("migration"), {"bench": "migration", "results": results})
    print(f"wrote {output}")
    return 0 if all(r["output_equal"] for r in results) else 1


_COLUMNS = ["prompt", "KV copied", "KV MiB", "pause ms", "recompute ms", "recompute / pause", "output equal"]


async def _measure(args: argparse.Namespace, lengths: list[int]) -> tuple[list[list[Any]], list[dict[str, Any]]]:
    from plait.engine import SamplingParams
    from plait.runtime.replicas import ReplicaConfig, ReplicaSet

    config = engine_config_from_args(args)
    replicas = ReplicaSet.start(config, ReplicaConfig(replicas=2, backend="local"))
    vocab = replicas.model_config.vocab_size
    total = args.tokens_before + args.tokens_after
    rows: list[list[Any]] = []
    results: list[dict[str, Any]] = []
    try:
        for length in lengths:
            pauses, recomputes, copied, equal = [], [], 0, True
            for repeat in range(args.repeats):
                prompt = [(7919 * (i + 1) + 104729 * (repeat + 1) + length) % (vocab - 10) + 5 for i in range(length)]
                sampling = SamplingParams(max_tokens=total, temperature=0.0, ignore_eos=True)
                ref = f"ref-{length}-{repeat}"
                reference = await _tokens(replicas, _request(prompt, sampling, ref))
                program = f"moved-{length}-{repeat}"
                target: list[int] = []

                async def move(count: int, program: str = program, target: list[int] = target) -> None:
                    if count == args.tokens_before:
                        source = replicas.router.bindings[program]
                        target.append(1 - source)
                        await replicas.migrate(program, 1 - source)

                moved = await _tokens(replicas, _request(prompt, sampling, program), move)
                equal = equal and moved == reference
                migration = replicas.migrations[-1]
                pauses.append(migration.pause_s)
                copied = migration.kv_tokens
                # The same prompt, cold, on the replica the program left: its first token is the recompute.
                fresh = [(t + 1) % (vocab - 10) + 5 for t in prompt]  # no prefix of it is cached anywhere
                started = time.perf_counter()
                cold = f"cold-{length}-{repeat}"
                await _tokens(replicas, _request(fresh, sampling, cold), stop=1)
                recomputes.append(time.perf_counter() - started)
            pause, recompute = sorted(pauses)[len(pauses) // 2], sorted(recomputes)[len(recomputes) // 2]
            kv_mib = copied * _bytes_per_token(replicas) / 2**20
            rows.append([length, copied, f"{kv_mib:.1f}", f"{pause * 1e3:.1f}", f"{recompute * 1e3:.1f}",
                         f"{recompute / pause:.1f}x" if pause else "-", "yes" if equal else "NO"])  # fmt: skip
            results.append(
                {
                    "prompt_tokens": length,
                    "kv_tokens_copied": copied,
                    "kv_mib": kv_mib,
                    "pause_s": pauses,
                    "recompute_s": recomputes,
                    "recompute_over_pause": recompute / pause if pause else None,
                    "output_equal": equal,
                }
            )
    finally:
        replicas.close()
    return rows, results


def _request(prompt_ids: list[int], sampling: Any, name: str) -> Any:
    """A call of its own program ``name``."""
    from plait.engine import GenerateRequest

    return GenerateRequest(prompt_token_ids=prompt_ids, sampling=sampling, request_id=name, program_id=name)


async def _tokens(replicas: Any, request: Any, on_delta: Any = None, stop: int | None = None) -> list[int]:
    tokens: list[int] = []
    count = 0
    async for delta in replicas.generate(request):
        tokens.extend(delta.token_ids)
        count += len(delta.token_ids)
        if on_delta is not None and delta.token_ids:
            await on_delta(count)
        if stop is not None and count >= stop:
            break
    return tokens


def _bytes_per_token(replicas: Any) -> int:
    """A token's K and V over every layer, on one replica."""
    import torch

    from plait.cache import KVPool

    shape, dtype = replicas.model_config, getattr(torch, replicas.effective_settings()["dtype"])
    return KVPool.bytes_per_slot(shape.num_layers, shape.num_kv_heads, shape.head_dim, dtype)
