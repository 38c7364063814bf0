"""Checks on one node before it joins a workflow. Each returns ``Problem``s naming the node and field."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from plait.dag.errors import Problem
from plait.dag.json_types import accepts_schema, accepts_value, describe_types, json_type_of, schema_types
from plait.dag.nodes import LLMCall, Node, ToolCall, is_var_ref, var_refs
from plait.semantic_vars import GenConstraints, SemanticVarError

if TYPE_CHECKING:
    from plait.dag.workflow import Workflow

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*\Z")
VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
MAX_SAMPLES = 128


def check_node(
    workflow: Workflow, node: Node, *, known_variables: set[str], pending: Sequence[Node] = ()
) -> list[Problem]:
    """Everything wrong with ``node`` given the variables that exist (or will, for a whole workflow)."""
    problems: list[Problem] = []
    if not isinstance(node.id, str) or not _NAME.match(node.id):
        return [Problem(str(node.id), "id", "must start with a letter or _ and use letters, digits, _ . -")]
    if node.id in workflow.nodes or sum(other.id == node.id for other in pending) > 1:
        problems.append(Problem(node.id, "id", "another node has the same id"))
    problems.extend(_check_output(workflow, node, pending))
    if isinstance(node, LLMCall):
        shape = _check_bindings_shape(node)
        if shape:  # the inputs cannot even be listed
            return problems + shape
    for name in node.input_variables():
        if name not in known_variables:
            problems.append(
                Problem(
                    node.id,
                    input_field(node, name),
                    f"uses variable {name!r}, which no input or node defines (unbound variable)",
                )
            )
    producers = {other.output: other for other in pending}
    if isinstance(node, LLMCall):
        problems.extend(_check_llm_call(workflow, node, known_variables, producers))
    else:
        problems.extend(_check_tool_call(workflow, node, known_variables, producers))
    return problems


def input_field(node: Node, variable: str) -> str:
    """The field of ``node`` through which it consumes ``variable`` (what to fix when that input is wrong)."""
    if isinstance(node, ToolCall):
        args = node.args if isinstance(node.args, dict) else {}
        return next((f"args.{name}" for name, value in args.items() if variable in var_refs(value)), "args")
    for slot in node.prompt.slots:
        bound = node.slot_binding(slot)
        if variable == bound or (isinstance(bound, list) and variable in bound):
            return f"bindings.{slot}" if slot in node.bindings else ("messages" if node.is_chat else "prompt")
    return "prompt"


def _check_bindings_shape(node: LLMCall) -> list[Problem]:
    if not isinstance(node.bindings, dict):
        return [Problem(node.id, "bindings", "must map slot names to a variable name or a list of variable names")]
    return [
        Problem(node.id, f"bindings.{slot}", f"must be a variable name or a list of variable names, got {bound!r}")
        for slot, bound in node.bindings.items()
        if not (isinstance(bound, str) or (isinstance(bound, list) and all(isinstance(n, str) for n in bound)))
    ]


def _check_output(workflow: Workflow, node: Node, pending: Sequence[Node]) -> list[Problem]:
    if not isinstance(node.output, str) or not VARIABLE_NAME.match(node.output):
        return [Problem(node.id, "output", f"{node.output!r} is not a valid variable name (letters, digits, _)")]
    existing = workflow.variables.get(node.output)
    if existing is not None and existing.producer is None and existing.is_settled:
        return [Problem(node.id, "output", f"variable {node.output!r} is a workflow input; it cannot be produced")]
    if existing is not None and existing.producer is not None:
        return [Problem(node.id, "output", f"variable {node.output!r} already has a producer: {existing.producer!r}")]
    others = [other.id for other in pending if other.output == node.output and other.id != node.id]
    if others:
        return [
            Problem(node.id, "output", f"variable {node.output!r} has two producers: {node.id!r} and {others[0]!r}")
        ]
    return []


def _check_llm_call(
    workflow: Workflow, node: LLMCall, known_variables: set[str], producers: Mapping[str, Node]
) -> list[Problem]:
    problems = _check_constraints(node)
    slots = set(node.prompt.slots)
    for slot in node.bindings:
        if slot not in slots:
            problems.append(Problem(node.id, f"bindings.{slot}", f"the prompt has no {{{{{slot}}}}} slot"))
    if not (isinstance(node.n, int) and not isinstance(node.n, bool) and 1 <= node.n <= MAX_SAMPLES):
        problems.append(Problem(node.id, "n", f"must be an integer in [1, {MAX_SAMPLES}], got {node.n!r}"))
    if node.map_over is not None:
        bound = node.slot_binding(node.map_over)
        if node.map_over not in slots:
            problems.append(Problem(node.id, "map_over", f"the prompt has no {{{{{node.map_over}}}}} slot to map over"))
        elif isinstance(bound, list):
            problems.append(Problem(node.id, "map_over", "must name a slot bound to one variable holding a list"))
        elif bound in known_variables:
            schema = _variable_schema(workflow, bound, producers)
            if "array" not in schema_types(schema):
                problems.append(
                    Problem(
                        node.id,
                        "map_over",
                        f"variable {bound!r} holds {describe_types(schema)}, not a list to map over",
                    )
                )
        if node.n != 1:
            problems.append(Problem(node.id, "n", "a mapped call takes one sample per item (n must be 1)"))
    if node.constraints.choices is None and node.choice_mode.value == "score":
        problems.append(Problem(node.id, "choice_mode", "scoring needs 'choices'"))
    return problems


def _check_constraints(node: LLMCall) -> list[Problem]:
    """Every bad decoding field of ``node``: ``GenConstraints.validate`` names the first, so each one named is set
    back to its default and the rest checked again."""
    problems: list[Problem] = []
    constraints, defaults, cleared = node.constraints, GenConstraints(), set()
    while True:
        try:
            constraints.validate()
            return problems
        except SemanticVarError as error:
            problems.append(Problem(node.id, error.field, error.message))
            if error.field not in GenConstraints.__struct_fields__ or error.field in cleared:
                return problems  # its default does not clear it
            cleared.add(error.field)
            constraints = msgspec.structs.replace(constraints, **{error.field: getattr(defaults, error.field)})


def _check_tool_call(
    workflow: Workflow, node: ToolCall, known_variables: set[str], producers: Mapping[str, Node]
) -> list[Problem]:
    if workflow.tools is None:
        return []
    spec = workflow.tools.get(node.tool)
    if spec is None:
        known = ", ".join(sorted(workflow.tools)) or "none registered"
        return [Problem(node.id, "tool", f"unknown tool {node.tool!r} (known: {known})")]
    if not isinstance(node.args, dict):
        return [Problem(node.id, "args", "must be an object mapping parameter names to values")]
    problems = []
    for name in node.args:
        if name not in spec.properties:
            accepted = ", ".join(spec.properties) or "none"
            problems.append(Problem(node.id, f"args.{name}", f"tool {spec.name!r} has no such parameter ({accepted})"))
    for name in spec.required:
        if name not in node.args:
            problems.append(Problem(node.id, f"args.{name}", f"required by tool {spec.name!r} but not given"))
    root = spec.parameters  # where the ``$defs`` of parameter ``$ref``s live
    for name, value in node.args.items():
        param = spec.properties.get(name)
        if param is None:
            continue
        expected = describe_types(param, root)
        if is_var_ref(value):
            variable_name = value["$var"]
            schema = _variable_schema(workflow, variable_name, producers)
            if variable_name in known_variables and not accepts_schema(param, schema, root=root):
                problems.append(
                    Problem(
                        node.id,
                        f"args.{name}",
                        f"expects {expected}, but variable {variable_name!r} holds {describe_types(schema)}",
                    )
                )
        elif not accepts_value(param, value, root=root):
            # A list or object keeps its JSON type when the references inside it are substituted, so literals and
            # containers holding references are checked alike.
            problems.append(Problem(node.id, f"args.{name}", f"expects {expected}, got {json_type_of(value)}"))
    return problems


def _variable_schema(workflow: Workflow, name: str, producers: Mapping[str, Node]) -> dict[str, Any] | None:
    variable = workflow.variables.get(name)
    if variable is not None and variable.is_settled and variable.producer is None:
        return {"type": json_type_of(variable.value)}
    if variable is not None and variable.producer is not None:
        return variable.schema
    producer = producers.get(name)
    return workflow.output_schema(producer) if producer is not None else None


def check_outputs(workflow: Workflow, known_variables: set[str] | None = None) -> list[Problem]:
    """Outputs that name no variable. ``known_variables``: the variables that exist (default: the workflow's)."""
    known = set(workflow.variables) if known_variables is None else known_variables
    return [
        Problem(None, f"outputs[{index}]", f"{name!r} is not a variable of this workflow")
        for index, name in enumerate(workflow.outputs)
        if name not in known
    ]
