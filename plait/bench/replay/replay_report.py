"""The report of a replay result: ``report.md`` (trace, SLO, tables, ratios, warnings, notes) and PNG plots (latency
CDFs, throughput and KV usage over time, plait vs baseline bars).

Plots are drawn on ``matplotlib.figure.Figure`` with the Agg canvas directly, so no global pyplot state or backend is
touched. Without matplotlib only the markdown is written, with a line saying how to get the plots.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from plait.bench.replay.records import ModeRun
from plait.bench.replay.replay_metrics import (
    RATIO_ROW_LABEL,
    SLO,
    ratios,
    summarize,
    summary_table_rows,
    throughput_over_time,
)

REPORT_NAME = "report.md"
_MODE_COLORS = {"plait": "C0", "baseline": "C1", "target": "C2"}
_DPI = 110


# ---- the data of a payload ------------------------------------------------------------------------------------------


def runs_of(payload: Mapping[str, Any]) -> list[ModeRun]:
    """The runs of a replay payload, as ``ModeRun`` objects."""
    return [ModeRun.from_dict(run) for run in payload.get("runs", [])]


def summaries_of(payload: Mapping[str, Any], runs: Sequence[ModeRun] | None = None) -> dict[str, dict[str, Any]]:
    """``payload["summary"]`` when present, else every run summarized under ``payload["slo"]``, keyed by mode."""
    stored = payload.get("summary")
    if isinstance(stored, Mapping) and stored:
        return {mode: dict(summary) for mode, summary in stored.items()}
    slo = SLO.from_dict(payload.get("slo"))
    return {run.mode: summarize(run, slo) for run in (runs_of(payload) if runs is None else runs)}


def ratios_of(payload: Mapping[str, Any], summaries: Mapping[str, Mapping[str, Any]]) -> dict[str, float] | None:
    """``payload["ratios"]`` when present, else plait over baseline from ``summaries`` when both modes ran."""
    stored = payload.get("ratios")
    if isinstance(stored, Mapping) and stored:
        return {key: float(value) for key, value in stored.items()}
    if "plait" in summaries and "baseline" in summaries:
        return ratios(summaries["plait"], summaries["baseline"])
    return None


# ---- markdown -------------------------------------------------------------------------------------------------------

# (summary key, label, kind) in the order of the detailed table; kinds: ms, s, pct, num, text
_DETAIL_ROWS: tuple[tuple[str, str, str], ...] = (
    ("requests_total", "requests in the slice", "num"),
    ("requests_sent", "requests sent", "num"),
    ("requests_completed", "requests completed", "num"),
    ("requests_failed", "requests failed", "num"),
    *((f"ttft_{s}", f"TTFT {s} (ms)", "ms") for s in ("mean", "p50", "p90", "p95", "p99")),
    *((f"tpot_{s}", f"TPOT {s} (ms)", "ms") for s in ("mean", "p50", "p90", "p95", "p99")),
    *((f"e2e_{s}", f"e2e {s} (s)", "s") for s in ("mean", "p50", "p90", "p95", "p99")),
    ("sessions", "sessions", "num"),
    ("sessions_completed", "sessions completed", "num"),
    *((f"jct_{s}", f"JCT {s} (s)", "s") for s in ("mean", "p50", "p95", "p99", "max")),
    ("sessions_per_min", "sessions / min", "num"),
    ("wall_s", "wall time (s)", "s"),
    ("request_throughput", "requests / s", "num"),
    ("output_tokens_per_s", "output tokens / s", "num"),
    ("total_tokens_per_s", "total tokens / s", "num"),
    ("goodput_requests", "requests meeting the SLO", "num"),
    ("goodput_rps", "goodput (requests / s)", "num"),
    ("goodput_fraction", "fraction meeting the SLO", "pct"),
    ("session_goodput", "sessions meeting the SLO", "num"),
    ("session_goodput_per_min", "session goodput (sessions / min)", "num"),
    ("session_goodput_fraction", "fraction of sessions meeting the SLO", "pct"),
    ("prefix_hit_rate", "prefix hit rate", "pct"),
    ("prefix_hit_source", "prefix hit source", "text"),
    ("kv_usage_mean", "KV usage mean", "pct"),
    ("kv_usage_max", "KV usage max", "pct"),
    ("interrupted", "interrupted", "text"),
)
_NOT_METRICS = {"mode", "target"}


def _cell(value: Any, kind: str = "num") -> str:
    """One value as table text: ``-`` for none, milliseconds / seconds / percent by ``kind``."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if not isinstance(value, int | float) or not math.isfinite(value):
        return str(value)
    if kind == "ms":
        return f"{value * 1000:,.1f}"
    if kind == "pct":
        return f"{value:.1%}"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.1f}"


def md_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; cells are ``str()``-ed with ``|`` escaped."""

    def line(cells: Sequence[Any]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    align = ["---"] + ["---:"] * (len(columns) - 1)
    return "\n".join([line(columns), line(align), *(line(row) for row in rows)])


def _extra_label(key: str) -> str:
    return f"engine: {key.removeprefix('engine_')}" if key.startswith("engine_") else key


def _detail_table(summaries: Mapping[str, Mapping[str, Any]], gains: Mapping[str, float] | None) -> str:
    """Every metric (rows) of every mode (columns), with plait's gain when ``gains`` is given."""
    known = {key for key, _, _ in _DETAIL_ROWS}
    extra = [k for s in summaries.values() for k in s if k not in known and k not in _NOT_METRICS]
    specs = [*_DETAIL_ROWS, *((k, _extra_label(k), "num") for k in dict.fromkeys(extra))]
    columns = ["metric", *summaries, *(["gain"] if gains else [])]
    rows = []
    for key, label, kind in specs:
        if not any(key in s for s in summaries.values()):
            continue
        row = [label, *(_cell(s.get(key), kind) for s in summaries.values())]
        if gains:
            row.append(f"{gains[key]:.2f}x" if key in gains else "")
        rows.append(row)
    return md_table(columns, rows)


def _trace_lines(trace: Mapping[str, Any]) -> list[str]:
    lines = []
    for key, value in trace.items():
        if isinstance(value, Mapping):
            value = ", ".join(f"{k}={v}" for k, v in value.items()) or "(all)"
        elif key == "expected_prefix_reuse" and isinstance(value, int | float):
            value = f"{value:.1%}"
        lines.append(f"- **{key}**: {value}")
    return lines or ["- (not recorded)"]


def _slo_line(slo: SLO) -> str:
    names = (("TTFT", slo.ttft_s), ("TPOT", slo.tpot_s), ("e2e", slo.e2e_s), ("JCT", slo.jct_s))
    if all(bound is None for _, bound in names):
        return "No bounds: every request that finished ok counts toward goodput."
    return ", ".join(f"{name} <= {bound:g} s" if bound is not None else f"{name}: unbounded" for name, bound in names)


def _prefix_section(expected: Any, summaries: Mapping[str, Mapping[str, Any]]) -> list[str]:
    rows = [["expected (trace)", _cell(expected, "pct"), "hash ids of the trace"]]
    for mode, summary in summaries.items():
        source = summary.get("prefix_hit_source") or "not reported"
        rows.append([f"measured ({mode})", _cell(summary.get("prefix_hit_rate"), "pct"), source])
    return ["## Prefix reuse", "", md_table(["", "reuse", "source"], rows), ""]


def render_markdown(
    payload: Mapping[str, Any],
    runs: Sequence[ModeRun],
    summaries: Mapping[str, Mapping[str, Any]],
    gains: Mapping[str, float] | None,
    images: Sequence[tuple[str, str]],
    plots_note: str | None = None,
) -> str:
    """The text of ``report.md``; ``images`` are ``(caption, file name relative to the report)``."""
    trace = payload.get("trace") or {}
    out = [f"# Trace replay: {trace.get('format', 'unknown format')}", ""]
    out += [f"Device: {payload.get('device', 'unknown')} · Date: {payload.get('date', 'unknown')}", ""]
    for run in runs:
        if run.interrupted:
            out += [
                f"> **Warning:** the {run.mode} run was interrupted before every request finished; "
                "its numbers cover only what finished.",
                "",
            ]
    out += ["## Trace", "", *_trace_lines(trace), ""]
    out += ["## SLO", "", _slo_line(SLO.from_dict(payload.get("slo"))), ""]
    if runs:
        out += ["## Runs", "", *(f"- **{r.mode}**: {r.target} ({r.wall_s:.1f} s)" for r in runs), ""]
    columns, rows = summary_table_rows(summaries, gains)
    out += ["## Summary", "", md_table(columns, rows), ""]
    if gains:
        out += [f"`{RATIO_ROW_LABEL}`: baseline / plait for latencies, plait / baseline for rates.", ""]
    out += ["## Metrics", "", _detail_table(summaries, gains), ""]
    if trace.get("expected_prefix_reuse") is not None:
        out += _prefix_section(trace["expected_prefix_reuse"], summaries)
    notes = [f"- **{run.mode}**: {note}" for run in runs for note in run.notes]
    if notes:
        out += ["## Notes", "", *notes, ""]
    if images or plots_note:
        out += ["## Plots", ""]
        out += [plots_note, ""] if plots_note else []
        for caption, name in images:
            out += [f"![{caption}]({name})", ""]
    return "\n".join(out).rstrip() + "\n"


# ---- plots ----------------------------------------------------------------------------------------------------------


def _plotting_available() -> bool:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
        from matplotlib.figure import Figure  # noqa: F401
    except ImportError:
        return False
    return True


def _figure(panels: int, panel_width: float = 5.0) -> tuple[Any, list[Any]]:
    """A figure on its own Agg canvas with ``panels`` axes side by side."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(panel_width * panels, 4.0), layout="constrained")
    FigureCanvasAgg(figure)
    return figure, list(figure.subplots(1, panels, squeeze=False)[0])


def _color(mode: str, index: int) -> str:
    return _MODE_COLORS.get(mode, f"C{3 + index}")


def _no_data(ax: Any) -> None:
    ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="gray")


def _plot_cdfs(runs: Sequence[ModeRun], path: Path) -> Path:
    panels: list[tuple[str, str, list[list[float]]]] = [
        ("TTFT", "requests", [[r.ttft_s for r in run.requests if r.ok and r.ttft_s is not None] for run in runs]),
        ("end-to-end latency", "requests", [[r.e2e_s for r in run.requests if r.e2e_s is not None] for run in runs]),
    ]
    if any(run.sessions for run in runs):
        panels.append(("JCT", "sessions", [[s.jct_s for s in run.sessions if s.jct_s is not None] for run in runs]))
    figure, axes = _figure(len(panels))
    for ax, (title, unit, per_run) in zip(axes, panels, strict=True):
        for index, (run, values) in enumerate(zip(runs, per_run, strict=True)):
            if values:
                ordered = sorted(values)
                ordered.insert(0, ordered[0])  # start the curve at 0
                fractions = [i / (len(ordered) - 1) for i in range(len(ordered))]
                ax.step(ordered, fractions, where="post", label=run.mode, color=_color(run.mode, index))
        if not any(per_run):
            _no_data(ax)
        else:
            ax.legend()
        ax.set(title=f"{title} CDF", xlabel="seconds", ylabel=f"fraction of {unit}", ylim=(0, 1.02))
        ax.grid(alpha=0.3)
    figure.savefig(path, dpi=_DPI)
    return path


def _auto_bin_s(runs: Sequence[ModeRun]) -> float:
    """About 60 bins over the longest run, rounded to a 1-2-5 step."""
    ends = [r.finished_s for run in runs for r in run.requests if r.finished_s is not None]
    span = max([*ends, *(run.wall_s for run in runs), 1e-3])
    raw = span / 60
    step = 10 ** math.floor(math.log10(raw))
    return next(m * step for m in (1, 2, 5, 10) if m * step >= raw)


def _plot_throughput(runs: Sequence[ModeRun], path: Path) -> Path:
    bin_s = _auto_bin_s(runs)
    figure, (ax,) = _figure(1, panel_width=9.0)
    drawn = False
    for index, run in enumerate(runs):
        bins = throughput_over_time(run, bin_s)
        if bins:
            ax.plot(
                [t + bin_s / 2 for t, _ in bins],
                [rate for _, rate in bins],
                label=run.mode,
                color=_color(run.mode, index),
                marker=".",
            )
            drawn = True
    if drawn:
        ax.legend()
    else:
        _no_data(ax)
    ax.set(
        title=f"output tokens/s over time ({bin_s:g} s bins)",
        xlabel="seconds from run start",
        ylabel="output tokens / s",
    )
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    figure.savefig(path, dpi=_DPI)
    return path


def _plot_kv(runs: Sequence[ModeRun], path: Path) -> Path:
    figure, (ax,) = _figure(1, panel_width=9.0)
    for index, run in enumerate(runs):
        if run.kv_usage:
            ax.plot(
                [t for t, _ in run.kv_usage],
                [u * 100 for _, u in run.kv_usage],
                label=run.mode,
                color=_color(run.mode, index),
            )
    ax.legend()
    ax.set(title="KV cache usage", xlabel="seconds from run start", ylabel="% of the KV pool", ylim=(0, 102))
    ax.grid(alpha=0.3)
    figure.savefig(path, dpi=_DPI)
    return path


def _plot_compare(summaries: Mapping[str, Mapping[str, Any]], path: Path) -> Path | None:
    modes = ("plait", "baseline")
    families = [
        (name, prefix)
        for name, prefix in (("TTFT", "ttft"), ("e2e", "e2e"), ("JCT", "jct"))
        if any(isinstance(summaries[m].get(f"{prefix}_{s}"), int | float) for m in modes for s in ("mean", "p95"))
    ]
    if not families:
        return None
    figure, axes = _figure(len(families))
    width = 0.38
    for ax, (name, prefix) in zip(axes, families, strict=True):
        for index, mode in enumerate(modes):
            values = [summaries[mode].get(f"{prefix}_{s}") for s in ("mean", "p95")]
            heights = [v if isinstance(v, int | float) else 0.0 for v in values]
            bars = ax.bar(
                [x + (index - 0.5) * width for x in (0, 1)], heights, width, label=mode, color=_color(mode, index)
            )
            ax.bar_label(bars, labels=[_cell(v, "s") for v in values], fontsize=8)
        ax.set_xticks([0, 1], ["mean", "p95"])
        ax.set(title=f"{name} (lower is better)", ylabel="seconds")
        ax.legend()
        ax.grid(alpha=0.3, axis="y")
    figure.savefig(path, dpi=_DPI)
    return path


def write_plots(
    runs: Sequence[ModeRun], summaries: Mapping[str, Mapping[str, Any]], out_dir: Path
) -> list[tuple[str, Path]]:
    """Draw every plot that has data into ``out_dir``; returns ``(caption, path)`` per file written."""
    written = [
        ("Latency CDFs", _plot_cdfs(runs, out_dir / "latency_cdf.png")),
        ("Output tokens per second over time", _plot_throughput(runs, out_dir / "throughput.png")),
    ]
    if any(run.kv_usage for run in runs):
        written.append(("KV cache usage over time", _plot_kv(runs, out_dir / "kv_usage.png")))
    if "plait" in summaries and "baseline" in summaries:
        compare = _plot_compare(summaries, out_dir / "compare.png")
        if compare is not None:
            written.append(("plait vs baseline", compare))
    return written


# ---- the report -----------------------------------------------------------------------------------------------------


def write_report(payload: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write ``report.md`` and the PNG plots of a replay payload into ``out_dir`` (created if needed).

    Uses ``payload["summary"]``/``payload["ratios"]`` when present, else computes them from ``payload["runs"]``
    under ``payload["slo"]``. Returns the report's path first, then the plots' paths; just the report when
    matplotlib is not installed. The offline dashboard (``dashboard.html``, linked from the report) is written too.
    """
    from plait.bench.replay.replay_dashboard import DASHBOARD_NAME, write_replay_dashboard

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = runs_of(payload)
    summaries = summaries_of(payload, runs)
    gains = ratios_of(payload, summaries)
    plots: list[tuple[str, Path]] = []
    note = None
    if _plotting_available():
        plots = write_plots(runs, summaries, out_dir)
    else:
        note = "Plots need matplotlib: `pip install matplotlib`, then run `plait bench replay-report` again."
    images = [(caption, path.name) for caption, path in plots]
    dashboard = write_replay_dashboard(payload, runs, out_dir / DASHBOARD_NAME)
    report = out_dir / REPORT_NAME
    link = f"\nEvery program's timeline and the KV pool over time: [{dashboard.name}]({dashboard.name})\n"
    report.write_text(render_markdown(payload, runs, summaries, gains, images, note) + link, encoding="utf-8")
    return [report, *(path for _, path in plots)]
