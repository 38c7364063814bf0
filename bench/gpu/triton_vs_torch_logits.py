"""Issue 5, acceptance 4: the triton path (kernels + CUDA graphs + overlap) and the torch reference path give the same
logits for the same model and random weights, over a prefill and 16 decode steps, with and without a cached prefix.

Both engines are fed the same tokens (sampling is replaced by a fixed token sequence), every step's logits are
recorded, and the relative error ||triton - torch|| / ||torch|| per step is reported; the worst must be <= 1e-2.
Usage: python bench/gpu/triton_vs_torch_logits.py [--model llama-3.2-1b] ; writes $OUT/triton_vs_torch_logits.json
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

import plait.engine.engine_core as engine_core
import plait.engine.kernels.attention_block as attention_block
import plait.engine.model_loader as model_loader
from plait.engine import EngineConfig, EngineCore, GenerateRequest, SamplingParams
from plait.engine.model import LlamaForCausalLM

STEPS = 16


def _model_dtype_residual(config, max_position, device, dtype, ops):
    """The model with its residual stream in the model's own dtype (the variant before float32 streams)."""
    return LlamaForCausalLM(config, max_position, device, dtype, ops, residual_dtype=dtype)


LAYER_STREAMS: list[torch.Tensor] | None = None  # when a list, each layer's output stream is appended to it


def _recording_layer_forward(forward):
    def wrapper(self, hidden, residual, batch):
        out, stream = forward(self, hidden, residual, batch)
        if LAYER_STREAMS is not None:
            LAYER_STREAMS.append((self.self_attn.layer_id, (out.float() + stream.float()).clone()))
        return out, stream

    return wrapper


LAYER0: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # projection -> (input, output) in the first forward


def _record_projection(name: str):
    def hook(module, inputs, output):
        if name not in LAYER0:
            LAYER0[name] = (inputs[0].float().clone(), output.float().clone())

    return hook


def seeded_tokens(prompt_len: int) -> tuple[list[int], list[int]]:
    """The prompt and the forced decode tokens every comparison feeds both paths (seed 0)."""
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(100, 20000, (prompt_len,), generator=generator).tolist()
    forced = torch.randint(100, 20000, (STEPS + 2,), generator=generator).tolist()
    return prompt, forced


def nudge_one_ulp(weights: torch.Tensor, index: int = 0) -> None:
    """Grow one element of the vector ``weights`` by one bfloat16 ulp in place (in float32 too, the same step)."""
    value = weights[index : index + 1]
    _, exponent = torch.frexp(value.float())  # value = m * 2**exponent with 0.5 <= |m| < 1; bf16 keeps 8 bits of m
    value.add_(torch.sign(value) * torch.ldexp(torch.ones_like(value, dtype=torch.float32), exponent - 8))


def run(
    backend: str,
    model: str,
    prompt: list[int],
    forced: list[int],
    dtype: str = "bfloat16",
    perturb: bool = False,
    **overrides,
) -> list[list[torch.Tensor]]:
    """Per run (without, then with the prompt cached), every forward's logits; ``perturb`` moves one of the first
    layer's input-norm weights by one bf16 ulp (the noise-floor control: the same model up to one ulp of one weight)."""
    config = EngineConfig(
        model=model,
        weights="dummy",
        attention_backend=backend,
        kv_slots=16384,
        max_running=8,
        dtype=dtype,
        **overrides,
    )
    if backend == "torch":
        config.overlap = "off"
    core = EngineCore(config)
    if perturb:
        with torch.no_grad():
            nudge_one_ulp(core.model.layers[0].input_layernorm.weight)
    if LAYER_STREAMS is not None:
        LAYER_STREAMS.clear()  # the CUDA graphs' capture ran the model on dummy batches
        LAYER0.clear()
        for name, module in core.model.layers[0].named_modules():
            if hasattr(module, "weight") and module.weight.dim() == 2:  # the four projections of the first layer
                module.register_forward_hook(_record_projection(name))
    recorded: list[torch.Tensor] = []
    forward = core.runner.forward

    def recording_forward(batch):
        logits = forward(batch)
        if logits.shape[0]:  # a prefill chunk that samples nothing returns no rows
            recorded.append(logits.float().clone())
        return logits

    core.runner.forward = recording_forward
    position = {"i": 0}

    def forced_sample(logits, rows):
        token = forced[position["i"] % len(forced)]
        position["i"] += 1
        return torch.full((len(rows),), token, dtype=torch.int64, device=logits.device)

    engine_core.sample_on_device = forced_sample
    runs = []
    for _ in range(2):  # the second run hits the prefix cache for the prompt
        recorded.clear()
        position["i"] = 0
        sampling = SamplingParams(max_tokens=STEPS + 1, temperature=0.0, ignore_eos=True)
        core.add_request(GenerateRequest(prompt_token_ids=prompt, sampling=sampling))
        while core.has_work():
            core.step()
        runs.append(list(recorded))
    graph_steps = core.runner.graph_steps
    del core
    torch.cuda.empty_cache()
    print(f"{backend}: {len(runs[0])} forwards per run, graph replays {graph_steps}")
    return runs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="llama-3.2-1b")
    parser.add_argument("--prompt-len", type=int, default=700)
    parser.add_argument("--pv", choices=("float32", "bfloat16"), default="bfloat16", help="P @ V in the kernels")
    parser.add_argument("--residual", choices=("float32", "model"), default="float32", help="residual stream dtype")
    parser.add_argument(
        "--per-layer",
        action="store_true",
        help="also compare each layer's output stream in the first prefill, and "
        "variants that mix the two paths (which component moves the logits)",
    )
    parser.add_argument(
        "--noise-floor",
        action="store_true",
        help="only the control: the torch path against itself with one weight (of the first layer's input norm) moved "
        "by one bf16 ulp: how far two bf16 runs of this model part when they differ by one rounding; runs on CPU too",
    )
    args = parser.parse_args()
    if args.noise_floor:
        noise_floor(args.model, args.prompt_len)
        return
    attention_block.PV_IN_FLOAT32 = args.pv == "float32"
    if args.residual == "model":
        model_loader.LlamaForCausalLM = _model_dtype_residual
    print(f"variant: P @ V in {args.pv}, residual stream in {args.residual}")
    prompt, forced = seeded_tokens(args.prompt_len)
    reference = run("torch", args.model, prompt, forced)
    triton = run("triton", args.model, prompt, forced)
    exact = run("torch", args.model, prompt, forced, dtype="float32")  # how much bf16 itself moves the logits
    triton32 = run("triton", args.model, prompt, forced, dtype="float32")  # the kernels without bf16 rounding
    report = {}
    for i, name in enumerate(("no cached prefix", "cached prefix")):

        def rel(a: list[torch.Tensor], b: list[torch.Tensor]) -> list[float]:
            return [float((x - y).norm() / y.norm()) for x, y in zip(a, b, strict=True)]

        errors = rel(triton[i], reference[i])
        report[name] = {
            "steps": len(errors),
            "max_rel_err": max(errors),
            "rel_err_per_step": errors,
            "triton_bf16_vs_torch_fp32_max": max(rel(triton[i], exact[i])),
            "torch_bf16_vs_torch_fp32_max": max(rel(reference[i], exact[i])),
            "triton_fp32_vs_torch_fp32_max": max(rel(triton32[i], exact[i])),
        }
        r = report[name]
        print(
            f"{name:18s} steps {len(errors):3d}  triton vs torch (bf16) {max(errors):.2e}; vs fp32: triton "
            f"{r['triton_bf16_vs_torch_fp32_max']:.2e}, torch {r['torch_bf16_vs_torch_fp32_max']:.2e}; "
            f"triton vs torch (fp32) {r['triton_fp32_vs_torch_fp32_max']:.2e}"
        )
    if args.per_layer:
        report["per_layer"] = per_layer(args.model, prompt, forced, reference)
    worst = max(r["max_rel_err"] for k, r in report.items() if k != "per_layer")
    print(f"worst relative error {worst:.2e} ({'PASS' if worst <= 1e-2 else 'FAIL'} at 1e-2)")
    out = Path(os.environ.get("OUT", "out"))
    out.mkdir(parents=True, exist_ok=True)
    name = f"triton_vs_torch_logits_{args.model}_pv-{args.pv}_residual-{args.residual}.json"
    variant = {"pv": args.pv, "residual": args.residual}
    (out / name).write_text(json.dumps({"model": args.model, "variant": variant, **report}, indent=1))


def noise_floor(model: str, prompt_len: int) -> None:
    """The torch path against itself with one weight moved by one bf16 ulp, in bf16 and in float32."""
    prompt, forced = seeded_tokens(prompt_len)
    reference = run("torch", model, prompt, forced)
    nudged = run("torch", model, prompt, forced, perturb=True)
    nudged32 = run("torch", model, prompt, forced, dtype="float32", perturb=True)
    exact = run("torch", model, prompt, forced, dtype="float32")
    report: dict = {"model": model, "device": "cuda" if torch.cuda.is_available() else "cpu", "prompt_len": prompt_len}
    for i, name in enumerate(("no cached prefix", "cached prefix")):
        bf16 = [float((x - y).norm() / y.norm()) for x, y in zip(nudged[i], reference[i], strict=True)]
        fp32 = [float((x - y).norm() / y.norm()) for x, y in zip(nudged32[i], exact[i], strict=True)]
        report[name] = {"bf16_rel_err_per_step": bf16, "fp32_rel_err_per_step": fp32}
        print(
            f"{name:18s} one weight moved one ulp: bf16 torch vs itself max {max(bf16):.2e} "
            f"(mean {sum(bf16) / len(bf16):.2e}); float32 torch vs itself max {max(fp32):.2e}"
        )
    out = Path(os.environ.get("OUT", "out"))
    out.mkdir(parents=True, exist_ok=True)
    (out / f"logits_noise_floor_{model}_{report['device']}.json").write_text(json.dumps(report, indent=1))


def per_layer(model: str, prompt: list[int], forced: list[int], reference) -> dict:
    """Where the two paths part: each layer's output stream in the first prefill, and the logits of mixed paths."""
    global LAYER_STREAMS
    from plait.engine.model import DecoderLayer

    DecoderLayer.forward = _recording_layer_forward(DecoderLayer.forward)
    streams = {}
    for name in ("torch", "triton"):
        LAYER_STREAMS = []
        run(name, model, prompt[:256], forced)  # a short prompt: one chunk; the first forward is the prefill
        # The first prefill's layers (graph replays run no Python, so decode steps may be missing).
        layers = next((i for i, (layer, _) in enumerate(LAYER_STREAMS) if i and layer == 0), len(LAYER_STREAMS))
        streams[name] = [stream for _, stream in LAYER_STREAMS[:layers]]
        streams[name + " layer 0"] = dict(LAYER0)
        LAYER_STREAMS = None
    errors = [float((a - b).norm() / b.norm()) for a, b in zip(streams["triton"], streams["torch"], strict=True)]
    print("per-layer stream, triton vs torch (prefill of 256):", " ".join(f"{e:.1e}" for e in errors))
    first = {}
    for projection, (x, y) in streams["torch layer 0"].items():
        tx, ty = streams["triton layer 0"][projection]
        differ = float((tx != x).float().mean())
        first[projection] = {"input_rel_err": float((tx - x).norm() / x.norm()), "input_elements_differing": differ}
        print(
            f"  layer 0 {projection:22s} input: rel err {first[projection]['input_rel_err']:.1e}, {differ:.1%} of "
            f"elements differ; output rel err {float((ty - y).norm() / y.norm()):.1e}"
        )
    mixed = {
        "triton attention, torch elementwise ops": dict(backend="triton", fused_ops="off"),
        "torch attention, triton elementwise ops": dict(backend="torch", fused_ops="on"),
        "triton path, no CUDA graphs, no overlap": dict(backend="triton", cuda_graphs="off", overlap="off"),
    }
    result = {"prefill_stream_rel_err_per_layer": errors, "layer0_projection_inputs": first}
    for label, options in mixed.items():
        runs = run(options.pop("backend"), model, prompt, forced, **options)
        worst = max(
            float((x - y).norm() / y.norm()) for i in range(2) for x, y in zip(runs[i], reference[i], strict=True)
        )
        print(f"{label:45s} vs the torch path: {worst:.2e}")
        result[label] = worst
    return result


if __name__ == "__main__":
    main()
