"""Sweeps of a workflow suite over load and seeds (``plait bench workflow --sweep rate=R1,R2,... --seeds 0,1,2``).

At every point (a value of the swept field and a seed) the suite is drawn afresh and plait and the request-level
baseline run back to back on one engine (the order alternates from point to point, so neither always runs first).
Reported per value: the ratio baseline / plait of mean and p95 job completion time, the median over the seeds and
their spread (min, max), and plait's and the baseline's longest first-call waits; a plot of the ratio curve with its
spread is written beside the JSON. A gain is one that holds over the curve, not at its best point.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
from pathlib import Path
from typing import Any

SWEEP_FIELDS = {"rate": "arrival_rate", "programs": "programs"}


@dataclasses.dataclass(frozen=True)
class Sweep:
    """The swept field (``rate`` or ``programs``), its values, and the seeds drawn at each."""

    field: str
    values: list[float]
    seeds: list[int]

    @classmethod
    def parse(cls, sweep: str, seeds: str) -> Sweep:
        """From ``--sweep FIELD=V1,V2`` and ``--seeds S1,S2``; ``ValueError`` says what is wrong."""
        name, _, listed = sweep.partition("=")
        if name not in SWEEP_FIELDS or not listed:
            raise ValueError(f"--sweep {sweep!r}: give FIELD=V1,V2,... with FIELD one of {', '.join(SWEEP_FIELDS)}")
        try:
            values = [float(v) for v in listed.split(",") if v.strip()]
            seed_list = [int(s) for s in seeds.split(",") if s.strip()]
        except ValueError:
            raise ValueError(f"--sweep {sweep!r}, --seeds {seeds!r}: numbers, and whole numbers for seeds") from None
        if not values or not seed_list:
            raise ValueError("--sweep and --seeds need at least one value each")
        if name == "programs" and any(v < 1 or v != int(v) for v in values):
            raise ValueError("--sweep programs=...: whole numbers >= 1")
        if name == "rate" and any(v < 0 for v in values):
            raise ValueError("--sweep rate=...: arrivals per second, >= 0")
        return cls(name, values, seed_list)

    def options(self, base: Any, value: float, seed: int) -> Any:
        """The suite options of one point: ``base`` with the swept field and the seed set."""
        swept = int(value) if self.field == "programs" else value
        return dataclasses.replace(base, **{SWEEP_FIELDS[self.field]: swept, "seed": seed})


async def run_sweep(args: argparse.Namespace, config: Any, sweep: Sweep, base_options: Any, suite_name: str) -> int:
    """Every point of ``sweep``, plait and baseline modes; prints the table, writes the JSON and the plot."""
    from rich.progress import Progress

    from plait.bench.engine_counters import warm_up
    from plait.bench.report import default_output, print_table, write_json
    from plait.bench.workflow_run import run_mode
    from plait.bench.workflow_suites import build_suite
    from plait.engine import Engine

    modes = args.modes[:2]  # plait (with --plan) and the baseline
    engine = Engine(config)
    points: list[dict[str, Any]] = []
    try:
        await warm_up(engine)
        with Progress(transient=True) as progress:
            task = progress.add_task(f"{suite_name} sweep", total=len(sweep.values) * len(sweep.seeds) * 2)
            for index, (value, seed) in enumerate((v, s) for v in sweep.values for s in sweep.seeds):
                options = sweep.options(base_options, value, seed)
                metrics: dict[str, dict[str, Any]] = {}
                for mode in modes if index % 2 == 0 else modes[::-1]:
                    result = await run_mode(
                        engine, lambda o=options: build_suite(suite_name, o), mode, time_limit_s=args.time_limit
                    )
                    metrics[mode.name] = result.metrics()
                    progress.advance(task)
                points.append({"value": value, "seed": seed, **_point(metrics)})
    finally:
        engine.close()
    rows, curve = _curve(sweep, points)
    print_table(
        f"workflow suite {suite_name}: baseline / plait over {sweep.field} (median of {len(sweep.seeds)} seeds)",
        [sweep.field, "mean JCT", "spread", "p95 JCT", "spread", "p99 first token s (plait / baseline)"],
        rows,
    )
    ratios = [p["mean_jct_ratio"] for p in points if p["mean_jct_ratio"]]
    geomean = statistics.geometric_mean(ratios) if ratios else None
    if geomean is not None:
        print(f"geometric mean of mean-JCT ratios over {len(ratios)} points: {geomean:.3f}")
    checks_failed = _print_checks(suite_name, points)
    payload = {
        "bench": "workflow-sweep",
        "suite": suite_name,
        "field": sweep.field,
        "values": sweep.values,
        "seeds": sweep.seeds,
        "engine": {"model": config.model, "weights": config.weights, "simulated_gpu": config.simulate or None},
        "points": points,
        "curve": curve,
        "geomean_mean_jct_ratio": geomean,
    }
    output = args.output or default_output(f"workflow_sweep_{suite_name}")
    print(f"wrote {write_json(output, payload)}")
    print(f"plot: {_plot(output.with_suffix('.png'), sweep, curve, suite_name)}")
    return 1 if checks_failed else 0


def _print_checks(suite: str, points: list[dict[str, Any]]) -> bool:
    """For a suite that checks its programs: the programs that passed over every point, per mode; True when one
    failed its check."""
    failed = False
    for mode in ("plait", "baseline"):
        counted = [p[mode] for p in points if "check_passed" in p[mode]]
        if counted:
            passed, wrong = sum(m["check_passed"] for m in counted), sum(m["check_failed"] for m in counted)
            runs = sum(m["programs"] for m in counted)
            print(f"{mode}: {suite} check passed {passed} of {runs} program runs, failed {wrong}")
            failed = failed or wrong > 0
    return failed


def _point(metrics: dict[str, dict[str, Any]]) -> dict[str, Any]:
    plait, base = metrics.get("plait", {}), metrics.get("baseline", {})

    def ratio(key: str) -> float | None:
        return base[key] / plait[key] if plait.get(key) and base.get(key) is not None else None

    return {
        "mean_jct_ratio": ratio("mean_jct_s"),
        "p95_jct_ratio": ratio("p95_jct_s"),
        "plait": plait,
        "baseline": base,
    }


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def _curve(sweep: Sweep, points: list[dict[str, Any]]) -> tuple[list[list[Any]], list[dict[str, Any]]]:
    rows, curve = [], []
    for value in sweep.values:
        at = [p for p in points if p["value"] == value]
        entry: dict[str, Any] = {"value": value}
        row: list[Any] = [f"{value:g}"]
        for key in ("mean_jct_ratio", "p95_jct_ratio"):
            found = [p[key] for p in at if p[key] is not None]
            entry[key] = statistics.median(found) if found else None
            entry[f"{key}_min"], entry[f"{key}_max"] = (min(found), max(found)) if found else (None, None)
            row += [f"{entry[key]:.3f}" if found else "-", f"{min(found):.2f}-{max(found):.2f}" if found else "-"]
        waits = [
            max((p[mode].get("longest_queue_wait_s") or 0.0) for p in at) for mode in ("plait", "baseline")
        ]  # fmt: skip
        entry["longest_queue_wait_s"] = {"plait": waits[0], "baseline": waits[1]}
        # A late arrival's wait for its first token: the median over seeds of each mode's p99.
        first = [_median([p[mode].get("p99_first_token_s") for p in at]) for mode in ("plait", "baseline")]
        entry["p99_first_token_s"] = {"plait": first[0], "baseline": first[1]}
        row.append(" / ".join("-" if f is None else f"{f:.2f}" for f in first))
        rows.append(row)
        curve.append(entry)
    return rows, curve


def _plot(path: Path, sweep: Sweep, curve: list[dict[str, Any]], suite: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [c for c in curve if c["mean_jct_ratio"] is not None]
    xs = [c["value"] for c in shown]
    figure, axis = plt.subplots(figsize=(6, 3.6))
    for key, label in (("mean_jct_ratio", "mean JCT"), ("p95_jct_ratio", "p95 JCT")):
        ys = [c[key] for c in shown]
        if all(y is not None for y in ys):
            axis.plot(xs, ys, marker="o", label=f"{label} baseline / plait")
            axis.fill_between(xs, [c[f"{key}_min"] for c in shown], [c[f"{key}_max"] for c in shown], alpha=0.2)
    axis.axhline(1.0, color="grey", linewidth=0.8)
    axis.set_xlabel(sweep.field)
    axis.set_ylabel("ratio (> 1: plait faster)")
    axis.set_title(f"{suite}: median and spread over seeds {','.join(map(str, sweep.seeds))}")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
