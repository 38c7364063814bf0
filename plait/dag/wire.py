"""The JSON wire format of workflows (msgspec), versioned, with a JSON Schema export for REST users.

```json
{"version": 1, "name": "qa",
 "inputs": {"question": "What is 2+2?"},
 "nodes": [
   {"kind": "llm", "id": "answer", "prompt": "Q: {{question}}\\nA:", "output": "reply", "max_tokens": 16},
   {"kind": "tool", "id": "log", "tool": "save", "args": {"text": {"$var": "reply"}}, "output": "saved"}],
 "outputs": ["reply"]}
```
An LLM node takes ``prompt`` (a template) or ``messages`` (chat, each content a template), plus the decoding
fields of ``GenConstraints`` at the top level. A tool node's ``args`` use ``{"$var": name}`` for variables.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

import msgspec

from plait.dag.errors import Problem, WorkflowError
from plait.dag.nodes import ChoiceMode, LLMCall, Node, OnError, ToolCall
from plait.dag.tool_spec import ToolSpec
from plait.dag.workflow import Workflow
from plait.semantic_vars import ChatPrompt, GenConstraints, SemanticVarError, Template

WIRE_VERSION = 1


class MessageSpec(msgspec.Struct, forbid_unknown_fields=True):
    role: str
    content: str


class LLMCallSpec(GenConstraints, tag="llm", tag_field="kind"):
    """An LLM call: exactly one of ``prompt`` or ``messages``; decoding fields as in ``GenConstraints``."""

    id: str
    output: str
    prompt: str | None = None
    messages: list[MessageSpec] | None = None
    bindings: dict[str, str | list[str]] = msgspec.field(default_factory=dict)
    n: int = 1
    map_over: str | None = None
    choice_mode: Literal["constrained", "score"] = "constrained"
    on_error: Literal["fail", "fallback"] = "fail"
    fallback: Any = None


class ToolCallSpec(
    msgspec.Struct, tag="tool", tag_field="kind", kw_only=True, omit_defaults=True, forbid_unknown_fields=True
):
    """A tool call; ``args`` values may contain ``{"$var": name}`` references."""

    id: str
    tool: str
    output: str
    args: dict[str, Any] = msgspec.field(default_factory=dict)
    on_error: Literal["fail", "fallback"] = "fail"
    fallback: Any = None


class WorkflowSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A whole workflow. ``outputs`` defaults to the variables no node consumes."""

    nodes: list[LLMCallSpec | ToolCallSpec]
    version: int = WIRE_VERSION
    name: str = "workflow"
    inputs: dict[str, Any] = msgspec.field(default_factory=dict)
    outputs: list[str] = msgspec.field(default_factory=list)


class _Versioned(msgspec.Struct):
    """Just the version of a document: read first, so a newer document fails on its version, not on new fields."""

    version: int = WIRE_VERSION


def decode_workflow(data: bytes | str | Mapping[str, Any]) -> WorkflowSpec:
    """Parse JSON text (or an already-decoded object) into a ``WorkflowSpec``.

    Raises ``WorkflowError`` listing every field of the document that has a wrong type, is unknown or is missing, in
    every node, each by its JSON path (``nodes[1].max_tokens``); a document that is not JSON, not an object or of
    another version fails on that alone."""
    spec, problems, _ = _decode(data)
    if problems:
        raise WorkflowError(problems)
    return spec


def load_workflow(
    data: bytes | str | Mapping[str, Any],
    tools: Mapping[str, ToolSpec] | None = None,
    *,
    inputs: Mapping[str, Any] | None = None,
) -> Workflow:
    """Decode a document and build its workflow (``inputs`` override or add to its own), reporting every problem at
    once: the fields ``decode_workflow`` rejects and what ``to_workflow`` finds in the graph of the rest.

    A node with a field it rejects takes part in the graph checks only as the producer of its ``output`` (of any
    type), named by its JSON path (``nodes[2]``): checks of its other fields would read values it does not have, and
    its consumers are checked against a producer that exists. Its own graph problems show once its fields decode."""
    spec, problems, stand_ins = _decode(data)
    if inputs:
        spec.inputs = {**spec.inputs, **inputs}
    try:
        workflow = to_workflow(spec, tools)
    except WorkflowError as error:
        problems.extend(p for p in error.problems if p.node not in stand_ins)
    if problems:
        raise WorkflowError(problems)
    return workflow


def _decode(data: bytes | str | Mapping[str, Any]) -> tuple[WorkflowSpec, list[Problem], set[str]]:
    """The spec of a document, the problems of its fields and the ids of the stand-ins for its rejected nodes."""
    try:
        if isinstance(data, Mapping):
            version = msgspec.convert(data, _Versioned).version
        else:
            version = msgspec.json.decode(data, type=_Versioned).version
    except msgspec.ValidationError as error:  # not an object, or a version of the wrong type
        raise WorkflowError([Problem(None, _json_path(str(error)), str(error))]) from None
    except msgspec.DecodeError as error:
        raise WorkflowError([Problem(None, "body", f"not valid JSON: {error}")]) from None
    if version != WIRE_VERSION:
        raise WorkflowError(
            [Problem(None, "version", f"unsupported version {version}; this plait reads {WIRE_VERSION}")]
        )
    try:
        if isinstance(data, Mapping):
            return msgspec.convert(data, WorkflowSpec), [], set()
        return msgspec.json.decode(data, type=WorkflowSpec), [], set()
    except msgspec.ValidationError:
        pass  # msgspec stops at the first bad value: decode again field by field to find them all
    document = data if isinstance(data, Mapping) else msgspec.json.decode(data)
    problems: list[Problem] = []
    fields = _convert_fields(document, WorkflowSpec, "", problems, skip=("version", "nodes"))
    nodes: list[LLMCallSpec | ToolCallSpec] = []
    stand_ins: set[str] = set()
    if "nodes" not in document:
        problems.append(Problem(None, "nodes", "Object missing required field `nodes`"))
    elif not isinstance(document["nodes"], list | tuple):
        problems.append(_type_problem("nodes", document["nodes"], "array", list))
    else:
        for index, item in enumerate(document["nodes"]):
            node = _decode_node(item, index, problems)
            if node is not None:
                nodes.append(node)
                if isinstance(node, ToolCallSpec) and node.tool == _STAND_IN_TOOL:
                    stand_ins.add(node.id)
    return WorkflowSpec(nodes=nodes, **fields), problems, stand_ins


_NODE_KINDS: dict[str, type[LLMCallSpec] | type[ToolCallSpec]] = {"llm": LLMCallSpec, "tool": ToolCallSpec}
_STAND_IN_TOOL = "<a node whose fields did not decode>"


def _decode_node(item: Any, index: int, problems: list[Problem]) -> LLMCallSpec | ToolCallSpec | None:
    """Node ``index`` of a document; when a field is rejected, a stand-in producing its output (its id is the
    node's JSON path, which no node id can be); None when it is not even an object."""
    path = f"nodes[{index}]"
    if not isinstance(item, Mapping):
        problems.append(_type_problem(path, item, "object", dict))
        return None
    found = len(problems)
    kind = item.get("kind")
    spec_type = _NODE_KINDS.get(kind) if isinstance(kind, str) else None
    if "kind" not in item:
        problems.append(Problem(None, f"{path}.kind", "Object missing required field `kind`"))
    elif spec_type is None:
        problems.append(Problem(None, f"{path}.kind", f"Invalid value {kind!r}: a node's kind is 'llm' or 'tool'"))
    if spec_type is not None:
        fields = _convert_fields(item, spec_type, path, problems, skip=("kind",))
        if len(problems) == found:
            return spec_type(**fields)
    output = item.get("output")
    return ToolCallSpec(id=path, tool=_STAND_IN_TOOL, output=output if isinstance(output, str) else f"{path}.output")


def _convert_fields(
    document: Mapping[str, Any], struct: type, path: str, problems: list[Problem], *, skip: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Each field of ``document`` converted to its type in ``struct`` (names in ``skip`` left to the caller); a
    field of the wrong type, unknown or missing is a problem at its path and is left out."""
    fields = {field.name: field for field in msgspec.structs.fields(struct)}
    values: dict[str, Any] = {}
    for name, value in document.items():
        if name in skip:
            continue
        where = f"{path}.{name}" if path else name
        field = fields.get(name)
        if field is None:
            problems.append(Problem(None, where, f"Object contains unknown field `{name}`"))
            continue
        try:
            values[name] = msgspec.convert(value, field.type)
        except msgspec.ValidationError as error:
            problems.append(_located(where, str(error)))
    for name, field in fields.items():
        if field.required and name not in document and name not in skip:
            problems.append(
                Problem(None, f"{path}.{name}" if path else name, f"Object missing required field `{name}`")
            )
    return values


def _type_problem(path: str, value: Any, expected: str, python_type: type) -> Problem:
    """``value`` at ``path`` is not the JSON ``expected`` (msgspec's words for what it is)."""
    try:
        msgspec.convert(value, python_type)
    except msgspec.ValidationError as error:
        return _located(path, str(error))
    return Problem(None, path, f"Expected `{expected}`, got `{type(value).__name__}`")


def _located(path: str, message: str) -> Problem:
    """A msgspec error about a value at ``path``: its own path below that value appended, the message kept."""
    inner = _json_path(message)
    if inner == "body":
        where = path
    elif inner.startswith("["):
        where = f"{path}{inner}"
    else:
        where = f"{path}.{inner}"
    return Problem(None, where, message.split(" - at `$", 1)[0])


_FIELD_ERROR = re.compile(r"Object (?:contains unknown|missing required) field `([^`]*)`")


def _json_path(message: str) -> str:
    """The dotted path of the value msgspec complains about (``nodes[0].max_tokens``); ``body`` for the root.

    For an unknown or missing field, msgspec gives the path of the object; the field's name is appended.
    """
    marker = "at `$"
    path = message.split(marker, 1)[1].split("`", 1)[0].lstrip(".") if marker in message else ""
    field = _FIELD_ERROR.match(message)
    if field:
        path = f"{path}.{field.group(1)}" if path else field.group(1)
    return path or "body"


def to_workflow(spec: WorkflowSpec, tools: Mapping[str, ToolSpec] | None = None) -> Workflow:
    """Build and validate the workflow a spec describes (raises ``WorkflowError`` listing every problem)."""
    nodes: list[Node] = []
    problems: list[Problem] = []
    for index, node_spec in enumerate(spec.nodes):
        try:
            nodes.append(node_from_spec(node_spec))
        except SemanticVarError as error:
            problems.append(Problem(node_spec.id or f"nodes[{index}]", error.field, error.message))
    if problems:
        raise WorkflowError(problems)
    return Workflow.build(nodes, inputs=spec.inputs, outputs=spec.outputs, name=spec.name, tools=tools)


def node_from_spec(spec: LLMCallSpec | ToolCallSpec) -> Node:
    """The node a spec describes (not yet checked against a workflow); raises ``SemanticVarError`` naming the
    field for a malformed prompt or decoding settings."""
    if isinstance(spec, ToolCallSpec):
        return ToolCall(spec.id, spec.tool, spec.output, dict(spec.args), OnError(spec.on_error), spec.fallback)
    if (spec.prompt is None) == (spec.messages is None):
        raise SemanticVarError("prompt", "give exactly one of 'prompt' (text) or 'messages' (chat)")
    prompt: Template | ChatPrompt
    if spec.prompt is not None:
        try:
            prompt = Template(spec.prompt)
        except SemanticVarError as error:
            raise SemanticVarError("prompt", error.message) from None
    else:
        prompt = ChatPrompt.from_dicts([{"role": m.role, "content": m.content} for m in spec.messages or []])
    constraints = msgspec.convert(
        {name: getattr(spec, name) for name in GenConstraints.__struct_fields__}, GenConstraints
    )
    return LLMCall(
        spec.id,
        prompt,
        spec.output,
        bindings=dict(spec.bindings),
        constraints=constraints,
        n=spec.n,
        map_over=spec.map_over,
        choice_mode=ChoiceMode(spec.choice_mode),
        on_error=OnError(spec.on_error),
        fallback=spec.fallback,
    )


def from_workflow(workflow: Workflow) -> WorkflowSpec:
    """The wire form of a workflow (for example one a Python program built), inputs included."""
    inputs = {name: var.value for name, var in workflow.variables.items() if var.producer is None and var.is_settled}
    nodes = [node_spec(node) for node in workflow.nodes.values()]
    return WorkflowSpec(nodes=nodes, name=workflow.name, inputs=inputs, outputs=list(workflow.outputs))


def node_spec(node: Node) -> LLMCallSpec | ToolCallSpec:
    """The wire form of one node (what a client sends to grow a running program)."""
    if isinstance(node, ToolCall):
        return ToolCallSpec(
            id=node.id,
            tool=node.tool,
            output=node.output,
            args=node.args,
            on_error=node.on_error.value,
            fallback=node.fallback,
        )
    prompt_fields: dict[str, Any] = (
        {"prompt": node.prompt.text}
        if isinstance(node.prompt, Template)
        else {"messages": [MessageSpec(m.role, m.content.text) for m in node.prompt.messages]}
    )
    return LLMCallSpec(
        id=node.id,
        output=node.output,
        bindings=node.bindings,
        n=node.n,
        map_over=node.map_over,
        choice_mode=node.choice_mode.value,
        on_error=node.on_error.value,
        fallback=node.fallback,
        **prompt_fields,
        **msgspec.structs.asdict(node.constraints),
    )


def encode_workflow(workflow: Workflow | WorkflowSpec) -> bytes:
    spec = from_workflow(workflow) if isinstance(workflow, Workflow) else workflow
    return msgspec.json.encode(spec)


def workflow_json_schema() -> dict[str, Any]:
    """JSON Schema of the wire format (for REST clients and the OpenAPI spec)."""
    return msgspec.json.schema(WorkflowSpec)
