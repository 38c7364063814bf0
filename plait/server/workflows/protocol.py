"""Request bodies of the workflow routes (msgspec), their parsing into precise 4xx errors, and their OpenAPI schemas.

``POST /v1/workflows`` takes an envelope: ``{"workflow": <WorkflowSpec>, "inputs": {...}, "client_tools": [...],
"fail_fast": true, "priority": 0, "deadline_s": null, "open": false}``; a bare ``WorkflowSpec`` (a body with
``nodes`` at the top level) is accepted too, with every option at its default. Errors name the field: envelope
fields by name (``client_tools[0].timeout_s``), workflow problems by node and field as ``plait.dag`` reports them.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, TypeVar

import msgspec
from fastapi import Request

from plait.dag import LLMCallSpec, Problem, ToolCallSpec, WorkflowError, WorkflowSpec, decode_workflow
from plait.server.errors import APIError

T = TypeVar("T")


class ClientToolDecl(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A tool the caller runs (see ``client_tools.py``). ``parameters``: a JSON schema object (``properties``,
    ``required``), by default no parameters; ``returns``: the result's JSON schema (None: anything)."""

    name: str
    parameters: dict[str, Any] = msgspec.field(default_factory=lambda: {"type": "object", "properties": {}})
    returns: dict[str, Any] | None = None
    description: str = ""
    timeout_s: float | None = None  # None: the server's client_tool_timeout_s (also the most it allows)


# One meaning per word, in every API: a lower priority runs first; a deadline ends the work when it passes.
PRIORITY_DOC = (
    "Lower runs first (as everywhere in plait: the engine, the OpenAI API, plait.Runtime); equal priorities are "
    "ordered by the planner (program FCFS by default)."
)
DEADLINE_DOC = (
    "Seconds from submission by which the workflow must finish: the server cancels it when it runs longer (its "
    "status says so)."
)


class SubmissionOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """How to run a submitted workflow."""

    inputs: dict[str, Any] = msgspec.field(default_factory=dict)  # override or add to the workflow's own inputs
    client_tools: list[ClientToolDecl] = msgspec.field(default_factory=list)
    fail_fast: bool = True  # a node failing without a fallback fails the workflow at once
    priority: Annotated[int, msgspec.Meta(description=PRIORITY_DOC)] = 0
    deadline_s: Annotated[float | None, msgspec.Meta(description=DEADLINE_DOC)] = None
    # An open workflow keeps running when its nodes are done: more nodes are added with POST .../nodes and it ends
    # with POST .../close (how plait.Client runs Python programs, whose graph grows as they branch).
    open: bool = False


class WorkflowSubmission(SubmissionOptions, kw_only=True, forbid_unknown_fields=True):
    """The body of ``POST /v1/workflows`` (documentation; parsed in two steps by ``parse_submission``)."""

    workflow: WorkflowSpec


class NodeBatch(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The body of ``POST /v1/workflows/{id}/nodes``: nodes added in order (a node may consume the outputs of
    those before it), new input variables, and client tools the new nodes call. All or nothing."""

    nodes: list[LLMCallSpec | ToolCallSpec]
    inputs: dict[str, Any] = msgspec.field(default_factory=dict)
    client_tools: list[ClientToolDecl] = msgspec.field(default_factory=list)


class ToolResult(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The body of ``POST /v1/workflows/{id}/tool_results``: exactly one of ``result`` and ``error``."""

    node: str
    result: Any = msgspec.UNSET
    error: str | None = None


class CloseRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The body of ``POST /v1/workflows/{id}/close`` (optional): ``error`` ends the workflow as failed with it."""

    error: str | None = None


class WorkflowRejected(APIError):
    """422 listing every problem of a workflow: ``{"error": {..., "problems": [{"node", "field", "message"}]}}``."""

    def __init__(self, problems: list[Problem]) -> None:
        first = problems[0]
        count = len(problems)
        super().__init__(
            422, str(WorkflowError(problems)) if count > 1 else f"invalid workflow: {first}", field=first.field
        )
        self.problems = problems

    def body(self) -> dict[str, Any]:
        body = super().body()
        body["error"]["problems"] = [{"node": p.node, "field": p.field, "message": p.message} for p in self.problems]
        return body


async def read_json(request: Request) -> Any:
    """The decoded JSON body (400 when it is empty or not JSON)."""
    raw = await request.body()
    if not raw.strip():
        raise APIError(400, "the request body is empty; send a JSON object", field="body")
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError as error:
        raise APIError(400, f"the request body is not valid JSON: {error}", field="body") from None


def convert(raw: Any, kind: type[T]) -> T:
    """``raw`` as ``kind``; a 422 naming the offending field otherwise."""
    if not isinstance(raw, dict):
        raise APIError(422, f"expected a JSON object, got {type(raw).__name__}", field="body")
    try:
        return msgspec.convert(raw, kind)
    except msgspec.ValidationError as error:
        field = _error_path(str(error))
        raise APIError(422, f"{field}: {error}", field=field) from None


def parse_submission(raw: Any) -> tuple[WorkflowSpec, SubmissionOptions]:
    """The workflow and the options of a ``POST /v1/workflows`` body (envelope or bare spec)."""
    if isinstance(raw, dict) and "workflow" not in raw and "nodes" in raw:
        return _decode_spec(raw), SubmissionOptions()
    if not isinstance(raw, dict) or "workflow" not in raw:
        raise APIError(
            422, "the body needs a 'workflow' (a workflow spec) or the spec itself (with 'nodes')", field="workflow"
        )
    fields = dict(raw)
    spec = _decode_spec(fields.pop("workflow"))
    options = convert(fields, SubmissionOptions)
    if options.inputs:
        spec.inputs = {**spec.inputs, **options.inputs}
    return spec, options


def _decode_spec(raw: Any) -> WorkflowSpec:
    if not isinstance(raw, dict):
        raise APIError(422, f"'workflow' must be a JSON object, got {type(raw).__name__}", field="workflow")
    try:
        return decode_workflow(raw)
    except WorkflowError as error:
        raise WorkflowRejected(error.problems) from None


_UNKNOWN_OR_MISSING = re.compile(r"Object (?:contains unknown|missing required) field `([^`]*)`")


def _error_path(message: str) -> str:
    """``Expected `int`, got `str` - at `$.client_tools[0].timeout_s``` -> ``client_tools[0].timeout_s``; for a
    missing or unknown field, its name is appended to the object's path."""
    path = message.split("at `$", 1)[1].split("`", 1)[0].lstrip(".") if "at `$" in message else ""
    named = _UNKNOWN_OR_MISSING.match(message)
    if named:
        path = f"{path}.{named.group(1)}" if path else named.group(1)
    return path or "body"


def estimate_tokens(nodes: list[LLMCallSpec | ToolCallSpec], inputs: dict[str, Any]) -> int:
    """A rough admission reservation: prompt text (about 4 characters a token) plus ``max_tokens`` per sample.
    Mapped calls count once (their list is not known before they run)."""
    chars = len(json.dumps(inputs, default=str)) if inputs else 0
    tokens = 0
    for spec in nodes:
        if isinstance(spec, LLMCallSpec):
            chars += len(spec.prompt or "") + sum(len(m.content) for m in spec.messages or [])
            tokens += spec.max_tokens * max(1, spec.n)
    return tokens + chars // 4


def openapi_body(kind: type, pointer: str, description: str) -> dict[str, Any]:
    """``openapi_extra`` documenting a msgspec body. ``pointer``: the JSON pointer of the operation (its ``$defs``
    are kept inline, so their ``$ref``s point inside the operation: valid in any OpenAPI reader)."""
    where = f"#/paths/{pointer}/requestBody/content/application~1json/schema/$defs/"
    template = where.replace("{", "{{").replace("}", "}}") + "{name}"
    (schema,), components = msgspec.json.schema_components([kind], ref_template=template)
    body = dict(components.pop(schema["$ref"].rsplit("/", 1)[-1])) if "$ref" in schema else dict(schema)
    if components:
        body["$defs"] = components
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {"application/json": {"schema": body}},
        }
    }


def path_pointer(path: str, method: str) -> str:
    """The JSON pointer of ``path`` + ``method`` under ``#/paths`` (``/`` escaped as ``~1``)."""
    return path.replace("~", "~0").replace("/", "~1") + "/" + method
