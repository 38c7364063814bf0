"""The bfcl suite: BFCL's multi-turn tasks as programs whose tool calls run for real on BFCL's tool classes.

The parser needs nothing; the rest needs the ``bfcl-eval`` package (``pip install --no-deps bfcl-eval``; ``make
test`` installs it) and skips with that reason otherwise. The end-to-end run also needs the agent traces in
``../shared/data`` (the tool latencies).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json

import pytest

from plait.bench.workflow_suites import SuiteDataMissing, SuiteOptions, build_suite
from plait.bench.workflow_suites.bfcl_tools import BfclWorld, CallSyntaxError, ParsedCall, parse_calls

needs_bfcl = pytest.mark.skipif(
    importlib.util.find_spec("bfcl_eval") is None,
    reason="the bfcl-eval package is not installed (pip install --no-deps bfcl-eval)",
)


def test_call_lists_parse_into_names_and_literal_arguments():
    calls = parse_calls("[cd(folder='document'), sort('a.txt'), add(a=1, b=[2, 3.5], c={'k': None})]")
    assert calls == [
        ParsedCall("cd", (), {"folder": "document"}),
        ParsedCall("sort", ("a.txt",), {}),
        ParsedCall("add", (), {"a": 1, "b": [2, 3.5], "c": {"k": None}}),
    ]
    assert parse_calls("ls()") == [ParsedCall("ls", (), {})]
    assert parse_calls(" [] ") == []


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("[os.system('ls')]", "function name"),  # attribute access: never reaches anything but the tools
        ("[__import__('os')]", None),  # a name, but not a tool: refused when run, parsed here
        ("[f(x=g(1))]", "literals"),
        ("[f(**{'a': 1})]", r"\*\*kwargs"),
        ("[f(a=1)", "syntax"),
        ("[1, 2]", "function name"),
        ("f(a=b)", "literals"),
        ("[f({[1]: 2})]", "literals"),  # an unhashable key: literal_eval raises TypeError
        ("[f(a=1, a=2)]", "twice"),
    ],
)
def test_anything_but_literal_calls_of_a_name_is_refused(text, reason):
    if reason is None:
        assert parse_calls(text)[0].name == "__import__"
        return
    with pytest.raises(CallSyntaxError, match=reason):
        parse_calls(text)


@pytest.fixture(scope="module")
def bfcl():
    if importlib.util.find_spec("bfcl_eval") is None:
        pytest.skip("the bfcl-eval package is not installed (pip install --no-deps bfcl-eval)")
    from plait.bench.workflow_suites import bfcl_data

    return bfcl_data


def test_only_the_tool_classes_public_methods_can_be_called(bfcl):
    from plait.bench.workflow_suites.bfcl_tools import new_instances, run_text

    instances = new_instances(bfcl.load_tasks("base")[0])
    for text in ("[__import__('os')]", "[_load_scenario({})]", "[__class__()]", "[eval('1')]"):
        result = run_text(text, instances)
        assert len(result) == 1 and result[0].startswith("Error during execution: no function named"), text
    assert run_text("[pwd()]", instances) != run_text("[nope()]", instances)


def run_turns(world: BfclWorld, key: str, turns: list[list[str]]) -> None:
    async def main():
        for turn, calls in enumerate(turns):
            await world.execute_turn(key, turn, "[" + ", ".join(calls) + "]")

    asyncio.run(main())


@pytest.mark.parametrize("category", ["base", "long_context", "miss_param"])
def test_every_tasks_ground_truth_runs_and_passes_bfcls_checks(bfcl, category):
    tasks = bfcl.load_tasks(category)
    assert len(tasks) == 200
    world = BfclWorld({f"p{i}": task for i, task in enumerate(tasks)})
    for key, task in world.tasks.items():
        run_turns(world, key, [list(calls) for calls in task.ground_truth])
    report = world.check()
    assert (report.programs, report.passed, report.failures, report.incomplete) == (200, 200, [], [])


def test_a_program_that_strays_from_the_ground_truth_fails_the_check(bfcl):
    task = bfcl.load_tasks("base")[0]
    truth = [list(calls) for calls in task.ground_truth]
    dropped = [truth[0][:-1], *truth[1:]]  # the first turn's last call never made
    changed = [[truth[0][0].replace("document", "archive"), *truth[0][1:]], *truth[1:]]
    world = BfclWorld({"dropped": task, "changed": task, "unfinished": task})
    run_turns(world, "dropped", dropped)
    run_turns(world, "changed", changed)
    run_turns(world, "unfinished", truth[:1])
    report = world.check()
    assert report.passed == 0 and report.incomplete == ["unfinished"]
    assert {f["program"] for f in report.failures} == {"dropped", "changed"}
    assert all("does not match" in f["error"] or "response" in f["error"].lower() for f in report.failures)


def test_a_turn_runs_once_and_in_order(bfcl):
    task = bfcl.load_tasks("base")[0]
    world = BfclWorld({"p": task})
    first = "[" + ", ".join(task.ground_truth[0]) + "]"

    async def main():
        results = await world.execute_turn("p", 0, first)
        again = await world.execute_turn("p", 0, first)  # a re-run after a failover: no second mkdir
        assert again == results and "Error" not in results
        with pytest.raises(ValueError, match="turn 2 ran before turn 1"):
            await world.execute_turn("p", 2, "[]")
        with pytest.raises(ValueError, match="unknown BFCL program"):
            await world.execute_turn("nope", 0, "[]")
        broken = await world.execute_turn("p", 1, "[cd(folder=")
        assert json.loads(broken)[0].startswith("Error during parsing")

    asyncio.run(main())


def test_the_suite_forces_each_turn_to_its_ground_truth_and_lists_the_tasks_functions(bfcl):
    try:
        cpu = build_suite("bfcl", SuiteOptions(programs=3))
        gpu = build_suite("bfcl", SuiteOptions(profile="gpu", programs=3))
    except SuiteDataMissing as error:
        pytest.skip(f"../shared/data not found: {error}")
    tasks = {task.task_id: task for task in bfcl.load_tasks("base")}
    for program in cpu.programs:
        workflow = program.workflow
        task = tasks[workflow.name.split("-", 2)[2]]
        for turn, calls in enumerate(task.ground_truth):
            node = workflow.nodes[f"calls_{turn}"]
            assert node.constraints.choices == ["[" + ", ".join(calls) + "]"]
            assert node.prompt.static_prefix.count("User:") == 1  # every prompt starts with the function list
            assert workflow.nodes[f"run_{turn}"].args["turn"] == turn
        prefix = workflow.nodes["calls_0"].prompt.static_prefix
        for doc in (d for cls in task.classes for d in bfcl.function_docs(cls)):
            assert (f"\n{doc['name']}(" in prefix) != (doc["name"] in task.excluded_functions)
    gpu_prefix = gpu.programs[0].workflow.nodes["calls_0"].prompt.static_prefix
    assert '"parameters"' in gpu_prefix  # the GPU profile lists BFCL's JSON schemas


def test_both_modes_execute_every_program_exactly(bfcl):
    """End to end on the engine: plait and baseline runs of the two shortest of 12 programs (the tiny model's
    byte-level tokens must fit its 4k context), each checked by BFCL's checkers; the 10 not run are incomplete."""
    from plait.bench.workflow_suites.estimates import SizeEstimator
    from tests.bench.suite_runs import run_both_modes

    def build():
        try:
            suite = build_suite("bfcl", SuiteOptions(programs=12, arrival_rate=0))
        except SuiteDataMissing as error:
            pytest.skip(f"../shared/data not found: {error}")
        size = SizeEstimator()
        suite.programs = sorted(
            suite.programs, key=lambda p: size.footprint_tokens(p.workflow, p.workflow.nodes[p.workflow.outputs[0]])
        )[:2]
        return suite

    results = run_both_modes(build)
    for result in results:
        assert result.metrics()["completed"] == 2, result.first_error
        assert (result.check["passed"], result.check["failed"], result.check["incomplete"]) == (2, 0, 10)
        assert result.metrics()["check_passed"] == 2
