"""``plait bench engine``: prefill and decode throughput of the embedded engine, next to HF transformers.

Both engines get the same prompts (equal lengths, so HF needs no padding) in the same process. Each measures
``t1`` (prefill + 1 token) and ``tN`` (prefill + N tokens); prefill tokens/s = B*prompt_len / t1. Decode tokens/s
= B / (wall time of a pure decode step): for plait the steps after every prompt is in (chunked prefill otherwise
mixes early decodes with later prompts), for HF (which prefills the whole batch in one call) (tN - t1) / (N - 1).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from plait.cli.engine_args import add_engine_arguments, engine_config_from_args

if TYPE_CHECKING:
    from plait.engine import EngineCore


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "engine",
        help="prefill/decode throughput of the engine (vs HF transformers)",
        description="Measure the engine's prefill and decode tokens/s at given batch sizes, "
        "next to HF transformers' generate() on the same prompts.",
    )
    parser.add_argument("--batch-sizes", default="1,16", help="comma-separated batch sizes (default 1,16)")
    parser.add_argument("--prompt-len", type=int, default=128, help="prompt tokens per request")
    parser.add_argument("--gen-len", type=int, default=64, help="generated tokens per request")
    parser.add_argument("--repeats", type=int, default=2, help="timed repetitions; the best is kept")
    parser.add_argument("--no-hf", action="store_true", help="skip the HF transformers comparison")
    parser.add_argument(
        "--no-roofline", action="store_true", help="skip measuring the device's bandwidth and matmul rate"
    )
    parser.add_argument(
        "--hf-dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="HF's dtype; auto: float32 for GGUF files (transformers keeps GGUF weights packed and computes "
        "in float32, its fastest mode), otherwise plait's dtype",
    )
    parser.add_argument("--output", type=Path, default=None, help="JSON path (default under plait-results/)")
    add_engine_arguments(parser)
    parser.set_defaults(handler=run)


def _prompts(batch: int, length: int, vocab: int, seed: int = 0) -> list[list[int]]:
    import torch

    generator = torch.Generator().manual_seed(seed)
    # Stay clear of the first ids (specials in most vocabularies).
    return torch.randint(100, vocab, (batch, length), generator=generator).tolist()


def _time_plait(core: EngineCore, prompts: list[list[int]], max_tokens: int, decode: dict | None = None) -> float:
    """Wall time to serve ``prompts``. With ``decode``, also records the wall time and count of the full decode
    steps (all prompts in, every sequence decoding: chunked prefill mixes the first decodes with other sequences'
    prompt chunks, which says nothing about decode speed). None when fewer than two: prompts that take longer to
    prefill than the early sequences take to finish (raise --max-batch-tokens or --gen-len)."""
    import torch

    from plait.engine import GenerateRequest, SamplingParams

    sampling = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    core.flush_prefix_cache()  # every run computes its prompts: this measures the engine, not the cache
    scheduler = core.scheduler
    start = time.perf_counter()
    for ids in prompts:
        core.add_request(GenerateRequest(prompt_token_ids=ids, sampling=sampling))
    batch = len(prompts)
    decode_wall, decode_steps = 0.0, 0
    forward_events = _ForwardEvents(core) if core.device.type == "cuda" else None
    previous_full = False
    while core.has_work():
        # A full decode step: every prompt is in and all ``batch`` sequences decode (with the overlap loop, the
        # step that launches them; its wall time in steady state is the device's step time). The first such step
        # is not timed: with the overlap it waits for the last prefill step.
        full = not scheduler.waiting and len(scheduler.running) == batch
        full = full and all(s.is_decode and not s.will_finish for s in scheduler.running)
        timed, previous_full = full and previous_full, full
        if forward_events is not None:
            forward_events.recording = timed
        t0 = time.perf_counter()
        core.step()
        if timed:
            decode_wall += time.perf_counter() - t0
            decode_steps += 1
    if core.device.type == "cuda":
        torch.cuda.synchronize()
    end = time.perf_counter()
    if decode is not None and decode_steps >= 2:
        decode.update(wall_s=decode_wall, steps=decode_steps)
        if forward_events is not None:
            decode["device_s"] = forward_events.seconds()
    if forward_events is not None:
        forward_events.detach()
    return end - start


class _ForwardEvents:
    """CUDA events around the forward pass of the steps marked ``recording``: the device time of each decode forward
    as served (its real inputs: a forward replayed afterwards reads whatever the freed rows then hold)."""

    def __init__(self, core: EngineCore) -> None:
        import torch

        self._torch = torch
        self.runner = core.runner
        self.recording = False
        self.pairs: list[tuple[Any, Any]] = []
        forward = core.runner.forward

        def timed_forward(batch):
            if not self.recording:
                return forward(batch)
            start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
            start.record()
            logits = forward(batch)
            end.record()
            self.pairs.append((start, end))
            return logits

        core.runner.forward = timed_forward

    def seconds(self) -> float:
        self._torch.cuda.synchronize()
        return sum(start.elapsed_time(end) for start, end in self.pairs) / 1e3

    def detach(self) -> None:
        del self.runner.forward  # the class's method again


def _time_hf(model: Any, prompts: list[list[int]], max_tokens: int) -> float:
    import torch

    input_ids = torch.tensor(prompts, device=model.device)
    start = time.perf_counter()
    with torch.inference_mode():
        model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_tokens,
            min_new_tokens=max_tokens,
            do_sample=False,
            pad_token_id=0,
        )
    if input_ids.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _load_hf(core: EngineCore, dtype_name: str) -> Any:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    is_gguf = core.config.weights != "dummy" and str(core.config.model).endswith((".gguf", "default"))
    auto = torch.float32 if is_gguf else core.dtype
    dtype = auto if dtype_name == "auto" else getattr(torch, dtype_name)

    source_path = core.config.model
    mc = core.model_config
    if core.config.weights == "dummy" or core.config.model in ("llama-3.2-1b", "llama-3.1-8b", "qwen2.5-7b", "tiny"):
        cls = Qwen2Config if mc.architecture == "qwen2" else LlamaConfig
        config = cls(
            hidden_size=mc.hidden_size,
            intermediate_size=mc.intermediate_size,
            num_hidden_layers=mc.num_layers,
            num_attention_heads=mc.num_heads,
            num_key_value_heads=mc.num_kv_heads,
            vocab_size=mc.vocab_size,
            tie_word_embeddings=mc.tie_word_embeddings,
            head_dim=mc.head_dim,
        )
        with core.device:  # random initialisation on the device: minutes faster than on the host for 8B
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    else:
        from plait.engine import default_model_path

        path = default_model_path() if source_path == "default" else Path(source_path)
        if path.is_dir():
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        else:
            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    return model.to(core.device).eval()


def _measure(label: str, timer, prompts: list[list[int]], gen_len: int, repeats: int) -> dict[str, float]:
    """Prefill from the 1-token runs; decode from the pure decode steps of the N-token runs where the timer reports
    them (plait), else from the difference of the two (HF prefills the whole batch at once)."""
    batch, prompt_len = len(prompts), len(prompts[0])
    timer(prompts[:1], 2)  # warm-up
    t1 = min(timer(prompts, 1) for _ in range(repeats))
    decode_runs: list[dict] = []
    tn = float("inf")
    for _ in range(repeats):
        decode_runs.append({})
        tn = min(tn, timer(prompts, gen_len, decode_runs[-1]))
    timed = [d for d in decode_runs if d.get("steps")]
    if not timed and label.startswith("plait"):
        print(f"{label} batch {batch}: no full decode step (raise --max-batch-tokens); decode from tN - t1")
    fastest = min(timed, key=lambda d: d["wall_s"] / d["steps"]) if timed else None
    step = fastest["wall_s"] / fastest["steps"] if fastest else max(tn - t1, 1e-9) / (gen_len - 1)
    device = {}
    if fastest and "device_s" in fastest:
        device["device_decode_step_s"] = fastest["device_s"] / fastest["steps"]
    return {
        "engine": label,
        "batch": batch,
        "prefill_tok_s": batch * prompt_len / t1,
        "decode_tok_s": batch / step,
        "t_prefill_s": t1,
        "t_total_s": tn,
        "decode_step_s": step,
        "decode_measured_from": "full decode steps" if timed else "tN - t1",
        **device,
    }


def _roofline_fractions(result: dict[str, float], core: EngineCore, limits: Any, prompt_len: int, gen_len: int) -> None:
    """Add the fraction of the decode roofline (bytes over read bandwidth) and of the prefill roofline (FLOPs over
    matmul rate) that ``result`` reached. Decode contexts are the mean over the timed steps."""
    from plait.bench.roofline import decode_step_floor_s, prefill_floor_s

    batch = int(result["batch"])
    element = core.kv_pool.k[0].element_size()
    mean_context = prompt_len + gen_len / 2
    # Per device: with tensor parallelism, each GPU reads and computes its rank's part (its shape: model.config).
    shape = core.model.config if core.model is not None else core.model_config
    decode_floor = decode_step_floor_s(shape, element, [int(mean_context)] * batch, limits)
    prefill_floor = prefill_floor_s(shape, [prompt_len] * batch, limits)
    result["decode_floor_step_s"] = decode_floor
    result["decode_roofline_fraction"] = decode_floor / result["decode_step_s"]
    # t_prefill_s also holds one decode step and the scheduling around it: the fraction is a lower bound.
    result["prefill_roofline_fraction"] = prefill_floor / result["t_prefill_s"]


def _host_overhead(result: dict[str, float]) -> None:
    """Add the fraction of the measured decode step that is not the device time of its forward pass (CUDA events
    around each full step's forward, as served): host work the overlap loop did not hide, plus sampling and input
    copies on the device (so the fraction is an upper bound on the host's share)."""
    if "device_decode_step_s" in result:
        result["host_overhead_fraction"] = max(0.0, 1.0 - result["device_decode_step_s"] / result["decode_step_s"])


def run(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from plait.bench.report import default_output, print_table, write_json
    from plait.engine import EngineCore

    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    if not batch_sizes or min(batch_sizes) < 1 or args.gen_len < 2 or args.prompt_len < 1:
        raise SystemExit("--batch-sizes must be positive integers, --gen-len >= 2, --prompt-len >= 1")
    config = engine_config_from_args(args)
    config.max_running = max(config.max_running, max(batch_sizes))
    # What the runs need, not most of the device (which would leave HF's model no room).
    config.kv_slots = config.kv_slots or max(batch_sizes) * (args.prompt_len + args.gen_len + 16) + 1024
    core = EngineCore(config)
    hf_model = None if args.no_hf else _load_hf(core, args.hf_dtype)
    limits = None
    if not args.no_roofline:
        from plait.bench.roofline import measure_limits

        limits = measure_limits(core.device, core.dtype)
    results: list[dict[str, float]] = []
    engines = [(f"plait {str(core.dtype).removeprefix('torch.')}", lambda p, n, d=None: _time_plait(core, p, n, d))]
    if hf_model is not None:
        hf_label = f"hf-transformers {str(hf_model.dtype).removeprefix('torch.')}"
        engines.append((hf_label, lambda p, n, d=None: _time_hf(hf_model, p, n)))
    with Progress() as progress:
        task = progress.add_task("benchmarking", total=len(batch_sizes) * len(engines))
        for batch in batch_sizes:
            prompts = _prompts(batch, args.prompt_len, core.model_config.vocab_size)
            for label, timer in engines:
                progress.update(task, description=f"{label} batch {batch}")
                result = _measure(label, timer, prompts, args.gen_len, args.repeats)
                if limits is not None:
                    _roofline_fractions(result, core, limits, args.prompt_len, args.gen_len)
                if label.startswith("plait"):
                    _host_overhead(result)
                results.append(result)
                progress.advance(task)
    rows = []
    for r in results:
        peer = next((p for p in results if p["engine"].startswith("hf") and p["batch"] == r["batch"]), None)
        is_plait = r["engine"].startswith("plait")
        ratio = f"{r['decode_tok_s'] / peer['decode_tok_s']:.2f}x" if peer and is_plait else ""
        fractions = [
            f"{100 * r[key]:.0f}%" if key in r else ""
            for key in ("prefill_roofline_fraction", "decode_roofline_fraction")
        ]
        overhead = f"{100 * r['host_overhead_fraction']:.1f}%" if "host_overhead_fraction" in r else ""
        rows.append([r["engine"], r["batch"], r["prefill_tok_s"], r["decode_tok_s"], *fractions, overhead, ratio])
    title = f"engine: {core.model_config.name}, prompt {args.prompt_len}, gen {args.gen_len}, {core.device}"
    columns = [
        "engine",
        "batch",
        "prefill tok/s",
        "decode tok/s",
        "prefill % roof",
        "decode % roof",
        "host % step",
        "decode vs HF",
    ]
    print_table(title, columns, rows)
    if limits is not None:
        print(
            f"measured: read {limits.read_bytes_per_s / 1e9:,.0f} GB/s, copy {limits.copy_bytes_per_s / 1e9:,.0f} "
            f"GB/s, matmul {limits.matmul_flops_per_s / 1e12:,.1f} TFLOP/s ({str(core.dtype).removeprefix('torch.')})"
        )
    for r in results:
        r["decode_vs_hf"] = next(
            (
                r["decode_tok_s"] / p["decode_tok_s"]
                for p in results
                if p["engine"].startswith("hf") and p["batch"] == r["batch"]
            ),
            None,
        )
    path = write_json(
        args.output or default_output("engine"),
        {
            "bench": "engine",
            "model": core.model_config.name,
            "dtype": str(core.dtype),
            "prompt_len": args.prompt_len,
            "gen_len": args.gen_len,
            "attention_backend": core.attention_backend,
            "fused_ops": core.model.ops.name if core.model is not None else None,
            "simulated_gpu": core.config.simulate or None,  # set: the times are a cost model's, not measured
            "overlap": core.overlap,
            "cuda_graphs": core.runner.graphs is not None,
            "limits": limits.to_dict() if limits is not None else None,
            "results": results,
        },
    )
    print(f"wrote {path}")
    return 0
