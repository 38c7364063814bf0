"""`plait bench workflow --sweep`: plait and the baseline at every value and seed, in alternating order, the ratio
curve with its spread in the table, the JSON and a plot; bad sweeps exit 2 naming what to fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import plait.bench.workflow_run as workflow_run
from plait.bench.workflow_sweep import Sweep
from plait.cli import main as cli_main
from tests.served_process import TINY_ARGS

SPIDER = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "text2sql" / "spider_dev"


def test_a_sweep_runs_both_modes_at_every_point_and_plots_the_curve(tmp_path, capsys, monkeypatch):
    order: list[tuple[str, float, int]] = []
    real_run_mode = workflow_run.run_mode

    async def spy(engine, build, mode, **kwargs):
        suite = build()
        order.append((mode.name, suite.parameters.get("programs", len(suite.programs)), len(suite.programs)))
        return await real_run_mode(engine, build, mode, **kwargs)

    monkeypatch.setattr(workflow_run, "run_mode", spy)
    output = tmp_path / "sweep.json"
    code = cli_main(["bench", "workflow", "--suite", "starvation", "--sweep", "programs=2,3", "--seeds", "0,1",
                     "--time-limit", "300", "--output", str(output), *TINY_ARGS])  # fmt: skip
    assert code == 0
    assert [name for name, _, _ in order] == ["plait", "baseline", "baseline", "plait"] * 2
    assert [size for _, _, size in order] == [2, 2, 2, 2, 3, 3, 3, 3]
    payload = json.loads(output.read_text())
    assert [(p["value"], p["seed"]) for p in payload["points"]] == [(2, 0), (2, 1), (3, 0), (3, 1)]
    assert all(p["mean_jct_ratio"] > 0 for p in payload["points"])
    for entry in payload["curve"]:
        assert entry["mean_jct_ratio_min"] <= entry["mean_jct_ratio"] <= entry["mean_jct_ratio_max"]
    assert output.with_suffix(".png").stat().st_size > 1000
    for entry in payload["curve"]:
        assert entry["p99_first_token_s"]["plait"] > 0 and entry["p99_first_token_s"]["baseline"] > 0
    out = capsys.readouterr().out
    assert "geometric mean of mean-JCT ratios over 4 points" in out and "median of 2 seeds" in out
    assert "p99 first token s" in out and "check passed" not in out  # starvation has no check


@pytest.mark.parametrize(
    ("sweep", "seeds", "message"),
    [("temperature=1,2", "0", "FIELD one of"), ("rate=", "0", "FIELD"), ("rate=1,x", "0", "numbers"),
     ("programs=1.5", "0", "whole numbers"), ("rate=-1", "0", ">= 0"), ("rate=1", "", "at least one")],
)  # fmt: skip
def test_bad_sweeps_say_what_to_fix(sweep, seeds, message):
    with pytest.raises(ValueError, match=message):
        Sweep.parse(sweep, seeds)


def test_a_sweep_needs_the_baseline(capsys):
    args = ["bench", "workflow", "--suite", "starvation", "--sweep", "rate=1", "--compare", "none", *TINY_ARGS]
    assert cli_main(args) == 2
    assert "--sweep runs plait and the baseline only" in capsys.readouterr().err


@pytest.mark.skipif(not SPIDER.is_dir(), reason=f"{SPIDER} not found (Spider 1.0 dev, the shared data)")
def test_a_failed_program_check_makes_the_sweep_fail(tmp_path, capsys, monkeypatch):
    """A suite that checks its programs (text2sql) reports the checks over the sweep; one failure exits 1."""
    from plait.bench.workflow_suites import sql_executor

    real_check = sql_executor.SqlWorld.check

    def one_failure(world):
        report = real_check(world)
        return {**report, "passed": report["passed"] - 1, "failed": report["failed"] + 1}

    monkeypatch.setattr(sql_executor.SqlWorld, "check", one_failure)
    code = cli_main(["bench", "workflow", "--suite", "text2sql", "--sweep", "programs=1", "--seeds", "0",
                     "--time-limit", "300", "--output", str(tmp_path / "sweep.json"), *TINY_ARGS])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 1
    assert "plait: text2sql check passed 0 of 1 program runs, failed 1" in out
