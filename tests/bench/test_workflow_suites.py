"""Workflow suites of ``plait bench workflow``: every suite builds (both profiles, defaults and overrides), validates,
is deterministic, uses real data where it says so, and sizes its KV pool as documented. No model is loaded."""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from plait.bench.workflow_suites import (
    SUITE_NAMES,
    Suite,
    SuiteDataMissing,
    SuiteOptions,
    build_suite,
    make_sim_tool,
    synthetic_text,
)
from plait.bench.workflow_suites.agent_traces import trace_gaps
from plait.bench.workflow_suites.estimates import SizeEstimator, approx_tokens
from plait.bench.workflow_suites.synthetic_text import WORDS
from plait.dag import LLMCall, ToolCall, decode_workflow, encode_workflow, to_workflow

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
DATA_NEEDED = {
    "react": "../shared/data/traces/lmcache_agent",
    "text2sql": "../shared/data/text2sql/spider_dev",
    "bfcl": "the bfcl-eval package (pip install --no-deps bfcl-eval) and ../shared/data/traces/lmcache_agent",
}
DEFAULT_COUNTS = {
    ("multi-agent", "cpu"): 24,
    ("react", "cpu"): 16,
    ("text2sql", "cpu"): 20,
    ("map-reduce", "cpu"): 10,
    ("starvation", "cpu"): 41,
    ("bfcl", "cpu"): 8,
}


@functools.cache
def _build(name: str, profile: str = "cpu", programs: int | None = None, rate: float | None = None, seed: int = 0):
    return build_suite(name, SuiteOptions(profile=profile, programs=programs, arrival_rate=rate, seed=seed))


def built(name: str, profile: str = "cpu", programs: int | None = None, rate: float | None = None, seed: int = 0):
    """The suite (cached across tests), or a skip naming the shared data it needs."""
    try:
        return _build(name, profile, programs, rate, seed)
    except SuiteDataMissing as error:
        pytest.skip(f"{DATA_NEEDED.get(name, '../shared/data')} not found: {error}")


def fingerprint(suite: Suite) -> list[tuple]:
    """Everything that defines the workload: arrivals, deadlines, tags and each workflow's wire form."""
    return [(p.arrival_s, p.deadline_s, p.tag, encode_workflow(p.workflow)) for p in suite.programs]


def check_suite(suite: Suite) -> None:
    assert suite.programs and suite.description and suite.kv_slots > 0
    arrivals = [program.arrival_s for program in suite.programs]
    assert arrivals == sorted(arrivals) and arrivals[0] >= 0
    names = [program.workflow.name for program in suite.programs]
    assert len(set(names)) == len(names)
    specs = {tool.name: tool.spec for tool in suite.tools}
    assert all(tool.timeout_s is None for tool in suite.tools)
    estimator = SizeEstimator()
    largest = 0
    for program in suite.programs:
        workflow = program.workflow
        assert program.deadline_s is None or program.deadline_s > 0
        for node in workflow.tool_calls():
            assert node.tool in specs, f"{workflow.name}: {node.id} calls {node.tool!r}, not in suite.tools"
        for node in workflow.llm_calls():
            # Every output's length is part of the workload: a fixed token count, or a grammar that admits one text.
            assert node.constraints.ignore_eos or len(node.constraints.choices or ()) == 1
            assert node.constraints.temperature == 0
            largest = max(largest, estimator.footprint_tokens(workflow, node))
        # Round trip through the wire format, validated against the tools' parameter schemas this time.
        again = to_workflow(decode_workflow(encode_workflow(workflow)), tools=specs)
        assert list(again.nodes) == list(workflow.nodes)
    assert suite.kv_slots >= largest  # the largest call always fits
    json.dumps(suite.parameters)  # goes into the JSON report as is


@pytest.mark.parametrize("profile", ["cpu", "gpu"])
@pytest.mark.parametrize("name", SUITE_NAMES)
def test_suite_builds_with_defaults(name: str, profile: str) -> None:
    suite = built(name, profile)
    check_suite(suite)
    assert suite.name == name and suite.parameters["profile"] == profile
    if profile == "cpu":
        assert len(suite.programs) == DEFAULT_COUNTS[(name, profile)]
        free = [node for p in suite.programs for node in p.workflow.llm_calls() if not node.constraints.choices]
        assert all(node.constraints.max_tokens <= 32 for node in free)
    else:  # GPU: more programs and longer prompts than CPU
        cpu = built(name, "cpu")
        assert len(suite.programs) >= 2 * len(cpu.programs)
        gpu_prompt = suite.parameters["totals"]["prompt_tokens_per_call_est"]["p50"]
        assert gpu_prompt >= 3 * cpu.parameters["totals"]["prompt_tokens_per_call_est"]["p50"]


@pytest.mark.parametrize("name", SUITE_NAMES)
def test_suite_overrides(name: str) -> None:
    at_once = built(name, "cpu", programs=3, rate=0)
    check_suite(at_once)
    assert len(at_once.programs) == 3 and all(p.arrival_s == 0 for p in at_once.programs)
    fast = built(name, "gpu", programs=5, rate=50.0)
    check_suite(fast)
    assert len(fast.programs) == 5 and 0 < fast.programs[-1].arrival_s < 2
    assert fast.parameters["arrival_rate"] == 50.0 and fast.parameters["programs"] == 5


@pytest.mark.parametrize("name", SUITE_NAMES)
def test_same_seed_same_suite_other_seed_other_suite(name: str) -> None:
    first = built(name, "cpu", programs=4, seed=1)
    again = build_suite(name, SuiteOptions(programs=4, seed=1))
    assert fingerprint(first) == fingerprint(again) and first.kv_slots == again.kv_slots
    other = built(name, "cpu", programs=4, seed=2)
    assert [p.arrival_s for p in first.programs] != [p.arrival_s for p in other.programs]
    prompts = [[encode_workflow(p.workflow)] for p in first.programs]
    assert prompts != [[encode_workflow(p.workflow)] for p in other.programs]


def test_bad_options_and_names() -> None:
    with pytest.raises(ValueError, match="unknown workflow suite"):
        build_suite("nope", SuiteOptions())
    with pytest.raises(ValueError, match="profile"):
        build_suite("map-reduce", SuiteOptions(profile="tpu"))
    with pytest.raises(ValueError, match="programs"):
        build_suite("map-reduce", SuiteOptions(programs=0))


@pytest.mark.parametrize("name", ["react", "text2sql", "bfcl"])
def test_missing_shared_data_names_the_path(name: str, tmp_path: Path) -> None:
    with pytest.raises(SuiteDataMissing, match=str(tmp_path)):
        build_suite(name, SuiteOptions(data_dir=tmp_path))


def test_multi_agent_kv_pool_is_below_its_prompt_working_set() -> None:
    suite = built("multi-agent")
    arithmetic = suite.parameters["kv_slots_arithmetic"]
    agent_tokens = arithmetic["agent_prompt_tokens_est"]
    assert len(agent_tokens) == 6 and all(600 <= tokens <= 1200 for tokens in agent_tokens.values())
    assert suite.kv_slots < arithmetic["sum_agent_prompt_tokens"]  # not even the agents' prompts all fit
    assert suite.kv_slots < suite.parameters["totals"]["working_set_tokens_est"]
    for profile in ("cpu", "gpu"):
        arithmetic = built("multi-agent", profile).parameters["kv_slots_arithmetic"]
        assert (
            arithmetic["kv_slots"] < arithmetic["sum_agent_prompt_tokens"] + arithmetic["private_tokens_per_call_max"]
        )
    # Each agent's fixed prompt is the same prefix in every program.
    prefixes = {(node.id, node.prompt.static_prefix) for p in suite.programs for node in p.workflow.llm_calls()}
    assert len(prefixes) == 6


def test_react_tool_times_are_trace_gaps() -> None:
    suite = built("react")
    gaps = {tool: trace_gaps(SHARED_DATA, source) for tool, source in (("search", "taubench"), ("run_code", "miniswe"))}
    scale = suite.parameters["tool_time_scale"]
    for tool, values in gaps.items():
        stats = suite.parameters["trace_gaps_s"][tool]
        assert stats["count"] == len(values) and min(values) <= stats["p50"] <= max(values)
        assert 0.05 < stats["p50"] < 10  # real agent tool time, not a made-up constant
    for program in suite.programs:
        calls = program.workflow.tool_calls()
        assert 3 <= len(calls) <= 6 and len(program.workflow.llm_calls()) == len(calls) + 1
        for call in calls:
            unscaled = call.args["seconds"] / scale
            assert min(abs(unscaled - gap) for gap in gaps[call.tool]) < 0.002
    # Each turn's prompt extends the previous turn's.
    nodes = suite.programs[0].workflow.nodes
    assert nodes["think_2"].prompt.text.startswith(nodes["think_1"].prompt.text)


def test_trace_gaps_sort_sessions_and_drop_non_positive(tmp_path: Path) -> None:
    folder = tmp_path / "traces" / "lmcache_agent" / "taubench"
    folder.mkdir(parents=True)
    lines = [("a", 3_000_000), ("a", 1_000_000), ("b", 5_000_000), ("a", 1_000_000), ("b", 5_500_000), ("a", 90e6)]
    folder.joinpath("x.jsonl").write_text(
        "".join(
            json.dumps({"timestamp": int(ts), "session_id": s, "input": "", "output": ""}) + "\n" for s, ts in lines
        )
    )
    assert sorted(trace_gaps(tmp_path, "taubench", max_gap_s=60.0)) == [0.5, 2.0, 60.0]


def test_text2sql_uses_real_spider_questions_and_schemas() -> None:
    suite = built("text2sql")
    spider = SHARED_DATA / "text2sql" / "spider_dev"
    tables = {entry["db_id"]: entry for entry in json.loads((spider / "tables.json").read_text())}
    questions = {row["question"] for row in json.loads((spider / "dev.json").read_text())}
    for program in suite.programs:
        workflow = program.workflow
        assert workflow.variables["question"].value in questions
        link = workflow.nodes["link"].prompt.text
        for table in tables[program.tag]["table_names_original"]:
            assert f"Table {table} (" in link
        candidates = [node for node in workflow.llm_calls() if node.id.startswith("candidate_")]
        assert len(candidates) == 4 and len({node.prompt.static_prefix for node in candidates}) == 1
        vote = workflow.nodes["vote"]
        assert isinstance(vote.bindings["finals"], list) and len(vote.bindings["finals"]) == 4
        assert all(call.tool == "execute_sql" for call in workflow.tool_calls())
        assert len(workflow.tool_calls()) == len(workflow.llm_calls()) - 2  # one execution per candidate/revision
    assert all(p.deadline_s is not None for p in suite.programs)


def test_map_reduce_fans_in_every_map_output() -> None:
    suite = built("map-reduce")
    prefixes = set()
    for program in suite.programs:
        maps = [node for node in program.workflow.llm_calls() if node.id.startswith("map_")]
        assert 6 <= len(maps) <= 8
        reduce = program.workflow.nodes["reduce"]
        assert reduce.bindings["summaries"] == [node.output for node in maps]
        prefixes |= {node.prompt.static_prefix for node in maps}
    assert len(prefixes) == 1  # one instruction prefix shared by every map call of every document


def test_starvation_has_one_huge_program_among_small_ones() -> None:
    suite = built("starvation")
    huge = [p for p in suite.programs if p.tag == "huge"]
    small = [p for p in suite.programs if p.tag == "small"]
    assert len(huge) == 1 and len(small) == 40
    assert len(huge[0].workflow.llm_calls()) >= 30
    before = sum(p.arrival_s < huge[0].arrival_s for p in small)
    assert 10 <= before <= 30  # it arrives in the middle of the stream
    only = built("starvation", programs=1)
    assert [p.tag for p in only.programs] == ["huge"]


def test_sim_tool_sleeps_and_returns_deterministic_text() -> None:
    tool = make_sim_tool("search")
    assert tool.timeout_s is None and set(tool.spec.properties) == {"seconds", "result_words", "query"}

    async def call(seconds: float, words: int, query: str) -> tuple[str, float]:
        kwargs = tool.convert_arguments({"seconds": seconds, "result_words": words, "query": query})
        start = time.perf_counter()
        result = await tool.fn(**kwargs)
        return result, time.perf_counter() - start

    async def main():
        return await asyncio.gather(call(0.2, 25, "q"), call(0.2, 25, "q"), call(0.05, 25, "other"))

    (first, took), (second, _), (other, other_took) = asyncio.run(main())
    assert 0.19 <= took < 0.6 and 0.04 <= other_took < 0.45
    assert first == second and first != other and len(first.split()) == 25
    assert make_sim_tool("run_code").spec.name == "run_code"


def test_synthetic_text_is_deterministic_across_processes() -> None:
    text = synthetic_text(120, 7)
    assert len(text.split()) == 120 and all(word.rstrip(".") in WORDS for word in text.split())
    assert text != synthetic_text(120, 8) and synthetic_text(0, 1) == ""
    assert 1000 <= approx_tokens(synthetic_text(1000, 3)) <= 1200
    # Another interpreter with another hash seed; the module is loaded by path so the check stays cheap.
    path = REPO_ROOT / "plait" / "bench" / "workflow_suites" / "synthetic_text.py"
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('st', {str(path)!r})\n"
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
        "sys.stdout.write(module.synthetic_text(120, 7))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == text
    assert importlib.util.find_spec("plait.bench.workflow_suites.synthetic_text") is not None


def test_every_llm_call_and_tool_call_is_accounted_in_totals() -> None:
    suite = built("react")
    totals = suite.parameters["totals"]
    workflows = [p.workflow for p in suite.programs]
    assert totals["llm_calls"] == sum(isinstance(n, LLMCall) for wf in workflows for n in wf.nodes.values())
    assert totals["tool_calls"] == sum(isinstance(n, ToolCall) for wf in workflows for n in wf.nodes.values())
    assert totals["working_set_tokens_est"] > suite.kv_slots


def test_estimates_count_shared_prefixes_once_and_reuse_a_programs_own_kv() -> None:
    first, second = (p.workflow for p in built("map-reduce", programs=2, rate=0).programs)
    estimator = SizeEstimator()
    shared = sum(estimator.tokens(first.nodes[node].prompt.static_prefix) for node in ("map_0", "reduce"))
    alone = estimator.distinct_kv_tokens([first]) + estimator.distinct_kv_tokens([second])
    assert estimator.distinct_kv_tokens([first, second]) == alone - shared
    react = built("react", programs=1).programs[0].workflow
    think_1, think_2 = react.nodes["think_1"], react.nodes["think_2"]
    uncached = estimator.uncached_prompt_tokens(react)
    assert uncached["think_1"] == estimator.prompt_tokens(react, think_1)
    grown = estimator.prompt_tokens(react, think_2) - estimator.prompt_tokens(react, think_1)
    assert uncached["think_2"] == grown - think_1.constraints.max_tokens  # the thought is already in the KV
