"""BFCL tool calls run for real: a model's call list parsed without ``eval``, executed on the task's own instances of
BFCL's tool classes, and each program checked at the end with BFCL's state and response checkers.

Rules:
- A call list is Python call syntax (``[cd(folder='doc'), sort('a.txt')]``); only calls of a bare function name with
  literal arguments are accepted (``ast.literal_eval`` on each argument), and a name resolves only to a public method
  of the program's instances: nothing the text says can reach anything else.
- Results are formatted as BFCL's executor formats them (strings as they are, dicts as JSON, anything else ``str``;
  a raised exception becomes ``"Error during execution: ..."``), so the checker compares like with like.
- Each program owns its instances. A turn runs once: a repeated turn (a re-run after a failover) returns the results
  it already produced instead of applying its calls twice; a turn out of order is an error.
- ``BfclWorld.check`` replays every program's ground truth on fresh instances and compares, after every turn with
  ground-truth calls, the program's state and results with BFCL's own ``state_checker`` and ``response_checker``.
  It does not repeat BFCL's checks of empty responses and irrelevance turns: the suite forces every turn's calls, so
  a turn's response is empty exactly when its ground truth is.
"""

from __future__ import annotations

import ast
import asyncio
import copy
import importlib
import inspect
import json
from dataclasses import dataclass, field
from typing import Any

from plait.bench.workflow_suites.bfcl_data import BfclTask, backend_config
from plait.bench.workflow_suites.suite import CheckReport
from plait.runtime import Tool

TOOL_NAME = "bfcl_execute"


class CallSyntaxError(ValueError):
    """A call list that is not a list of ``name(literal, key=literal)`` calls."""


@dataclass(frozen=True)
class ParsedCall:
    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


def parse_calls(text: str) -> list[ParsedCall]:
    """The calls of ``text``: a list (or tuple) of calls, or one call; ``[]`` is no call."""
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as exc:
        raise CallSyntaxError(f"not Python call syntax: {exc.msg}") from exc
    items = tree.elts if isinstance(tree, (ast.List, ast.Tuple)) else [tree]
    calls = []
    for item in items:
        if not isinstance(item, ast.Call) or not isinstance(item.func, ast.Name):
            raise CallSyntaxError(f"not a call of a function name: {ast.unparse(item)}")
        if any(kw.arg is None for kw in item.keywords):
            raise CallSyntaxError(f"**kwargs are not accepted: {ast.unparse(item)}")
        names = [kw.arg for kw in item.keywords]
        if len(set(names)) != len(names):
            raise CallSyntaxError(f"an argument is given twice: {ast.unparse(item)}")
        try:
            args = tuple(ast.literal_eval(arg) for arg in item.args)
            kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in item.keywords if kw.arg is not None}
        except (ValueError, TypeError, RecursionError, MemoryError) as exc:  # TypeError: {[1]: 2} is unhashable
            raise CallSyntaxError(f"arguments of {item.func.id} must be literals: {ast.unparse(item)}") from exc
        calls.append(ParsedCall(item.func.id, args, kwargs))
    return calls


def new_instances(task: BfclTask) -> dict[str, Any]:
    """Fresh instances of the task's tool classes, each loaded with the task's starting state (BFCL's way)."""
    config = backend_config()
    instances = {}
    for class_name in task.classes:
        module = importlib.import_module(config.CLASS_FILE_PATH_MAPPING[class_name])
        instance = getattr(module, class_name)()
        if class_name not in config.STATELESS_CLASSES:
            state = copy.deepcopy(task.initial_config.get(class_name, {}))
            instance._load_scenario(state, long_context=task.long_context)
        instances[class_name] = instance
    return instances


def _methods(instances: dict[str, Any]) -> dict[str, Any]:
    """Public method name -> bound method over every instance (a later class wins a shared name, as in BFCL). Only
    functions defined on the classes count: no attribute of an instance is evaluated or reachable."""
    methods = {}
    for instance in instances.values():
        for name, function in inspect.getmembers(type(instance), inspect.isfunction):
            if not name.startswith("_"):
                methods[name] = function.__get__(instance)
    return methods


def _format(result: Any) -> str:
    if isinstance(result, str):
        return result
    if isinstance(result, dict):
        try:
            return json.dumps(result)
        except TypeError:
            return str(result)
    return str(result)


def execute(calls: list[ParsedCall], instances: dict[str, Any]) -> list[str]:
    """Run ``calls`` in order on ``instances``; one formatted result per call."""
    methods = _methods(instances)
    results = []
    for call in calls:
        method = methods.get(call.name)
        if method is None:
            results.append(f"Error during execution: no function named {call.name!r}")
            continue
        try:
            results.append(_format(method(*call.args, **call.kwargs)))
        except Exception as exc:  # a tool's failure is its result, as BFCL's executor reports it
            results.append(f"Error during execution: {exc}")
    return results


def run_text(text: str, instances: dict[str, Any]) -> list[str]:
    """Parse and run a call list; a list that does not parse is one error result."""
    try:
        return execute(parse_calls(text), instances)
    except CallSyntaxError as exc:
        return [f"Error during parsing: {exc}"]


@dataclass
class ProgramRun:
    """One program's instances and, per executed turn, its results and a snapshot of its state after the turn."""

    task: BfclTask
    instances: dict[str, Any]
    results: list[list[str]] = field(default_factory=list)
    states: list[dict[str, Any]] = field(default_factory=list)


class BfclWorld:
    """The programs of one suite build: their tool instances, the execution tool, and the final check."""

    def __init__(self, tasks: dict[str, BfclTask]) -> None:
        self.tasks = tasks  # program key -> task
        self.runs: dict[str, ProgramRun] = {}

    async def execute_turn(
        self, program: str, turn: int, calls: str, seconds: float = 0.0, result_words: int = 0
    ) -> str:
        """The tool: wait ``seconds`` (the tool's latency), then run turn ``turn``'s ``calls`` of ``program``.
        ``result_words`` is the suite's estimate of the result's size, read only by its size estimates."""
        if program not in self.tasks:
            raise ValueError(f"unknown BFCL program {program!r}")
        await asyncio.sleep(max(0.0, float(seconds)))
        run = self.runs.get(program)
        if run is None:
            run = self.runs[program] = ProgramRun(self.tasks[program], new_instances(self.tasks[program]))
        if turn < len(run.results):  # the same turn again: its effects are already applied
            return json.dumps(run.results[turn])
        if turn != len(run.results):
            raise ValueError(f"{program}: turn {turn} ran before turn {len(run.results)}")
        results = run_text(calls, run.instances)
        run.results.append(results)
        run.states.append(copy.deepcopy(run.instances))
        return json.dumps(results)

    def tool(self) -> Tool:
        return Tool(
            self.execute_turn,
            name=TOOL_NAME,
            description="Runs one turn's function calls of a BFCL task on the task's own tool-class instances.",
            timeout_s=None,
        )

    def check(self) -> CheckReport:
        """BFCL's checks of every program against its ground truth (see the module's rules)."""
        from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_checker import response_checker, state_checker

        passed, incomplete, failures = 0, [], []
        for program, task in self.tasks.items():
            run = self.runs.get(program)
            if run is None or len(run.results) < len(task.ground_truth):
                incomplete.append(program)
                continue
            failure = _check_program(run, task, state_checker, response_checker)
            if failure is None:
                passed += 1
            else:
                failures.append({"program": program, **failure})
        return CheckReport(len(self.tasks), passed, incomplete, failures)


def _check_program(run: ProgramRun, task: BfclTask, state_checker: Any, response_checker: Any) -> dict | None:
    truth_instances = new_instances(task)
    model_results: list[str] = []
    for turn, truth_calls in enumerate(task.ground_truth):
        truth_results = execute([call for text in truth_calls for call in parse_calls(text)], truth_instances)
        model_results += run.results[turn]
        if not truth_calls:  # a turn the tools cannot serve: BFCL checks no state there
            continue
        state = state_checker(run.states[turn], truth_instances)
        if not state["valid"]:
            return {"turn": str(turn), "error": state["error_message"]}
        response = response_checker(model_results, truth_results, turn)
        if not response["valid"]:
            return {"turn": str(turn), "error": response["error_message"]}
    return None
