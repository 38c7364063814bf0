"""Command-line flags shared by every subcommand that starts an engine."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from plait.engine.engine_config import EngineConfig
    from plait.engine.engine_policy import EnginePolicy
    from plait.runtime.planning import PlanConfig


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("engine")
    group.add_argument(
        "--model",
        default="default",
        help="'default' (SmolLM2-135M-Instruct), a .gguf file, an HF model directory, or a dummy shape name",
    )
    group.add_argument("--weights", default="auto", choices=["auto", "gguf", "safetensors", "dummy"])
    group.add_argument(
        "--tokenizer", default=None, help="tokenizer override: a GGUF (vocab-only works) or tokenizer.json"
    )
    group.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    group.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    group.add_argument("--kv-slots", type=int, default=0, help="KV pool size in tokens (0: automatic)")
    group.add_argument(
        "--tensor-parallel",
        type=int,
        default=1,
        metavar="N",
        help="split the model over N ranks, one process each: GPUs cuda:0..N-1 (NCCL), or CPU processes (gloo); "
        "N must divide the model's attention heads",
    )
    group.add_argument(
        "--host-kv-slots",
        type=int,
        default=0,
        help="host-memory KV tier in tokens: evicted prefixes are copied there and loaded back instead of recomputed "
        "(0: none; page-locked memory on a GPU machine)",
    )
    group.add_argument("--max-context", type=int, default=0, help="context window cap in tokens (0: the model's)")
    group.add_argument("--max-batch-tokens", type=int, default=2048, help="tokens per forward pass")
    group.add_argument("--chunk-size", type=int, default=512, help="longest prefill chunk per sequence per step")
    group.add_argument(
        "--max-running", type=int, default=256, help="most sequences in a batch (decoding or prefilling) at once"
    )
    group.add_argument(
        "--attention-backend",
        default="auto",
        choices=["auto", "torch", "cpu", "triton"],  # engine_config.ATTENTION_BACKENDS (torch stays unimported here)
        help="auto: triton on CUDA, cpu elsewhere; torch: the reference (CPU and GPU); cpu: batched attention that "
        "reads a shared prefix once (CPU serving); triton: paged Triton kernels (GPU; CPU through TRITON_INTERPRET=1)",
    )
    group.add_argument(
        "--packed-weights",
        default="auto",
        choices=["auto", "on", "off"],
        help="on the CPU, keep GGUF Q4_0/Q4_1/Q8_0 weights packed and multiply them with torch's int4 weight-only "
        "kernel (a fifth of float32's bytes, bfloat16 activations); auto: unless --dtype float32 (the exact "
        "dequantized path); off: dequantize every weight to --dtype",
    )
    group.add_argument(
        "--fused-ops",
        default="auto",
        choices=["auto", "on", "off"],
        help="fused Triton RMSNorm+residual, RoPE and SiLU-and-mul kernels (auto: with the triton backend on CUDA)",
    )
    group.add_argument(
        "--overlap",
        default="auto",
        choices=["auto", "on", "off"],
        help="the overlap loop: the host reads step N's tokens while step N+1 computes (auto: on with CUDA)",
    )
    group.add_argument(
        "--cuda-graphs",
        default="auto",
        choices=["auto", "on", "off"],
        help="decode CUDA graphs (auto: on with CUDA and the triton backend)",
    )
    group.add_argument(
        "--simulate",
        default="",
        metavar="GPU",
        help="run on CPU with the forward pass's time modelled for this GPU (h100, h200) and fixed outputs: for "
        "studying scheduling at a GPU's cost ratios; numbers are a model's, not measurements",
    )


def add_plan_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup, served: bool = False) -> None:
    """``--plan FIELD=VALUE`` (repeatable): overrides of plait mode's ``PlanConfig`` (``PlanConfig.with_overrides``).
    ``served``: a first ``--plan baseline`` starts from the request-level baseline (``PlanConfig.parse``)."""
    start = "'baseline' (a request-level engine: FCFS, LRU, no pins), then " if served else ""
    parser.add_argument(
        "--plan",
        action="append",
        default=[],
        metavar="baseline|FIELD=VALUE" if served else "FIELD=VALUE",
        help=f"the plan to run with (repeatable): {start}FIELD=VALUE overrides of a PlanConfig field, an engine "
        "policy field or a feature, e.g. dedup=off, max_queue_wait_s=10, pin_budget_fraction=0.5, "
        "cache_affinity=off",
    )


def plan_from_args(args: argparse.Namespace) -> PlanConfig:
    """The plan ``--plan`` asks for (``PlanConfig.parse``); ``ValueError`` names the bad item."""
    from plait.runtime.planning import PlanConfig

    return PlanConfig.parse(getattr(args, "plan", []))


def print_plan(plan: PlanConfig, policy: EnginePolicy) -> None:
    """The plan's features, one line each, and the engine policy in effect, on stderr (what a run starts with)."""
    print(f"plan: {plan.name}", file=sys.stderr)
    for line in plan.describe():
        print(f"  {line}", file=sys.stderr)
    print(f"engine policy: {policy.describe()}", file=sys.stderr)


def engine_config_from_args(args: argparse.Namespace) -> EngineConfig:
    from plait.engine.engine_config import EngineConfig

    return EngineConfig(
        model=args.model,
        weights=args.weights,
        tokenizer=args.tokenizer,
        device=args.device,
        dtype=args.dtype,
        kv_slots=args.kv_slots,
        host_kv_slots=getattr(args, "host_kv_slots", 0),
        max_context=args.max_context,
        max_batch_tokens=args.max_batch_tokens,
        chunk_size=args.chunk_size,
        max_running=args.max_running,
        attention_backend=args.attention_backend,
        fused_ops=args.fused_ops,
        packed_weights=getattr(args, "packed_weights", "auto"),
        cuda_graphs=args.cuda_graphs,
        overlap=args.overlap,
        simulate=args.simulate,
        tensor_parallel=getattr(args, "tensor_parallel", 1),
    )


def checked_engine_config(args: argparse.Namespace) -> EngineConfig:
    """``engine_config_from_args``, validated before any model loads: a bad setting exits with status 2, naming it."""
    from plait.engine.errors import EngineError

    config = engine_config_from_args(args)
    try:
        config.validate()
    except EngineError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    return config
