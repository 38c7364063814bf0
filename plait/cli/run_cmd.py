"""``plait run WORKFLOW.json``: run a JSON workflow on the embedded engine with a live view of its graph."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from plait.cli.engine_args import (
    add_engine_arguments,
    add_plan_argument,
    checked_engine_config,
    plan_from_args,
    print_plan,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run a JSON workflow and print its outputs",
        description=(
            "Run a workflow (plait's JSON wire format) on the embedded engine, showing each node's progress, then "
            "print the output variables. `plait run --schema` prints the wire format's JSON Schema."
        ),
    )
    parser.add_argument("workflow", nargs="?", type=Path, help="workflow JSON file ('-' reads stdin)")
    parser.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set an input variable (VALUE is parsed as JSON when it is valid JSON, else taken as text); repeatable",
    )
    parser.add_argument(
        "--tools",
        action="append",
        default=[],
        metavar="MODULE:ATTR",
        help="register tools: a module (or .py file) and an attribute holding a tool, a function or a list of them",
    )
    parser.add_argument("--json", action="store_true", help="print only the outputs, as JSON, to stdout")
    parser.add_argument("--status", action="store_true", help="also print per-node states and timings as JSON")
    parser.add_argument("--quiet", action="store_true", help="no live progress view")
    parser.add_argument("--schema", action="store_true", help="print the workflow JSON Schema and exit")
    add_plan_argument(parser, served=True)
    add_engine_arguments(parser)
    parser.set_defaults(handler=run)


def parse_inputs(pairs: list[str]) -> dict[str, Any]:
    inputs: dict[str, Any] = {}
    for pair in pairs:
        name, separator, raw = pair.partition("=")
        if not separator or not name:
            raise SystemExit(f"error: --input expects NAME=VALUE, got {pair!r}")
        try:
            inputs[name] = json.loads(raw)
        except json.JSONDecodeError:
            inputs[name] = raw
    return inputs


def load_tools(references: list[str]) -> list[Any]:
    """Import every ``module:attr`` (or ``path/file.py:attr``) and flatten lists of tools."""
    from plait.runtime.tool_loading import load_tools as load

    try:
        return load(references)
    except ValueError as error:
        raise SystemExit(f"error: --tools: {error}") from None


def run(args: argparse.Namespace) -> int:
    from plait.dag import WorkflowError, load_workflow, workflow_json_schema

    if args.schema:
        print(json.dumps(workflow_json_schema(), indent=2))
        return 0
    if args.workflow is None:
        print("error: give a workflow JSON file (or --schema)", file=sys.stderr)
        return 2
    try:
        data = sys.stdin.buffer.read() if str(args.workflow) == "-" else args.workflow.read_bytes()
    except OSError as error:
        print(f"error: cannot read {args.workflow}: {error}", file=sys.stderr)
        return 2
    inputs = parse_inputs(args.input)
    tools = load_tools(args.tools)
    # Everything that can be checked without the model is, before it loads: the workflow (fields, graph, tool
    # arguments against the tools given) and the engine settings.
    try:
        workflow = load_workflow(data, tool_specs(tools), inputs=inputs)
    except WorkflowError as error:
        print(f"error: {args.workflow}: {error}", file=sys.stderr)
        return 2
    config = checked_engine_config(args)
    try:
        plan = plan_from_args(args)
    except ValueError as error:
        print(f"error: --plan {error}", file=sys.stderr)
        return 2
    return asyncio.run(_run(workflow, tools, config, plan, args))


def tool_specs(tools: list[Any]) -> dict[str, Any]:
    """The specs of ``tools`` by name, as the runtime will register them (none given: an empty registry)."""
    if not tools:
        return {}
    from plait.runtime import ToolDefinitionError, ToolRegistry

    try:
        return ToolRegistry(tools).specs()
    except ToolDefinitionError as error:
        raise SystemExit(f"error: --tools: {error}") from None


async def _run(workflow: Any, tools: list[Any], config: Any, plan: Any, args: argparse.Namespace) -> int:
    from plait.cli.program_view import watch
    from plait.engine import EngineError
    from plait.runtime import ProgramCancelledError, ProgramFailedError
    from plait.sdk import Runtime

    try:
        runtime = Runtime(config, tools=tools, plan=plan)
        execution = runtime.start_workflow(workflow)
        if not args.json:
            print_plan(plan, runtime.engine.policy)
    except EngineError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    try:
        outputs = await (execution.wait() if args.quiet or args.json else watch(execution))
        code = 0
    except (ProgramFailedError, ProgramCancelledError) as error:
        print(f"error: {error}", file=sys.stderr)
        outputs, code = None, 1
    finally:
        runtime.close()
    if args.status:
        print(json.dumps(execution.status(), indent=2), file=sys.stderr)
    if outputs is not None:
        if args.json:
            print(json.dumps(outputs, ensure_ascii=False))
        else:
            for name, value in outputs.items():
                shown = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
                print(f"{name}: {shown}")
    return code
