"""``plait bench workflow``'s runner: one suite, plait and baseline modes on one engine, measured outcomes."""

from __future__ import annotations

import asyncio

import pytest

from plait.bench.workflow_run import run_mode
from plait.bench.workflow_suites import Suite, SuiteProgram
from plait.runtime.planning import PlanConfig
from tests.runtime.conftest import wait_kv_free
from tests.runtime.test_planning import lookup, tool_chain


def test_the_command_knows_every_suite():
    from plait.bench.workflow_bench import SUITE_CHOICES
    from plait.bench.workflow_suites import SUITE_NAMES

    assert SUITE_CHOICES == SUITE_NAMES


def small_suite() -> Suite:
    programs = [SuiteProgram(0.01 * i, tool_chain(f"p{i}", f"question {i}", 0.02), deadline_s=30.0) for i in range(3)]
    programs.append(SuiteProgram(0.05, tool_chain("late", "question late", 0.02), tag="late"))
    return Suite("tiny", "three chains and a late one", programs, [lookup], kv_slots=4096)


def test_a_journaled_mode_commits_every_program_and_its_outcomes(tiny_engine, tmp_path):
    """``plait bench workflow --journal``: each program is accepted, its nodes' outcomes and its end committed."""
    from plait.runtime.journal import Journal

    path = tmp_path / "journal.sqlite3"
    result = asyncio.run(run_mode(tiny_engine, small_suite, PlanConfig(), time_limit_s=60, journal_path=path))
    assert result.metrics()["completed"] == 4
    journal = Journal(path)
    try:
        ids = [f"{program.tag}-{i}" for i, program in enumerate(small_suite().programs)]
        for program_id in ids:
            row = journal.program(program_id)
            assert row is not None and row.state == "done", program_id
            assert len(journal.outcomes(program_id)) == 3  # LLM -> tool -> LLM
    finally:
        journal.close()


def test_modes_run_the_same_programs_and_report_metrics(tiny_engine):
    async def main():
        plait_run = await run_mode(tiny_engine, small_suite, PlanConfig(), time_limit_s=60)
        baseline = await run_mode(tiny_engine, small_suite, PlanConfig.baseline(), time_limit_s=60)
        await wait_kv_free(tiny_engine)
        return plait_run, baseline

    plait_run, baseline = asyncio.run(main())
    for result in (plait_run, baseline):
        metrics = result.metrics()
        assert metrics["programs"] == metrics["completed"] == 4 and metrics["failed"] == 0
        assert metrics["slo_attainment"] == 1.0 and metrics["mean_jct_s"] > 0
        assert metrics["p95_jct_s"] >= metrics["p50_jct_s"] > 0 and "mean_jct_s[late]" in metrics
        assert 0.0 <= metrics["prefix_hit_rate"] <= 1.0
        # Every program's first token came after it arrived and before it finished.
        firsts = [o.first_token_s for o in result.outcomes]
        assert all(0 < f < o.jct_s for f, o in zip(firsts, result.outcomes, strict=True))
        assert metrics["p99_first_token_s"] >= metrics["p50_first_token_s"] > 0
    # Forced lengths: 2 calls of 6 tokens per program; plait may answer identical calls once (dedup).
    assert baseline.engine["generated_tokens"] == 4 * 2 * 6
    shared = plait_run.planner["dedup_shared"]
    assert plait_run.engine["generated_tokens"] == (4 * 2 - shared) * 6
    assert plait_run.planner["pins"] > 0 and baseline.planner["pins"] == 0
    assert tiny_engine.core.policy.eviction == "lru"  # the last mode's policy was applied
    assert not tiny_engine.core.scheduler.policy.prefix_first


def test_a_time_limit_cancels_and_reports_unfinished_programs(tiny_engine):
    def slow_suite() -> Suite:
        suite = small_suite()
        suite.programs = [SuiteProgram(0.0, tool_chain("slow", "question", 5.0))]
        return suite

    async def main():
        result = await run_mode(tiny_engine, slow_suite, PlanConfig(), time_limit_s=0.5)
        await wait_kv_free(tiny_engine)
        return result

    result = asyncio.run(main())
    assert [o.state for o in result.outcomes] == ["timeout"] and result.metrics()["completed"] == 0


def test_plan_overrides_and_leave_one_out_choose_the_modes(capsys):
    import argparse

    from plait.bench.workflow_bench import _modes
    from plait.cli import main as cli_main

    def args(**kw) -> argparse.Namespace:
        base = {"plan": [], "max_queue_wait": None, "compare": "baseline", "ablation": False, "leave_one_out": False}
        return argparse.Namespace(**{**base, **kw})

    modes = _modes(args(plan=["dedup=off"], leave_one_out=True))
    plait_mode, baseline, *without = modes
    assert not plait_mode.dedup and plait_mode.tool_pins and baseline.name == "baseline"
    assert [m.name for m in without] == [f"plait without {f}" for f in ("program_fcfs",
        "next_use_hints", "tool_pins", "reserve_next_call", "prefetch", "prefix_first",
        "cache_affinity")]  # fmt: skip
    assert all(not m.uses(m.name.rsplit(" ", 1)[1]) for m in without)
    picked = _modes(args(without=["tool_pins", "prefix_first"]))
    assert [m.name for m in picked[2:]] == ["plait without tool_pins", "plait without prefix_first"]
    assert not picked[2].tool_pins and picked[2].engine.prefix_first and not picked[3].engine.prefix_first
    with pytest.raises(ValueError, match="unknown feature"):
        _modes(args(without=["pins"]))
    variant = _modes(args(variant=["pins_hold_admissions=off, max_pin_ttl_s=5"]))[2]
    assert variant.name == "plait pins_hold_admissions=off,max_pin_ttl_s=5"
    assert not variant.engine.pins_hold_admissions and variant.max_pin_ttl_s == 5.0 and variant.tool_pins
    with pytest.raises(ValueError, match="FIELD=VALUE"):
        _modes(args(variant=["pins=off"]))
    code = cli_main(["bench", "workflow", "--suite", "react", "--plan", "dedup=maybe", "--model", "tiny"])
    assert code == 2 and "dedup" in capsys.readouterr().err


def test_repeats_alternate_the_mode_order_and_report_medians(tmp_path, capsys):
    """--repeats 2: every mode twice, the second round in reverse order; medians in the table, each round's ratio."""
    import json

    from plait.bench import workflow_run
    from plait.cli import main as cli_main

    order: list[str] = []
    real_run_mode = workflow_run.run_mode

    async def spy(engine, build, mode, **kwargs):
        order.append(mode.name)
        return await real_run_mode(engine, build, mode, **kwargs)

    workflow_run.run_mode = spy
    try:
        output = tmp_path / "out.json"
        code = cli_main(["bench", "workflow", "--suite", "starvation", "--programs", "3", "--model", "tiny",
                         "--weights", "dummy", "--repeats", "2", "--output", str(output)])  # fmt: skip
    finally:
        workflow_run.run_mode = real_run_mode
    assert code == 0
    assert order == ["plait", "baseline", "baseline", "plait"]
    payload = json.loads(output.read_text())
    assert payload["repeats"] == 2 and len(payload["mean_jct_ratio_by_round"]) == 2
    for mode in payload["modes"]:
        assert len(mode["rounds"]) == 2 and isinstance(mode["metrics"]["completed"], int)
    assert "by round" in capsys.readouterr().out
    assert cli_main(["bench", "workflow", "--suite", "starvation", "--repeats", "0", "--model", "tiny"]) == 2


def test_the_bench_reports_each_modes_pin_decisions(capsys):
    """A line per mode that considered pins: taken, declined, and the fitted prefill cost they were weighed with."""
    from types import SimpleNamespace

    from plait.bench.workflow_bench import _print_pin_decisions

    learned = {"tool_wait_horizon_s": 2.5, "tool_wait_lost_tokens": 400.0, "tool_wait_exposure_token_s": 1000.0}
    runs = {
        "plait": [
            SimpleNamespace(
                planner={
                    "pins": 12,
                    "pins_declined": 353,
                    "prefill_s_per_token_marginal": 1.7e-5,
                    "step_fixed_share": 0.34,
                    **learned,
                }
            )
        ],
        "idle": [SimpleNamespace(planner={"pins": 0, "pins_declined": 9, "tool_wait_horizon_s": "inf"})],
        "cold": [SimpleNamespace(planner={"pins": 1, "pins_declined": 0, "prefill_s_per_token_marginal": None})],
        "baseline": [SimpleNamespace(planner={"pins": 0, "pins_declined": 0})],
    }
    _print_pin_decisions(runs)
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "plait: pins taken 12, declined 353 by cost/benefit; 1.70e-05 s per prefill token (fitted), 0.34 of a step "
        "fixed; eviction horizon of tool-waiting KV 2.50 s (400 tokens lost per 1000 token-s waited, decayed)",
        "idle: pins taken 0, declined 9 by cost/benefit; no fitted prefill cost yet; eviction horizon of tool-waiting "
        "KV inf (0 tokens lost per 0 token-s waited, decayed)",
        "cold: pins taken 1, declined 0 by cost/benefit; no fitted prefill cost yet; eviction horizon of tool-waiting "
        "KV not learned yet (0 tokens lost per 0 token-s waited, decayed)",
    ]


def test_a_program_that_failed_fails_its_suites_check():
    """A program that crashed did not run all it had to: the check counts it as failed, not as cut by the time limit."""
    from plait.bench.workflow_run import ProgramOutcome, _checked

    suite = small_suite()
    suite.check = lambda: {"programs": 4, "passed": 2, "failed": 0, "incomplete": 2, "failures": []}
    outcomes = [ProgramOutcome("", "done", 1.0, None, 0.0), ProgramOutcome("", "failed", None, None, 0.0, "boom")]
    outcomes += [ProgramOutcome("", "timeout", None, None, 0.0)] * 2
    check = _checked(suite, outcomes)
    assert (check["passed"], check["failed"], check["incomplete"]) == (2, 1, 1)
    suite.check = None
    assert _checked(suite, outcomes) is None
