"""``plait bench replay``: replay a real trace open-loop against plait (in-process) or any OpenAI-compatible URL.

Formats: ``mooncake`` (JSONL with hash ids: prompts are built from one fixed block per hash id, so prefix sharing is
reproduced exactly), ``azure`` and ``burstgpt`` (CSV, columns read by name), ``lmcache-agent`` (real agent sessions,
each replayed as a program: its calls in order, the recorded gap between calls as tool time, the real prompt text).
Arrivals follow the trace's timestamps (``--start``/``--duration`` pick a slice, ``--time-scale`` speeds it up);
``--length-scale`` shrinks prompts and outputs for small models. Outputs are forced to the trace's lengths.

In-process, ``--compare baseline`` replays the same slice twice on one engine: plait mode (program-level planning)
and baseline mode (request FCFS, LRU, no pins, no prefetch), each from a flushed cache, and prints the ratios.
Prints a table; writes JSON, a markdown report and PNG plots. Ctrl-C stops the replay and still writes what was
measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from pathlib import Path
from typing import Any

from plait.cli.engine_args import add_engine_arguments, add_plan_argument, engine_config_from_args

# Here so that --help needs no import of torch; a test keeps it equal to records.TRACE_FORMATS.
FORMATS = ("mooncake", "azure", "burstgpt", "lmcache-agent")
DEFAULT_DURATION_S = 120.0


def register(benches: argparse._SubParsersAction) -> None:
    parser = benches.add_parser(
        "replay",
        help="replay a real trace (Mooncake, Azure, BurstGPT, agent sessions): plait vs baseline, report and plots",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    trace = parser.add_argument_group("trace")
    trace.add_argument("--trace", type=Path, required=True, help="trace file (a folder for lmcache-agent)")
    trace.add_argument("--format", required=True, choices=FORMATS, help="the trace's format")
    trace.add_argument("--start", type=float, default=0.0, help="slice start, seconds into the trace")
    trace.add_argument(
        "--duration", type=float, default=DEFAULT_DURATION_S, help="slice length in trace seconds (0: to the end)"
    )
    trace.add_argument("--time-scale", type=float, default=1.0, help="replay speed: 2 = arrivals twice as fast")
    trace.add_argument("--max-requests", type=int, default=None, help="at most this many requests (sessions)")
    trace.add_argument(
        "--length-scale", type=float, default=1.0, help="scale prompt and output lengths (e.g. 0.05 on a CPU)"
    )
    trace.add_argument("--max-input-tokens", type=int, default=None, help="cap prompt lengths (request traces)")
    trace.add_argument("--max-output-tokens", type=int, default=None, help="cap output lengths")
    trace.add_argument("--skip-malformed", action="store_true", help="leave malformed lines out (counted)")
    trace.add_argument("--seed", type=int, default=0, help="seed of the synthesized prompts")
    run = parser.add_argument_group("run")
    run.add_argument("--compare", choices=["baseline", "none"], default="none", help="also replay in baseline mode")
    run.add_argument(
        "--baseline-first",
        action="store_true",
        help="with --compare baseline: replay baseline mode first (checks that the order of the modes does not matter)",
    )
    run.add_argument("--target", default=None, help="an OpenAI-compatible base URL instead of the in-process engine")
    run.add_argument("--target-model", default=None, help="the model name at --target (default: its first)")
    run.add_argument("--vocab-size", type=int, default=32_000, help="--target: token ids are drawn below this")
    run.add_argument(
        "--served",
        action="store_true",
        help="replay through `plait serve` subprocesses this command starts (one per mode, with the engine flags "
        "given here and the mode's --plan), as users run it; with --compare baseline the second runs --plan baseline",
    )
    run.add_argument(
        "--target-programs",
        default="explicit",
        metavar="explicit|implicit[,...]",
        help="--target/--served: send each agent session's program_id (explicit) or none, leaving the server to "
        "recognise each session's calls as one program (implicit); --served replays plait mode once per entry",
    )
    run.add_argument(
        "--replicas",
        type=int,
        default=1,
        metavar="N",
        help="--served: each server runs N engine replicas (plait serve --replicas); baseline routes round-robin",
    )
    run.add_argument(
        "--routing",
        default="program",
        metavar="program|prefix|round-robin[,...]",
        help="--served with --replicas: plait mode once per routing policy (modes plait-<policy>); with round-robin "
        "among them, the others are also reported against it",
    )
    run.add_argument(
        "--replica-backend",
        default="ray",
        metavar="ray|local",
        help="--replicas: Ray actors, or engines in the server's process (machines without Ray)",
    )
    run.add_argument(
        "--unbounded-cache", action="store_true", help="size the KV pool to hold every prompt and output of the slice"
    )
    run.add_argument("--time-limit", type=float, default=3600.0, help="seconds per mode before stopping")
    add_plan_argument(run)
    slo = parser.add_argument_group("SLOs (goodput counts requests meeting every bound given)")
    slo.add_argument("--slo-ttft", type=float, default=None, help="time to first token, seconds")
    slo.add_argument("--slo-tpot", type=float, default=None, help="time per output token, seconds")
    slo.add_argument("--slo-e2e", type=float, default=None, help="request end-to-end, seconds")
    slo.add_argument("--slo-jct", type=float, default=None, help="agent session completion, seconds")
    out = parser.add_argument_group("output")
    out.add_argument("--output", type=Path, default=None, help="JSON path (default under plait-results/)")
    out.add_argument("--report-dir", type=Path, default=None, help="report folder (default: <json stem>_report)")
    out.add_argument("--no-report", action="store_true", help="JSON only (no markdown, no plots)")
    add_engine_arguments(parser)
    parser.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    from plait.bench.replay.records import TraceFormatError
    from plait.runtime.replicas import REPLICA_BACKENDS, ROUTING_POLICIES

    routings = [r for r in args.routing.split(",") if r]
    if args.replicas > 1 and not args.served:
        return _fail("--replicas needs --served (it starts servers with engine replicas)")
    if any(r not in ROUTING_POLICIES for r in routings) or not routings:
        return _fail(f"--routing {args.routing!r}: give {', '.join(ROUTING_POLICIES)} (one or more, comma-separated)")
    if args.replica_backend not in REPLICA_BACKENDS:
        return _fail(f"--replica-backend {args.replica_backend!r}: choose one of {', '.join(REPLICA_BACKENDS)}")
    if len(routings) > 1 and args.replicas < 2:
        return _fail("several --routing policies need --replicas 2 or more")
    if args.target is not None and args.compare == "baseline":
        return _fail(
            "--compare baseline cannot switch a remote server's plan: use --served (this command starts a server per "
            "mode) or run the target twice, once started with --plan baseline"
        )
    if args.target is not None and args.served:
        return _fail("--target replays a server you started, --served starts its own: give one of them")
    programs = args.target_programs.split(",")
    if not programs or any(p not in ("explicit", "implicit") for p in programs) or len(set(programs)) < len(programs):
        return _fail(f"--target-programs: a comma-separated list of explicit, implicit; got {args.target_programs!r}")
    if programs != ["explicit"] and args.target is None and not args.served:
        return _fail("--target-programs applies to replays over HTTP: add --target or --served")
    if len(programs) > 1 and not args.served:
        return _fail("--target-programs with several entries needs --served (one plait-mode server per entry)")
    if args.baseline_first and args.compare != "baseline":
        return _fail("--baseline-first orders the modes of --compare baseline; add --compare baseline or drop it")
    try:
        args.plait_plan = _plait_plan(args.plan)
        trace = _load(args)
    except (TraceFormatError, ValueError, _UsageError) as error:
        return _fail(str(error))
    try:
        return asyncio.run(_run(args, trace))
    except _UsageError as error:
        return _fail(str(error))


class _UsageError(Exception):
    pass


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _load(args: argparse.Namespace) -> Any:
    from plait.bench.replay.trace_loaders import load_trace
    from plait.bench.replay.trace_slice import SliceOptions, slice_trace

    options = SliceOptions(
        start_s=args.start,
        duration_s=args.duration or None,
        time_scale=args.time_scale,
        max_requests=args.max_requests,
        length_scale=args.length_scale,
        max_input_tokens=args.max_input_tokens,
        max_output_tokens=args.max_output_tokens,
    )
    options.validate()
    return slice_trace(load_trace(args.trace, args.format, skip_malformed=args.skip_malformed), options)


async def _run(args: argparse.Namespace, trace: Any) -> int:
    from plait.bench.replay.http_target import HttpTarget, TargetError

    stop = asyncio.Event()
    with _stop_on_ctrl_c(stop):
        if args.target is not None:
            target = HttpTarget(args.target, args.target_model, send_program_ids=args.target_programs == "explicit")
            # With --tokenizer (the served model's), prompts are counted exactly and cut to --max-context.
            counter = _tokenizer_counter(args) if args.tokenizer else target.count_tokens
            inputs = _inputs(args, trace, args.vocab_size, counter, args.max_context or None)
            try:
                runs = await _replay_modes(args, trace, inputs, [target], stop)
            except TargetError as error:
                raise _UsageError(str(error)) from error
            return _finish(args, trace, inputs, runs, engine_info={"target": args.target}, stopped=stop.is_set())
        if args.served:
            return await _run_served(args, trace, stop)
        return await _run_in_process(args, trace, stop)


async def _run_served(args: argparse.Namespace, trace: Any, stop: asyncio.Event) -> int:
    """Each mode on its own fresh ``plait serve`` subprocess (same engine flags): plait mode once per
    ``--target-programs`` entry (``plait``, ``plait-implicit``), then baseline (``--plan baseline``) with
    ``--compare baseline``; ``--baseline-first`` puts baseline first."""
    from plait.bench.replay.http_target import HttpTarget, TargetError
    from plait.bench.serve_process import ServeProcess, engine_flags

    engine = engine_flags(args)
    plan_flags = [flag for value in args.plan for flag in ("--plan", value)]
    routings = args.routing.split(",")

    def scale(routing: str) -> list[str]:
        if args.replicas < 2:
            return []
        return ["--replicas", str(args.replicas), "--replica-backend", args.replica_backend, "--routing", routing]

    modes = [
        (
            ("plait" if kind == "explicit" else "plait-implicit") + (f"-{routing}" if len(routings) > 1 else ""),
            [*plan_flags, *scale(routing)],
            kind == "explicit",
        )
        for kind in args.target_programs.split(",")
        for routing in routings
    ]
    if args.compare == "baseline":
        baseline = ("baseline", ["--plan", "baseline", *scale("round-robin")], True)
        modes = [baseline, *modes] if args.baseline_first else [*modes, baseline]
    counter = _tokenizer_counter(args) if args.tokenizer else HttpTarget.count_tokens
    inputs = _inputs(args, trace, args.vocab_size, counter, args.max_context or None)
    runs: list[Any] = []
    for mode, flags, explicit in modes:
        if stop.is_set():
            break
        server = ServeProcess([*engine, *flags])
        try:
            url = await asyncio.to_thread(server.start)
            print(f"{mode}: plait serve {' '.join([*engine, *flags])} at {url}", file=sys.stderr, flush=True)
            await asyncio.to_thread(server.wait_ready, url)
            target = HttpTarget(url, args.target_model, send_program_ids=explicit)
            target.mode = mode
            runs += await _replay_modes(args, trace, inputs, [target], stop)
        except (RuntimeError, TargetError) as error:
            raise _UsageError(f"{mode}: {error}") from error
        finally:
            await asyncio.to_thread(server.stop)
    info = {
        "served": True,
        "serve_flags": engine,
        "plait_plan_flags": plan_flags,
        "modes": [m[0] for m in modes],
        "mode_flags": {m[0]: m[1] for m in modes},
        "replicas": args.replicas,
    }
    return _finish(args, trace, inputs, runs, engine_info=info, stopped=stop.is_set())


async def _run_in_process(args: argparse.Namespace, trace: Any, stop: asyncio.Event) -> int:
    from plait.bench.engine_counters import warm_up, warm_up_shapes
    from plait.bench.replay.inprocess_target import InProcessTarget
    from plait.engine import Engine
    from plait.runtime.planning import PlanConfig

    config = engine_config_from_args(args)
    if args.unbounded_cache:
        config.kv_slots = _unbounded_slots(trace)
    engine = Engine(config)
    try:
        inputs = _inputs(args, trace, engine.tokenizer.vocab_size, _counter(engine), _context(engine))
        await warm_up(engine)
        await warm_up_shapes(engine, _longest_prompt(trace, inputs), concurrency=32)
        modes = [args.plait_plan] + ([PlanConfig.baseline()] if args.compare == "baseline" else [])
        if args.baseline_first:
            modes.reverse()
        runs = await _replay_modes(args, trace, inputs, [InProcessTarget(engine, mode) for mode in modes], stop)
        info = {
            "model": config.model,
            "weights": config.weights,
            "kv_slots": engine.core.kv_slots,
            "max_context": engine.core.max_context,
            "plait_plan": args.plait_plan.to_dict(),
            "simulated_gpu": config.simulate or None,  # set: the times are a cost model's, not measured
        }
        return _finish(args, trace, inputs, runs, engine_info=info, stopped=stop.is_set())
    finally:
        engine.close()


def _tokenizer_counter(args: argparse.Namespace) -> Any:
    """Exact token counts with the served model's tokenizer (``--tokenizer``)."""
    from plait.engine.model_loader import resolve_model
    from plait.engine.tokenizer_loader import load_tokenizer

    tokenizer = load_tokenizer(resolve_model(args.model, args.weights), args.tokenizer)
    return lambda text: len(tokenizer.encode(text))


def _unbounded_slots(trace: Any) -> int:
    """A KV pool that holds every distinct prompt token and every output of the slice (nothing is ever evicted).

    Request traces: the tokens no earlier prompt shares, plus outputs. Agent sessions (no tokenizer yet): two
    characters a token, an over-estimate for any real tokenizer, of each session's longest prompt plus its outputs.
    """
    from plait.bench.replay.prompt_synthesis import expected_prefix_reuse

    if trace.is_agent:
        chars = sum(
            max(len(c.input_text) for c in s.calls) + sum(len(c.output_text) for c in s.calls)
            for s in trace.sessions
            if s.calls
        )
        return chars // 2 + 4096
    prompts = sum(r.input_tokens for r in trace.requests)
    reuse = expected_prefix_reuse(trace.requests, trace.block_tokens) or 0.0
    outputs = sum(r.output_tokens for r in trace.requests)
    return int(1.05 * (prompts * (1.0 - reuse) + outputs)) + 4096


def _longest_prompt(trace: Any, inputs: Any) -> int:
    if trace.is_agent:
        return max((len(text) // 4 for prompts in inputs.session_prompts for text in prompts), default=0)
    return max((r.input_tokens for r in inputs.requests), default=0)


def _plait_plan(overrides: list[str]) -> Any:
    from plait.runtime.planning import PlanConfig

    try:
        return PlanConfig().with_overrides(overrides)
    except ValueError as error:
        raise _UsageError(f"--plan {error}") from error


def _counter(engine: Any) -> Any:
    return lambda text: len(engine.tokenizer.encode(text, add_special_tokens=False))


def _context(engine: Any) -> int:
    return int(engine.core.max_context)


def _inputs(args: argparse.Namespace, trace: Any, vocab_size: int, count_tokens: Any, max_context: int | None) -> Any:
    from plait.bench.replay.replay_inputs import prepare_inputs

    return prepare_inputs(
        trace,
        vocab_size=vocab_size,
        count_tokens=count_tokens,
        max_context=max_context,
        max_output_tokens=args.max_output_tokens,
        seed=args.seed,
        max_input_tokens=args.max_input_tokens,
    )


async def _replay_modes(
    args: argparse.Namespace, trace: Any, inputs: Any, targets: list[Any], stop: asyncio.Event
) -> list[Any]:
    """Each target in turn (plait mode, then baseline, unless ``--baseline-first``); after an interruption the
    remaining modes are skipped."""
    from rich.progress import Progress

    from plait.bench.replay.replay_run import run_replay

    total = len(trace.sessions) if trace.is_agent else len(trace.requests)
    unit = "sessions" if trace.is_agent else "requests"
    runs = []
    with Progress(transient=True) as progress:
        for target in targets:
            print(f"replaying {total} {unit} in {target.mode} mode on {target.label}", file=sys.stderr, flush=True)
            task = progress.add_task(f"{trace.format} {unit} ({target.mode})", total=total)
            run = await run_replay(
                trace,
                inputs,
                target,
                stop=stop,
                time_limit_s=args.time_limit,
                on_done=lambda t=task: progress.advance(t),
            )
            runs.append(run)
            progress.remove_task(task)
            if run.interrupted:
                break
    return runs


def _finish(
    args: argparse.Namespace, trace: Any, inputs: Any, runs: list[Any], *, engine_info: dict, stopped: bool
) -> int:
    """Print the table; write the JSON and the report. Exit code 130 when Ctrl-C stopped the replay."""
    from plait.bench.replay.prompt_synthesis import expected_prefix_reuse
    from plait.bench.replay.replay_metrics import SLO, ratios, summarize, summary_table_rows
    from plait.bench.report import default_output, print_table, write_json

    slo = SLO(ttft_s=args.slo_ttft, tpot_s=args.slo_tpot, e2e_s=args.slo_e2e, jct_s=args.slo_jct)
    summaries = {run.mode: summarize(run, slo) for run in runs}
    compared = ratios(summaries["plait"], summaries["baseline"]) if {"plait", "baseline"} <= summaries.keys() else {}
    # Each other plait mode (a served replay's plait-implicit) against the same baseline.
    compared_modes = {
        mode: ratios(summary, summaries["baseline"])
        for mode, summary in summaries.items()
        if mode not in ("plait", "baseline") and "baseline" in summaries
    }
    # Routing policies (--routing with --replicas): each against round-robin routing of the same plan.
    routed = {mode: summary for mode, summary in summaries.items() if mode.startswith("plait-")}
    reference = next((mode for mode in routed if mode.endswith("-round-robin")), None)
    compared_routing = {
        mode: ratios(summary, routed[reference]) for mode, summary in routed.items() if reference and mode != reference
    }
    trace_info: dict[str, Any] = {
        "format": trace.format,
        "path": str(args.trace),
        "slice": trace.meta.get("slice", {}),
        "records": len(trace.sessions) if trace.is_agent else len(trace.requests),
        "calls": sum(len(s.calls) for s in trace.sessions) if trace.is_agent else len(trace.requests),
        "block_tokens": trace.block_tokens,
        "skipped_lines": trace.skipped_lines,
    }
    reuse = None if trace.is_agent else expected_prefix_reuse(inputs.requests, trace.block_tokens)
    if reuse is not None:
        trace_info["expected_prefix_reuse"] = reuse
    columns, rows = summary_table_rows(summaries, compared or None)
    title = f"replay {trace.format}: {trace_info['records']} {'sessions' if trace.is_agent else 'requests'}"
    print_table(title, columns, rows)
    for mode, mode_ratios in compared_modes.items():
        print(f"{mode} vs baseline: " + ", ".join(f"{k} {v:.2f}x" for k, v in mode_ratios.items() if "jct" in k))
    for mode, mode_ratios in compared_routing.items():
        shown = ", ".join(f"{k} {v:.2f}x" for k, v in mode_ratios.items() if "jct" in k or k.startswith("ttft"))
        print(f"{mode} vs {reference}: {shown}")
    if reuse is not None:
        measured = ", ".join(f"{m} {s.get('prefix_hit_rate') or 0:.3f}" for m, s in summaries.items())
        print(f"prefix reuse: trace {reuse:.3f} (unbounded cache, in order); measured {measured}")
    for run in runs:
        for note in run.notes:
            print(f"note ({run.mode}): {note}")
    interrupted = any(run.interrupted for run in runs)
    if interrupted:
        print("interrupted: the results below hold what was measured until then", file=sys.stderr)
    payload = {
        "bench": "replay",
        "trace": trace_info,
        "slo": slo.to_dict(),
        "engine": engine_info,
        "runs": [run.to_dict() for run in runs],
        "summary": summaries,
        "ratios": compared,
        "ratios_by_mode": compared_modes,
        "ratios_vs_round_robin": compared_routing,
        "interrupted": interrupted,
    }
    output = args.output or default_output(f"replay_{trace.format}")
    print(f"wrote {write_json(output, payload)}")
    if not args.no_report:
        from plait.bench.replay.replay_report import write_report

        report_dir = args.report_dir or output.with_name(f"{output.stem}_report")
        paths = write_report(payload, report_dir)
        print(f"report: {', '.join(str(p) for p in paths)}")
    return 130 if stopped else 0


@contextlib.contextmanager
def _stop_on_ctrl_c(stop: asyncio.Event) -> Any:
    """The first Ctrl-C sets ``stop`` (the replay ends and writes what it measured); the second aborts."""
    loop = asyncio.get_running_loop()

    def first() -> None:
        print("\nstopping: writing what was measured (Ctrl-C again to abort)", file=sys.stderr)
        stop.set()
        loop.remove_signal_handler(signal.SIGINT)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    try:
        loop.add_signal_handler(signal.SIGINT, first)
        installed = True
    except (NotImplementedError, RuntimeError):  # not the main thread, or a platform without it
        installed = False
    try:
        yield
    finally:
        if installed:
            loop.remove_signal_handler(signal.SIGINT)
