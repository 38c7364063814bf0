"""``plait bench grammar``: grammar-constrained decoding, validity and cost.

Modes:
- ``jsonschemabench``: every schema of the Glaiveai2K and Github_trivial subsets either compiles or is rejected with a
  clear reason (counted by reason); then ``--samples`` compiled schemas (a seeded draw) are sampled at temperature 1.0
  with the schema as the prompt, and each finished output is validated with the ``jsonschema`` package. Reports the
  share of valid outputs among finished ones, invalid-JSON count, compile time and per-token mask time (p50/p99).
- ``overhead``: ``--batch`` requests decoded with a JSON schema vs the same requests unconstrained, alternating in one
  run; reports time per output token of each and their ratio. The schema (``--schema``, default: a list of records)
  cannot end before ``--gen-len`` tokens, so both sides keep the whole batch running to ``max_tokens``.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from plait.cli.engine_args import add_engine_arguments, engine_config_from_args

if TYPE_CHECKING:
    from plait.engine import EngineCore

DEFAULT_DATA = Path("../shared/data/schemas/jsonschemabench")
SUBSETS = ("Glaiveai2K", "Github_trivial")
RECORD = {
    "type": "object",
    "properties": {
        "id": {"type": "integer"},
        "name": {"type": "string"},
        "score": {"type": "number"},
        "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "maxItems": 3},
        "active": {"type": "boolean"},
    },
    "required": ["id", "name", "score", "tags", "active"],
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "grammar",
        help="constrained decoding: JSONSchemaBench validity, constrained vs free decoding cost",
        description="jsonschemabench: compile/reject every schema, sample outputs and validate them with jsonschema. "
        "overhead: time per output token of JSON-schema-constrained vs unconstrained decoding at one batch size.",
    )
    parser.add_argument("mode", choices=["jsonschemabench", "overhead"], help="which measurement")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="jsonschemabench directory (*.jsonl)")
    parser.add_argument("--subsets", default=",".join(SUBSETS), help="jsonschemabench: comma-separated subsets")
    parser.add_argument("--samples", type=int, default=200, help="jsonschemabench: compiled schemas to sample")
    parser.add_argument("--max-tokens", type=int, default=512, help="jsonschemabench: max_tokens per output")
    parser.add_argument("--max-prompt-chars", type=int, default=600, help="jsonschemabench: schema text in prompt")
    parser.add_argument("--running", type=int, default=64, help="sequences decoded together (max_running)")
    parser.add_argument("--seed", type=int, default=0, help="schema draw and sampling seed")
    parser.add_argument("--batch", type=int, default=64, help="overhead: requests per batch")
    parser.add_argument("--prompt-len", type=int, default=128, help="overhead: prompt tokens per request")
    parser.add_argument("--gen-len", type=int, default=128, help="overhead: output tokens per request")
    parser.add_argument(
        "--repeats", type=int, default=5, help="overhead: timed runs of each side, alternating (best kept)"
    )
    parser.add_argument("--schema", type=Path, default=None, help="overhead: a JSON schema file instead of records")
    parser.add_argument("--output", type=Path, default=None, help="JSON path (default under plait-results/)")
    add_engine_arguments(parser)
    parser.set_defaults(handler=run)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def load_schemas(data: Path, subsets: list[str]) -> list[tuple[str, str, str]]:
    """``(subset, unique_id, schema text)`` of every schema in the subsets."""
    rows = []
    for subset in subsets:
        path = data / f"{subset}.jsonl"
        if not path.is_file():
            raise SystemExit(f"{path}: no such file (see --data and --subsets)")
        for line in path.read_text().splitlines():
            if line.strip():
                item = json.loads(line)
                rows.append((subset, item["unique_id"], item["json_schema"]))
    return rows


def _reason_key(message: str) -> str:
    """A rejection message without its location and specifics, to count reasons."""
    text = message.split(": ", 1)[1] if message.startswith("at ") else message
    text = text.split("; rewrite the schema")[0]
    for marker in (" (enforced:", " (make them", " of the same schema"):
        text = text.split(marker)[0]
    if text.startswith("format "):
        return "format not enforced"
    if text.startswith("required "):
        return "required property not declared in properties"
    if text.startswith("value "):
        return "enum/const value contradicts type"
    if text.startswith("branches "):
        return "oneOf branches may overlap"
    if text.startswith("invalid schema"):
        reason = text.split(": ", 1)[-1]  # "invalid schema at /pointer: <xgrammar's reason>"
        return "xgrammar: " + reason.split(": ")[0][:90]
    return text[:90]


def _compile_all(core: EngineCore, schemas: list[tuple[str, str, str]], progress: Any) -> dict[str, Any]:
    from plait.engine import InvalidRequestError, SamplingParams
    from plait.engine.grammar import build_grammar

    backend = core.grammars.backend
    compiled, rejected, compile_s = [], {}, []
    task = progress.add_task("compiling schemas", total=len(schemas))
    for subset, uid, text in schemas:
        start = time.perf_counter()
        try:
            grammar = build_grammar(SamplingParams(json_schema=text))
            backend.compile_now(grammar)
        except InvalidRequestError as error:
            rejected[f"{subset}/{uid}"] = error.message
        else:
            compile_s.append(time.perf_counter() - start)
            compiled.append((subset, uid, text))
        progress.advance(task)
    reasons: dict[str, int] = {}
    for message in rejected.values():
        reasons[_reason_key(message)] = reasons.get(_reason_key(message), 0) + 1
    return {"compiled": compiled, "rejected": rejected, "reasons": reasons, "compile_s": compile_s}


def _validate(text: str, schema: dict[str, Any]) -> tuple[str, str | None]:
    """``valid`` / ``invalid_json`` / ``invalid`` (with the validator's message)."""
    import jsonschema

    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        return "invalid_json", str(error)
    validator_class = jsonschema.validators.validator_for(schema)
    try:
        error = jsonschema.exceptions.best_match(validator_class(schema).iter_errors(value))
    except Exception as problem:  # an unresolvable $ref, a malformed schema the grammar still accepted
        return "invalid", f"validator failed: {problem!r}"[:300]
    if error is not None:
        return "invalid", error.message[:300]
    checked = validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)
    format_error = jsonschema.exceptions.best_match(checked.iter_errors(value))
    return ("valid", None) if format_error is None else ("valid_but_format", format_error.message[:300])


def jsonschemabench(args: argparse.Namespace) -> dict[str, Any]:
    from rich.progress import Progress

    from plait.engine import EngineCore, GenerateRequest, SamplingParams

    config = engine_config_from_args(args)
    config.max_running = args.running
    config.kv_slots = config.kv_slots or args.running * 2048
    core = EngineCore(config)
    schemas = load_schemas(args.data, [s for s in args.subsets.split(",") if s])
    with Progress() as progress:
        outcome = _compile_all(core, schemas, progress)
        compiled = outcome["compiled"]
        chosen = random.Random(args.seed).sample(compiled, min(args.samples, len(compiled)))
        core.grammars.timings.clear()
        wall = time.perf_counter()
        for i, (_, uid, text) in enumerate(chosen):
            schema_text = json.dumps(json.loads(text))[: args.max_prompt_chars]
            messages = [
                {"role": "system", "content": "You answer with one JSON value and nothing else."},
                {"role": "user", "content": f"Write a JSON value that matches this JSON schema:\n{schema_text}"},
            ]
            sampling = SamplingParams(temperature=1.0, max_tokens=args.max_tokens, seed=args.seed + i, json_schema=text)
            core.add_request(GenerateRequest(messages=messages, sampling=sampling, request_id=uid))
        task = progress.add_task(f"sampling {len(chosen)} outputs", total=len(chosen))
        texts: dict[str, list[str]] = {}
        reasons: dict[str, str] = {}
        tokens = 0
        while core.has_work():
            for delta in core.step():
                texts.setdefault(delta.request_id, []).append(delta.text)
                tokens += len(delta.token_ids)
                if delta.finish_reason is not None:
                    reasons[delta.request_id] = delta.finish_reason
                    progress.advance(task)
        wall = time.perf_counter() - wall
    by_id = {uid: json.loads(text) for _, uid, text in chosen}
    verdicts: dict[str, int] = {"valid": 0, "valid_but_format": 0, "invalid": 0, "invalid_json": 0}
    failures = []
    for uid, reason in reasons.items():
        if reason != "stop":
            continue
        verdict, message = _validate("".join(texts[uid]), by_id[uid])
        verdicts[verdict] += 1
        if verdict in ("invalid", "invalid_json", "valid_but_format"):
            failures.append({"id": uid, "verdict": verdict, "error": message, "output": "".join(texts[uid])[:500]})
    finished = sum(1 for r in reasons.values() if r == "stop")
    valid = verdicts["valid"] + verdicts["valid_but_format"]
    mask = list(core.grammars.timings.mask_s_per_token)
    return {
        "bench": "grammar-jsonschemabench",
        "model": core.model_config.name,
        "subsets": args.subsets,
        "schemas": len(schemas),
        "compiled": len(compiled),
        "rejected": len(outcome["rejected"]),
        "rejection_reasons": dict(sorted(outcome["reasons"].items(), key=lambda kv: -kv[1])),
        "compile_ms_p50": 1e3 * percentile(outcome["compile_s"], 50),
        "compile_ms_p99": 1e3 * percentile(outcome["compile_s"], 99),
        "sampled": len(chosen),
        "max_tokens": args.max_tokens,
        "finished": finished,
        "cut_off_by_length": sum(1 for r in reasons.values() if r == "length"),
        "valid": valid,
        "valid_pct_of_finished": 100.0 * valid / finished if finished else float("nan"),
        "invalid": verdicts["invalid"],
        "invalid_json": verdicts["invalid_json"],
        "valid_but_format_check_fails": verdicts["valid_but_format"],
        "mask_us_per_token_p50": 1e6 * percentile(mask, 50),
        "mask_us_per_token_p99": 1e6 * percentile(mask, 99),
        "masked_tokens": len(mask),
        "generated_tokens": tokens,
        "sampling_wall_s": wall,
        "rejected_schemas": outcome["rejected"],
        "failures": failures,
    }


def _time_batch(core: EngineCore, prompts: list[list[int]], sampling: Any) -> tuple[float, int, list[float]]:
    """``(wall seconds, output tokens, seconds per output token of each pure decode step)``.

    A pure decode step computes no prompt tokens, so its time per token excludes prefill, which both sides share.
    """
    import torch

    from plait.engine import GenerateRequest

    core.flush_prefix_cache()
    start = time.perf_counter()
    for ids in prompts:
        core.add_request(GenerateRequest(prompt_token_ids=ids, sampling=sampling))
    tokens = 0
    decode_step_s_per_token: list[float] = []
    while core.has_work():
        prefilled = core.meter.totals[1]
        step_start = time.perf_counter()
        step_tokens = sum(len(delta.token_ids) for delta in core.step())
        step_s = time.perf_counter() - step_start
        tokens += step_tokens
        if core.meter.totals[1] == prefilled and step_tokens:
            decode_step_s_per_token.append(step_s / step_tokens)
    if core.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, tokens, decode_step_s_per_token


def overhead(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from rich.progress import Progress

    from plait.engine import EngineCore, SamplingParams

    config = engine_config_from_args(args)
    config.max_running = max(config.max_running, args.batch)
    core = EngineCore(config)
    schema = json.loads(args.schema.read_text()) if args.schema else _records_schema(args.gen_len)
    generator = torch.Generator().manual_seed(args.seed)
    vocab = core.tokenizer.vocab_size
    prompts = torch.randint(
        100, min(vocab, core.model_config.vocab_size), (args.batch, args.prompt_len), generator=generator
    ).tolist()
    common = {"max_tokens": args.gen_len, "temperature": 0.0, "ignore_eos": True}
    sides = {"unconstrained": SamplingParams(**common), "json_schema": SamplingParams(**common, json_schema=schema)}
    runs: dict[str, list[tuple[float, int, list[float]]]] = {name: [] for name in sides}
    with Progress() as progress:
        task = progress.add_task("warm-up", total=2 * args.repeats + 2)
        for sampling in sides.values():  # warm-up at full size: kernels and allocations for this batch, the grammar
            _time_batch(core, prompts, sampling)
            progress.advance(task)
        core.grammars.timings.clear()
        for repeat in range(args.repeats):
            for name, sampling in sides.items():
                progress.update(task, description=f"{name} run {repeat + 1}/{args.repeats}")
                runs[name].append(_time_batch(core, prompts, sampling))
                progress.advance(task)
    per_token = {name: min(t / max(n, 1) for t, n, _ in results) for name, results in runs.items()}
    median = {name: percentile([t / max(n, 1) for t, n, _ in results], 50) for name, results in runs.items()}
    # The most robust figure on a shared machine: the median over every pure decode step of every run.
    decode = {name: percentile([x for *_, steps in results for x in steps], 50) for name, results in runs.items()}
    mask = list(core.grammars.timings.mask_s_per_token)
    mask_steps = list(core.grammars.timings.mask_s_per_step)
    return {
        "bench": "grammar-overhead",
        "model": core.model_config.name,
        "tokenizer": args.tokenizer or "model's own",
        "dtype": str(core.dtype),
        "batch": args.batch,
        "prompt_len": args.prompt_len,
        "gen_len": args.gen_len,
        "schema": "custom" if args.schema else "records",
        "runs": {
            name: [{"seconds": t, "output_tokens": n, "decode_steps": len(steps)} for t, n, steps in results]
            for name, results in runs.items()
        },
        "ms_per_output_token_unconstrained": 1e3 * per_token["unconstrained"],
        "ms_per_output_token_json_schema": 1e3 * per_token["json_schema"],
        "ratio": per_token["json_schema"] / per_token["unconstrained"],
        "ratio_of_medians": median["json_schema"] / median["unconstrained"],
        "decode_ms_per_output_token_unconstrained": 1e3 * decode["unconstrained"],
        "decode_ms_per_output_token_json_schema": 1e3 * decode["json_schema"],
        "decode_step_ratio": decode["json_schema"] / decode["unconstrained"],
        "mask_fill_ms_per_step": 1e3 * percentile(mask_steps, 50) if mask_steps else 0.0,
        "mask_us_per_token_p50": 1e6 * percentile(mask, 50),
        "mask_us_per_token_p99": 1e6 * percentile(mask, 99),
    }


def _records_schema(gen_len: int) -> dict[str, Any]:
    """``{"records": [record, ...]}`` with enough required records that no output ends before ``gen_len`` tokens
    (a record takes well over 10 tokens)."""
    return {
        "type": "object",
        "properties": {"records": {"type": "array", "items": RECORD, "minItems": max(1, gen_len // 10)}},
        "required": ["records"],
    }


def run(args: argparse.Namespace) -> int:
    from plait.bench.report import default_output, print_table, write_json

    if args.mode == "jsonschemabench":
        result = jsonschemabench(args)
        rows = [
            ["schemas (compiled / rejected)", f"{result['schemas']} ({result['compiled']} / {result['rejected']})"],
            *[[f"  rejected: {reason}", count] for reason, count in list(result["rejection_reasons"].items())[:12]],
            ["compile ms p50 / p99", f"{result['compile_ms_p50']:.2f} / {result['compile_ms_p99']:.2f}"],
            [
                "sampled / finished / length",
                f"{result['sampled']} / {result['finished']} / {result['cut_off_by_length']}",
            ],
            ["valid % of finished", f"{result['valid_pct_of_finished']:.2f}"],
            ["invalid / invalid JSON", f"{result['invalid']} / {result['invalid_json']}"],
            ["valid but format check fails", result["valid_but_format_check_fails"]],
            [
                "mask us/token p50 / p99",
                f"{result['mask_us_per_token_p50']:.1f} / {result['mask_us_per_token_p99']:.1f}",
            ],
        ]
        print_table(f"grammar: JSONSchemaBench on {result['model']}", ["metric", "value"], rows)
    else:
        result = overhead(args)
        rows = [
            ["unconstrained", f"{result['ms_per_output_token_unconstrained']:.3f}", "1.000"],
            ["json_schema", f"{result['ms_per_output_token_json_schema']:.3f}", f"{result['ratio']:.3f}"],
        ]
        title = f"grammar overhead: {result['model']}, batch {result['batch']}, gen {result['gen_len']}"
        print_table(title, ["decoding", "ms / output token", "ratio"], rows)
        p50, p99 = result["mask_us_per_token_p50"], result["mask_us_per_token_p99"]
        medians = result["ratio_of_medians"]
        print(f"mask fill per token: p50 {p50:.1f} us, p99 {p99:.1f} us; ratio of medians {medians:.3f}")
        print(
            f"pure decode steps, median ms / output token: unconstrained "
            f"{result['decode_ms_per_output_token_unconstrained']:.3f}, json_schema "
            f"{result['decode_ms_per_output_token_json_schema']:.3f}, ratio {result['decode_step_ratio']:.3f}"
        )
    path = write_json(args.output or default_output(f"grammar-{args.mode}"), result)
    print(f"wrote {path}")
    return 0
