"""``plait bench workflow``: agent-program suites under plait's program-level planning vs request-level serving.

Every mode runs on the same engine in the same process, one after another, each from a flushed prefix cache:
``plait`` (the default ``PlanConfig``, changed by ``--plan FIELD=VALUE``), ``baseline`` (``PlanConfig.baseline()``:
request FCFS, LRU, no pins, no prefetch, no dedup, no prefix holding), with ``--ablation`` each feature alone over the
baseline and with ``--leave-one-out`` plait mode without each of its features. The table
shows job completion time (mean, p95), programs per minute, SLO attainment, prefix hit rate, retractions and the
longest queue wait; the last row gives baseline / plait ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from plait.cli.engine_args import add_engine_arguments, add_plan_argument, engine_config_from_args

TRACE_KV_SAMPLES = 200_000  # KV samples kept for the offline dashboard (14 hours at 0.25 s)
JOURNALED = "plait journaled"  # the mode --journal adds
_COLUMNS = [
    ("mean JCT s", "mean_jct_s"),
    ("p95 JCT s", "p95_jct_s"),
    ("programs/min", "programs_per_min"),
    ("SLO met", "slo_attainment"),
    ("prefix hit", "prefix_hit_rate"),
    ("retractions", "retractions"),
    ("longest wait s", "longest_queue_wait_s"),
    ("done", "completed"),
]
# Where each mode's engine steps went (medians over rounds); ``admission_stops`` follows as a line per mode.
_STEP_COLUMNS = [
    ("steps", "steps"),
    ("ms/step", "ms_per_step"),
    ("decodes", "mean_decode_rows"),
    ("prefills", "mean_prefill_rows"),
    ("waiting", "mean_waiting"),
    ("idle pinned", "mean_pinned_slots"),
    ("prefill tokens", "prefill_tokens"),
]
# Host milliseconds per step in each phase of the engine loop (EngineStats.phase_s).
_PHASES = ("schedule", "prepare", "forward", "commit", "resolve", "readback_wait", "sample", "deliver", "commands")


# The suites' names, here so that ``--help`` needs no import of the suites (and of torch); a test keeps them equal to
# ``plait.bench.workflow_suites.SUITE_NAMES``.
SUITE_CHOICES = ("multi-agent", "react", "text2sql", "map-reduce", "starvation", "bfcl")


def register(benches: argparse._SubParsersAction) -> None:
    parser = benches.add_parser(
        "workflow",
        help="agent-program suites: plait's program-level planning vs request-level baseline",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--suite", required=True, choices=SUITE_CHOICES, help="which workload")
    parser.add_argument("--compare", choices=["baseline", "none"], default="baseline", help="also run baseline mode")
    parser.add_argument("--ablation", action="store_true", help="also run each feature alone over the baseline")
    parser.add_argument(
        "--leave-one-out", action="store_true", help="also run plait mode without each of its features in turn"
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="FEATURE",
        help="also run the baseline with this one feature on (repeatable; e.g. prefix_first)",
    )
    parser.add_argument(
        "--without",
        action="append",
        default=[],
        metavar="FEATURE",
        help="also run plait mode without this one feature (repeatable; e.g. tool_pins)",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="FIELD=VALUE[,FIELD=VALUE]",
        help="also run plait mode with these PlanConfig overrides (repeatable; e.g. pins_hold_admissions=off)",
    )
    parser.add_argument(
        "--journal",
        action="store_true",
        help="also run plait mode with every program journaled as `plait serve` journals workflows (SQLite in a "
        "temporary directory): what durability costs",
    )
    add_plan_argument(parser)
    parser.add_argument(
        "--every-mode",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a PlanConfig field in every mode, the baseline too (repeatable; e.g. splice_outputs=off)",
    )
    parser.add_argument("--programs", type=int, default=None, help="number of programs (default: the suite's)")
    parser.add_argument("--rate", type=float, default=None, help="arrivals per second (0: all at once)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--sweep",
        default=None,
        metavar="FIELD=V1,V2,...",
        help="run plait and the baseline at every value of rate (arrivals per second) or programs, and every seed of "
        "--seeds; prints the ratio curve with its spread, writes JSON and a plot",
    )
    parser.add_argument("--seeds", default="0,1,2", help="--sweep: the seeds drawn at each value (default 0,1,2)")
    parser.add_argument(
        "--profile",
        choices=["auto", "cpu", "gpu"],
        default="auto",
        help="suite sizes (auto: by device; gpu when simulated)",
    )
    parser.add_argument("--data-dir", type=Path, default=None, help="the shared data folder (default ../shared/data)")
    parser.add_argument("--time-limit", type=float, default=900.0, help="seconds per mode before cancelling the rest")
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="run every mode this many times, the order reversed each round; the table shows medians and the JSON "
        "each round's ratios (differences smaller than the rounds' spread are noise)",
    )
    parser.add_argument("--max-queue-wait", type=float, default=None, help="plait's anti-starvation bound, seconds")
    parser.add_argument("--output", type=Path, default=None, help="JSON path (default under plait-results/)")
    parser.add_argument("--trace", type=Path, default=None, help="write plait mode's timeline as Chrome trace JSON")
    add_engine_arguments(parser)
    parser.set_defaults(handler=main)


def _modes(args: argparse.Namespace) -> list[Any]:
    from plait.runtime.planning import PlanConfig
    from plait.runtime.planning.plan_config import FEATURES

    plait_mode = PlanConfig().with_overrides(args.plan)  # ValueError names the bad item
    if args.max_queue_wait is not None:
        plait_mode = plait_mode.with_overrides([f"max_queue_wait_s={args.max_queue_wait}"])
    modes = [plait_mode]
    if args.compare == "baseline" or args.ablation:
        modes.append(PlanConfig.baseline())
    if args.ablation:
        modes += [PlanConfig.only(feature) for feature in FEATURES]
    if args.leave_one_out:
        modes += [plait_mode.without(feature) for feature in FEATURES if plait_mode.uses(feature)]
    modes += [PlanConfig.only(feature) for feature in getattr(args, "only", [])]  # ValueError names a bad one
    modes += [plait_mode.without(feature) for feature in getattr(args, "without", [])]
    for variant in getattr(args, "variant", []):
        overrides = [item.strip() for item in variant.split(",") if item.strip()]
        modes.append(dataclasses.replace(plait_mode.with_overrides(overrides), name=f"plait {','.join(overrides)}"))
    if getattr(args, "journal", False):
        modes.append(dataclasses.replace(plait_mode, name=JOURNALED))
    every = getattr(args, "every_mode", [])
    return [mode.with_overrides(every) for mode in modes] if every else modes


def main(args: argparse.Namespace) -> int:
    from plait.bench.workflow_suites import SuiteDataMissing, SuiteOptions, build_suite

    config = engine_config_from_args(args)
    device = config.resolve_device()
    on_gpu = device.type == "cuda" or config.simulated
    profile = args.profile if args.profile != "auto" else ("gpu" if on_gpu else "cpu")
    options = SuiteOptions(profile, args.programs, args.rate, args.seed, args.data_dir)
    try:
        args.modes = _modes(args)
    except ValueError as error:
        print(f"error: --plan/--only/--without/--variant {error}", file=sys.stderr)
        return 2
    if args.repeats < 1:
        print(f"error: --repeats must be at least 1, got {args.repeats}", file=sys.stderr)
        return 2
    try:
        options.validate()
        suite = build_suite(args.suite, options)
    except SuiteDataMissing as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    config.kv_slots = config.kv_slots or suite.kv_slots
    if args.sweep is not None:
        from plait.bench.workflow_sweep import Sweep, run_sweep

        try:
            sweep = Sweep.parse(args.sweep, args.seeds)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        if args.compare != "baseline" or len(args.modes) != 2:
            print("error: --sweep runs plait and the baseline only: drop --compare none, other modes", file=sys.stderr)
            return 2
        return asyncio.run(run_sweep(args, config, sweep, options, args.suite))
    return asyncio.run(_run(args, config, suite, lambda: build_suite(args.suite, options), profile))


async def _run(args: argparse.Namespace, config: Any, suite: Any, build: Any, profile: str) -> int:
    from rich.progress import Progress

    from plait.bench.engine_counters import warm_up
    from plait.bench.report import default_output, print_table, write_json
    from plait.bench.workflow_run import run_mode
    from plait.engine import Engine
    from plait.server.dashboard import KVHistory

    modes = args.modes
    journal_dir = tempfile.TemporaryDirectory(prefix="plait-bench-journal-")
    engine = Engine(config)
    runs: dict[str, list[Any]] = {mode.name: [] for mode in modes}
    kv_history = KVHistory(max_samples=TRACE_KV_SAMPLES, period_s=0.25) if args.trace is not None else None
    try:
        await warm_up(engine)
        if kv_history is not None:  # the KV chart of the offline dashboard written beside the trace
            kv_history.sample_in_background(engine.stats)
        with Progress(transient=True) as progress:
            for round_index in range(args.repeats):
                # Reversed every other round, so no mode always runs first (or right after the same one).
                for mode in modes if round_index % 2 == 0 else modes[::-1]:
                    task = progress.add_task(f"{suite.name}: {mode.name}", total=len(suite.programs))
                    journal_path = None
                    if mode.name == JOURNALED:
                        journal_path = Path(journal_dir.name) / f"journal-{round_index}.sqlite3"
                    result = await run_mode(
                        engine,
                        build,
                        mode,
                        time_limit_s=args.time_limit,
                        on_program_done=lambda t=task: progress.advance(t),
                        journal_path=journal_path,
                    )
                    runs[mode.name].append(result)
                    progress.remove_task(task)
    finally:
        if kv_history is not None:
            await kv_history.stop()
        engine.close()
        journal_dir.cleanup()
    metrics = {name: _median_metrics([r.metrics() for r in results]) for name, results in runs.items()}
    rows = [[name, *[_cell(m[key]) for _, key in _COLUMNS]] for name, m in metrics.items()]
    ratios = _ratios(metrics)
    if ratios:
        rows.append(["baseline / plait", *[_cell(ratios.get(key)) for _, key in _COLUMNS]])
    repeats = f", median of {args.repeats} rounds" if args.repeats > 1 else ""
    print_table(
        f"workflow suite {suite.name} ({len(suite.programs)} programs, {profile}{repeats})",
        ["mode"] + [c for c, _ in _COLUMNS],
        rows,
    )
    print_table(
        "engine steps per mode",
        ["mode"] + [c for c, _ in _STEP_COLUMNS],
        [[name, *[_cell(m.get(key)) for _, key in _STEP_COLUMNS]] for name, m in metrics.items()],
    )
    print_table(
        "host ms per step, by phase of the engine loop",
        ["mode", *_PHASES],
        [[name, *[_cell(m.get(f"{phase}_ms_per_step")) for phase in _PHASES]] for name, m in metrics.items()],
    )
    for name, m in metrics.items():
        stops = ", ".join(f"{reason} {count}" for reason, count in (m.get("admission_stops") or {}).items())
        print(f"{name}: steps where admission stopped, by reason: {stops or 'none'}")
        if m.get("pins_refused") or m.get("pinned_tokens_evicted"):
            print(
                f"{name}: pins refused beyond the budget {m.get('pins_refused', 0)}, pinned tokens evicted before "
                f"their TTL {m.get('pinned_tokens_evicted', 0)}"
            )
    _print_pin_decisions(runs)
    for name, results in runs.items():
        error = next((r.first_error for r in results if r.first_error), None)
        if error:
            print(f"{name}: programs failed; the first error: {error}", file=sys.stderr)
    checks_failed = _print_checks(suite.name, runs)
    journal_cost = _journal_cost(runs)
    if journal_cost:
        by_round = ", ".join(f"{r:.3f}" for r in journal_cost["mean_jct_by_round"])
        print(
            f"journal cost: programs/min journaled / plait {journal_cost['programs_per_min']:.3f}, mean JCT plait / "
            f"journaled {journal_cost['mean_jct']:.3f} (medians; by round: {by_round})"
        )
    round_ratios = _round_ratios(runs)
    if args.repeats > 1 and round_ratios:
        shown = ("-" if r is None else f"{r:.3f}" for r in round_ratios)
        print("mean JCT baseline / plait by round: " + ", ".join(shown))
    if args.trace is not None:
        path = runs[modes[0].name][0].timeline.write_chrome_trace(args.trace)
        print(f"Chrome trace of the plait run: {path} (open in https://ui.perfetto.dev)")
    payload = {
        "bench": "workflow",
        "suite": suite.name,
        "description": suite.description,
        "profile": profile,
        "parameters": suite.parameters,
        "engine": {
            "model": config.model,
            "weights": config.weights,
            "kv_slots": config.kv_slots,
            "host_kv_slots": config.host_kv_slots,
            "simulated_gpu": config.simulate or None,  # set: every time below is a cost model's, not measured
        },
        "repeats": args.repeats,
        "modes": [
            {
                "mode": name,
                "config": results[0].config,
                "metrics": metrics[name],  # medians over the rounds
                "planner": results[0].planner,
                "wall_s": results[0].wall_s,
                "rounds": [
                    {"metrics": r.metrics(), "planner": r.planner, "wall_s": r.wall_s, "check": r.check}
                    for r in results
                ],
            }
            for name, results in runs.items()
        ],
        "baseline_over_plait": ratios,
        "journal_cost": journal_cost,
        "mean_jct_ratio_by_round": round_ratios,
    }
    output = args.output or default_output(f"workflow_{suite.name}")
    print(f"wrote {write_json(output, payload)}")
    if kv_history is not None:
        _write_dashboard(output, args.trace, runs[modes[0].name][0], kv_history, suite.name)
    return 1 if checks_failed else 0


def _print_checks(suite: str, runs: dict[str, list[Any]]) -> bool:
    """Print each round's check of the suite's programs (suites with a ``check``); True when a program failed it.
    A program that did not finish in time is reported, not failed: the time limit is the run's, not the program's."""
    failed = False
    for name, results in runs.items():
        for index, result in enumerate(results):
            check = result.check
            if check is None:
                continue
            line = f"{name}, round {index + 1}: {suite} check passed {check['passed']} of {check['programs']} programs"
            if check["incomplete"]:
                line += f" ({check['incomplete']} did not finish in the time limit)"
            if check.get("execution_accuracy") is not None:
                line += f"; the vote picked the gold result in {check['execution_accuracy']:.0%}"
            print(line)
            if check["failed"]:
                failed = True
                first = check["failures"][0]
                print(f"{name}: {check['failed']} programs failed the check; the first: {first}", file=sys.stderr)
    return failed


def _write_dashboard(output: Path, trace: Path, run: Any, kv_history: Any, suite: str) -> None:
    """The offline dashboard of the traced run (``<output>.html``, the first round of the first mode: what the Chrome
    trace holds): its programs' timelines and the KV pool over it."""
    from plait.server.dashboard import write_timeline_report

    target = output.with_suffix(".html")
    metrics = run.metrics()
    summary = {"suite": suite, "mode": run.mode, "programs": metrics.get("programs"), "wall s": f"{run.wall_s:.2f}"}
    for key in ("completed", "mean_jct_s", "p95_jct_s", "prefix_hit_rate"):
        if metrics.get(key) is not None:
            summary[key] = f"{metrics[key]:.4g}" if isinstance(metrics[key], float) else metrics[key]
    links = [
        ("Chrome trace", os.path.relpath(trace.resolve(), target.parent.resolve())),
        ("results JSON", output.name),
    ]
    title = f"workflow suite {suite}: {run.mode} mode"
    path = write_timeline_report(target, run.timeline, kv_history.samples(), title=title, summary=summary, links=links)
    print(f"dashboard of the traced run: {path}")


def _print_pin_decisions(runs: dict[str, list[Any]]) -> None:
    """What each mode's planner decided about pins in its first round, and the prefill cost it weighed them with; and
    how many calls carried generated ids (``splice_outputs``)."""
    for name, results in runs.items():
        planner = results[0].planner if results else {}
        if planner.get("spliced_calls"):
            print(
                f"{name}: {planner['spliced_calls']} calls carried {planner['spliced_tokens']} generated tokens as ids"
            )
        taken, declined = planner.get("pins", 0), planner.get("pins_declined", 0)
        if not taken and not declined:
            continue
        rate = planner.get("prefill_s_per_token_marginal")
        cost = f"{rate:.2e} s per prefill token (fitted)" if rate else "no fitted prefill cost yet"
        share = planner.get("step_fixed_share")
        if share is not None:
            cost += f", {share:.2f} of a step fixed"
        horizon = planner.get("tool_wait_horizon_s")
        learned = "not learned yet" if horizon is None else horizon if isinstance(horizon, str) else f"{horizon:.2f} s"
        print(
            f"{name}: pins taken {taken}, declined {declined} by cost/benefit; {cost}; eviction horizon of "
            f"tool-waiting KV {learned} ({planner.get('tool_wait_lost_tokens', 0):.0f} tokens lost per "
            f"{planner.get('tool_wait_exposure_token_s', 0):.0f} token-s waited, decayed)"
        )


def _median_metrics(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Each numeric metric's median over the rounds (the first round's value for anything else)."""
    merged: dict[str, Any] = {}
    for round_metrics in rounds:
        for key, value in round_metrics.items():
            merged.setdefault(key, value)
    for key in merged:
        values = [v for r in rounds if isinstance(v := r.get(key), int | float) and not isinstance(v, bool)]
        if values:  # rounds without a value (nothing completed) are left out of the median
            # Counts stay counts: the lower median of integers is one of them.
            ints = all(isinstance(v, int) for v in values)
            merged[key] = statistics.median_low(values) if ints else statistics.median(values)
    return merged


def _round_ratios(runs: dict[str, list[Any]]) -> list[float | None]:
    """Baseline / plait mean job completion time in each round."""
    pairs = zip(runs.get("plait", []), runs.get("baseline", []), strict=False)
    jct = [(p.metrics().get("mean_jct_s"), b.metrics().get("mean_jct_s")) for p, b in pairs]
    return [base / plait if plait and base is not None else None for plait, base in jct]  # None: a round without


def _journal_cost(runs: dict[str, list[Any]]) -> dict[str, Any]:
    """Journaled over plain plait mode, round by round (the two ran back to back): programs per minute journaled /
    plait and mean JCT plait / journaled (below 1: the journal costs), with their medians."""
    pairs = [
        (p.metrics(), j.metrics())
        for p, j in zip(runs.get("plait", []), runs.get(JOURNALED, []), strict=False)
        if p.metrics().get("mean_jct_s") and j.metrics().get("mean_jct_s")  # rounds where both completed programs
    ]
    if not pairs:
        return {}
    rate = [j["programs_per_min"] / p["programs_per_min"] for p, j in pairs]
    jct = [p["mean_jct_s"] / j["mean_jct_s"] for p, j in pairs]
    return {
        "programs_per_min": statistics.median(rate),
        "mean_jct": statistics.median(jct),
        "programs_per_min_by_round": rate,
        "mean_jct_by_round": jct,
    }


def _ratios(by_mode: dict[str, dict[str, Any]]) -> dict[str, float]:
    if "plait" not in by_mode or "baseline" not in by_mode:
        return {}
    plait, base = by_mode["plait"], by_mode["baseline"]
    ratios = {}
    for key in ("mean_jct_s", "p95_jct_s", "max_jct_s", "longest_queue_wait_s"):
        if plait.get(key) and base.get(key) is not None:
            ratios[key] = base[key] / plait[key]
    for key in ("programs_per_min", "slo_attainment", "prefix_hit_rate"):
        if base.get(key) and plait.get(key) is not None:
            ratios[key] = base[key] / plait[key]
    return ratios


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:,.1f}"
    return "-" if value is None else value
