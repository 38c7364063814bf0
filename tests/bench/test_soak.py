"""``plait bench soak``: the trend rules (RSS slope and its verdict, the journal's bound) on made-up samples, and a
short soak of a real ``plait serve`` on the default model: no 5xx, KV back to 0, every kind of operation run."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from plait.bench.soak_load import SCHEDULE, Kind
from plait.bench.soak_trend import (
    MIB,
    MIN_WINDOW_S,
    RSS_NOISE_MIB,
    Verdict,
    journal_trend,
    linear_fit,
    rss_trend,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_linear_fit_recovers_a_line_and_its_noise() -> None:
    times = [float(t) for t in range(10)]
    fit = linear_fit(times, [3.0 + 2.0 * t for t in times])
    assert fit is not None
    assert math.isclose(fit.slope, 2.0) and math.isclose(fit.intercept, 3.0)
    assert fit.slope_stderr == pytest.approx(0.0, abs=1e-12) and fit.window_s == 9.0
    noisy = linear_fit(times, [(-1.0) ** t for t in times])  # no trend, alternating noise
    assert noisy is not None and abs(noisy.slope) < 0.1 and noisy.slope_stderr > 0
    assert linear_fit([1.0], [1.0]) is None and linear_fit([2.0, 2.0], [1.0, 5.0]) is None
    with pytest.raises(ValueError):
        linear_fit([1.0, 2.0], [1.0])


def _rss(slope_mib_per_h: float, seconds: float = 600.0, step_s: float = 5.0) -> tuple[list[float], list[float]]:
    times = [i * step_s for i in range(int(seconds / step_s) + 1)]
    return times, [1000 * MIB + slope_mib_per_h * MIB * t / 3600 for t in times]


def test_rss_slope_is_fitted_after_the_warmup_in_mib_per_hour() -> None:
    times, values = _rss(20.0)
    # A steep warm-up (+200 MiB in the first minute) is excluded from the fit.
    values = [v + (200 * MIB * (1 - t / 60) if t < 60 else 0) for t, v in zip(times, values, strict=True)]
    trend = rss_trend(times, values, warmup_s=60.0, max_slope_mib_per_h=32.0)
    assert trend.slope_mib_per_h == pytest.approx(20.0)
    assert trend.verdict is Verdict.FLAT and trend.samples == len([t for t in times if t >= 60])
    assert trend.window_s == pytest.approx(540.0)


def test_rss_verdicts() -> None:
    assert rss_trend(*_rss(31.0), warmup_s=0.0, max_slope_mib_per_h=32.0).verdict is Verdict.FLAT
    assert rss_trend(*_rss(-50.0), warmup_s=0.0, max_slope_mib_per_h=32.0).verdict is Verdict.FLAT
    growing = rss_trend(*_rss(80.0), warmup_s=0.0, max_slope_mib_per_h=32.0)  # +13 MiB over 10 minutes
    assert growing.verdict is Verdict.GROWING and "80.0 MiB/h > 32" in growing.reason
    # Above the threshold, but the growth over the window (+6.7 MiB) is within one allocator step: run longer.
    noise = rss_trend(*_rss(40.0), warmup_s=0.0, max_slope_mib_per_h=32.0)
    assert noise.verdict is Verdict.INCONCLUSIVE and f"{RSS_NOISE_MIB:g} MiB noise floor" in noise.reason
    step = [1000 * MIB + (3 * MIB if t >= 35 else 0) for t in range(30, 121, 3)]  # one 3 MiB step in 90 s
    stepped = rss_trend([float(t) for t in range(30, 121, 3)], step, warmup_s=30.0, max_slope_mib_per_h=32.0)
    assert stepped.slope_mib_per_h > 32.0 and stepped.verdict is Verdict.INCONCLUSIVE
    # Too short a window or too few samples: no verdict, whatever the slope.
    short = rss_trend(*_rss(10_000.0, seconds=MIN_WINDOW_S - 10, step_s=1.0), warmup_s=0.0)
    assert short.verdict is Verdict.INCONCLUSIVE and short.slope_mib_per_h == pytest.approx(10_000.0)
    sparse = rss_trend(*_rss(10_000.0, seconds=600.0, step_s=200.0), warmup_s=0.0)
    assert sparse.verdict is Verdict.INCONCLUSIVE and sparse.samples == 4
    assert rss_trend([], [], warmup_s=0.0).verdict is Verdict.NOT_MEASURED


def test_journal_is_bounded_when_it_stops_growing_after_the_horizon() -> None:
    times = [float(t) for t in range(0, 601, 10)]
    plateau = [int(min(t, 120.0) * 0.1 * MIB) for t in times]  # grows for 2 minutes, then retention deletes
    assert journal_trend(times, plateau, horizon_s=120.0).verdict is Verdict.FLAT
    linear = [int(t * 0.1 * MIB) for t in times]  # never deletes
    unbounded = journal_trend(times, linear, horizon_s=120.0)
    assert unbounded.verdict is Verdict.GROWING and unbounded.slope_mib_per_h == pytest.approx(360.0)
    assert journal_trend(times, linear, horizon_s=590.0).verdict is Verdict.INCONCLUSIVE
    assert journal_trend(times, [None] * len(times), horizon_s=0.0).verdict is Verdict.NOT_MEASURED


def test_every_kind_is_in_the_schedule() -> None:
    assert set(SCHEDULE) == set(Kind)


@pytest.mark.slow
def test_a_short_soak_of_the_default_model(tmp_path: Path) -> None:
    output = tmp_path / "soak.json"
    command = [sys.executable, "-m", "plait", "bench", "soak", "--minutes", "0.1", "--no-progress"]
    command += ["--device", "cpu", "--output", str(output)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert output.exists(), result.stdout + result.stderr
    report = json.loads(output.read_text())
    assert report["server_errors_5xx"] == [], report["server_errors_5xx"]
    assert not any(status.startswith("5") for status in report["statuses"])
    assert report["unexpected_operations"] == [], report["unexpected_operations"]
    assert report["kv"]["back_to_zero"] and report["kv"]["after"]["kv_usage_ratio"] == 0.0
    assert report["kv"]["peak_usage_ratio"] > 0  # the load did hold KV
    for kind in Kind:
        assert report["kinds"][kind]["operations"] >= 1 and report["kinds"][kind]["unexpected"] == 0, kind
    outcomes = {kind: report["kinds"][kind]["outcomes"] for kind in Kind}
    assert "disconnected" in outcomes[Kind.CHAT_DISCONNECT] and "failed" in outcomes[Kind.TOOL_FAILURE]
    assert "cancelled mid-decode" in outcomes[Kind.WORKFLOW_CANCEL]  # the first cancel comes at the first token
    assert all(sample["rss_bytes"] > 0 for sample in report["samples"])
    assert report["rss"]["verdict"] == "inconclusive"  # 6 s: too short to tell
    assert result.returncode == 0, result.stdout + result.stderr
    assert "soak: invariants" in result.stdout


def test_the_started_server_gets_a_data_dir_and_a_retention_when_it_has_them(monkeypatch, tmp_path: Path) -> None:
    from plait.bench import soak
    from plait.cli import build_parser

    args = build_parser().parse_args(["bench", "soak", "--minutes", "2", "--device", "cpu", "--plan", "dedup=off"])
    settings = soak.SoakSettings.from_args(args)
    assert settings.retain_finished_s == 30.0 and settings.warmup_s == 30.0 and settings.sample_interval_s == 3.0
    assert settings.journal_horizon() == 2 * (30.0 + soak.JOURNAL_SWEEP_S)  # retention + sweep, twice

    monkeypatch.setattr(soak, "serve_options", lambda: {"--tools", "--device"})
    flags, journal_dir, temporary, notes = soak._server_flags(args, settings)
    assert flags[:2] == ["--tools", "plait.bench.soak_tools:TOOLS"] and "--data-dir" not in flags
    assert flags[flags.index("--device") : flags.index("--device") + 2] == ["--device", "cpu"]
    assert flags[flags.index("--plan") : flags.index("--plan") + 2] == ["--plan", "dedup=off"]
    assert journal_dir is None and temporary is None and settings.retain_finished_s is None and notes

    settings = soak.SoakSettings.from_args(args)
    monkeypatch.setattr(soak, "serve_options", lambda: {"--data-dir", "--retain-finished-s"})
    flags, journal_dir, temporary, notes = soak._server_flags(args, settings)
    try:
        assert temporary is not None and journal_dir == temporary and temporary.is_dir()
        assert flags[flags.index("--data-dir") + 1] == str(temporary)
        assert flags[flags.index("--retain-finished-s") + 1] == "30" and not notes
    finally:
        soak._cleanup(temporary)
    assert not temporary.exists()


def test_the_rss_fit_starts_after_the_warmup_time_and_operations() -> None:
    from plait.bench import soak
    from plait.bench.soak_load import Operation
    from plait.cli import build_parser

    argv = ["bench", "soak", "--minutes", "10", "--warmup", "60", "--warmup-operations", "3"]
    settings = soak.SoakSettings.from_args(build_parser().parse_args(argv))
    ends = [50.0, 60.0, 70.0, 80.0]
    ops = [Operation(Kind.CHAT, i, start_s=end - 5.0, latency_s=5.0, ok=True) for i, end in enumerate(ends)]
    assert soak.rss_warmup_s(ops, settings) == 70.0  # the third operation ended after the 60 s
    assert soak.rss_warmup_s(ops[:2], settings) == math.inf  # fewer operations than the warm-up: no fit
    assert rss_trend([100.0], [1.0], warmup_s=math.inf).to_json()["warmup_s"] is None
    settings.warmup_operations = 1
    assert soak.rss_warmup_s(ops, settings) == 60.0
