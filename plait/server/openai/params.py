"""From a validated OpenAI request body to what the engine runs: the prompt, ``SamplingParams`` and plait's hints.

``GenerationPlan`` also remembers how to talk back: which field names the client used (so an engine error on
``json_schema`` is reported on ``response_format``), whether tool calls are to be parsed, the stream options, and the
response headers that say what the server did not do as asked:

- ``X-Plait-Ignored-Fields: a, b``: top-level body fields plait does not know (ignored; a misspelt field shows here).
- ``X-Plait-Unenforced: format=currency at $.properties.price; ...``: JSON-schema ``format`` values the grammar cannot
  enforce, in ``response_format`` or a tool's parameters (with `` (tool NAME)``). ``format`` is an annotation by the
  JSON Schema spec: such a value is dropped from the schema the grammar compiles (the prompt still shows it to the
  model), and the rest of the schema is enforced. The location is a JSONPath into that schema.

Fields OpenAI defines but plait cannot honour are refused here with a 400 naming them, unless they are neutral.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from plait.engine import ENFORCED_FORMATS, InvalidRequestError, SamplingParams
from plait.server.errors import APIError
from plait.server.openai.messages import template_messages
from plait.server.openai.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    ResponseFormatJSONObject,
    ResponseFormatJSONSchema,
)

DEFAULT_MAX_TOKENS = 1024  # when the request gives none (OpenAI's "up to the context window" is unbounded on CPU)
MIN_TEMPERATURE = 1e-4
_SEED_MASK = (1 << 63) - 1  # OpenAI seeds are int64; the engine takes [0, 2**63)
IGNORED_FIELDS_HEADER = "X-Plait-Ignored-Fields"
UNENFORCED_HEADER = "X-Plait-Unenforced"
MAX_HEADER_ITEMS = 16  # names listed in one header; the rest are counted ("(+3 more)")
MAX_HEADER_NAME = 64  # characters of one name or format value; longer ones are cut ("...")
MAX_SCHEMA_DEPTH = 64  # nesting walked for formats; deeper subschemas are left to the engine's own check
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_.$-]+")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Keywords whose value is a subschema, a list of subschemas, or a map of names to subschemas (JSON Schema 2020-12 and
# draft 4-7 spellings). Values of any other keyword (``enum``, ``const``, ``default``, ``examples``...) are data.
_SUBSCHEMA = ("additionalProperties", "items", "contains", "propertyNames", "unevaluatedProperties",
              "unevaluatedItems", "additionalItems", "not", "if", "then", "else")  # fmt: skip
_SUBSCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems", "items")
_SUBSCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")


@dataclass
class GenerationPlan:
    endpoint: str  # "chat" | "completions"
    sampling: SamplingParams
    messages: list[dict[str, str]] | None = None
    prompt: str | None = None
    prompt_token_ids: list[int] | None = None
    requested_max_tokens: int | None = None  # None: DEFAULT_MAX_TOKENS, capped to the room the context leaves
    max_tokens_field: str = "max_tokens"
    deadline_s: float | None = None  # the request's own time limit (the server's max_request_time_s may be lower)
    tool_choice: str | dict[str, Any] | None = None  # set when the output is to be read for tool calls
    single_tool_call: bool = False
    json_answer: bool = False  # tool_choice auto with a JSON response_format: the output is calls or a JSON answer
    stream: bool = False
    include_usage: bool = False
    echo: bool = False
    program_id: str | None = None
    priority: int = 0
    hints: dict[str, Any] = field(default_factory=dict)
    field_names: dict[str, str] = field(default_factory=dict)  # engine field -> request field
    # Headers of the generation's response, whole or streamed (module docstring): what was ignored or unenforced.
    response_headers: dict[str, str] = field(default_factory=dict)

    @property
    def prompt_field(self) -> str:
        return "messages" if self.endpoint == "chat" else "prompt"

    def api_field(self, engine_field: str) -> str:
        """The request field an engine ``InvalidRequestError`` field corresponds to."""
        if engine_field.startswith("messages"):
            return engine_field
        if engine_field in ("prompt", "prompt_token_ids"):
            return self.prompt_field
        if engine_field == "max_tokens":
            return self.max_tokens_field
        return self.field_names.get(engine_field, engine_field)

    def error(self, exc: InvalidRequestError) -> APIError:
        return APIError(400, exc.message, field=self.api_field(exc.field))


def chat_plan(body: ChatCompletionRequest) -> GenerationPlan:
    _refuse_unsupported(body)
    if body.top_logprobs and not body.logprobs:
        raise APIError(400, "needs logprobs: true", field="top_logprobs")
    sampling = _sampling(body)
    sampling.logprobs = bool(body.logprobs)
    sampling.top_logprobs = body.top_logprobs or 0
    names = {"json_schema": "response_format", "json_object": "response_format"}
    unenforced: list[str] = []
    fmt = body.response_format
    if isinstance(fmt, ResponseFormatJSONSchema):
        sampling.json_schema = _enforceable_schema(fmt.json_schema.schema_, unenforced)
        names["json_schema"] = "response_format.json_schema.schema"
    elif isinstance(fmt, ResponseFormatJSONObject):
        sampling.json_object = True
    tool_choice: str | dict[str, Any] = "none"
    if body.tools:
        tool_choice = body.tool_choice or "auto"
        if not isinstance(tool_choice, str):
            tool_choice = tool_choice.model_dump()
        if tool_choice != "none":
            # A JSON response_format stays: the format of an answer that calls no tool (plait.engine.grammar).
            sampling.tools = [_enforceable_tool(t.model_dump(exclude_none=True), unenforced) for t in body.tools]
            sampling.tool_choice = tool_choice
            sampling.parallel_tool_calls = body.parallel_tool_calls is not False
    elif body.tool_choice not in (None, "none"):
        raise APIError(400, "needs tools", field="tool_choice")
    max_tokens, max_field = body.max_tokens, "max_tokens"
    if body.max_completion_tokens is not None:
        if max_tokens is not None and max_tokens != body.max_completion_tokens:
            raise APIError(400, "differs from max_tokens; give one of them", field="max_completion_tokens")
        max_tokens, max_field = body.max_completion_tokens, "max_completion_tokens"
    return GenerationPlan(
        endpoint="chat",
        sampling=sampling,
        messages=template_messages(body.messages, body.tools, tool_choice, body.parallel_tool_calls is not False),
        requested_max_tokens=max_tokens,
        max_tokens_field=max_field,
        tool_choice=tool_choice if sampling.tools else None,
        single_tool_call=body.parallel_tool_calls is False,
        json_answer=tool_choice == "auto" and (sampling.json_schema is not None or sampling.json_object),
        field_names=names,
        response_headers=_response_headers(body, unenforced),
        **_common(body),
    )


def completion_plan(body: CompletionRequest) -> GenerationPlan:
    _refuse_unsupported(body)
    if body.suffix:
        raise APIError(400, "is not supported", field="suffix")
    if body.best_of is not None and body.best_of not in (1, body.n):
        raise APIError(400, "only best_of equal to n is supported (every sample is returned)", field="best_of")
    if body.echo and body.logprobs is not None:
        raise APIError(400, "echo with logprobs is not supported (prompt log-probabilities)", field="echo")
    sampling = _sampling(body)
    if body.logprobs is not None:
        sampling.logprobs = True
        sampling.top_logprobs = body.logprobs
    prompt = body.prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str | list):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str) and not prompt:
        raise APIError(400, "must be a non-empty string", field="prompt")
    return GenerationPlan(
        endpoint="completions",
        sampling=sampling,
        prompt=prompt if isinstance(prompt, str) else None,
        prompt_token_ids=list(prompt) if isinstance(prompt, list) else None,  # type: ignore[arg-type]
        requested_max_tokens=body.max_tokens,
        echo=body.echo,
        field_names={"top_logprobs": "logprobs"},
        response_headers=_response_headers(body, []),
        **_common(body),
    )


def _sampling(body: ChatCompletionRequest | CompletionRequest) -> SamplingParams:
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    return SamplingParams(
        temperature=_temperature(body.temperature),
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=body.top_k or 0,
        min_p=body.min_p or 0.0,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        seed=None if body.seed is None else body.seed & _SEED_MASK,
        stop=stop,
        n=body.n,
        ignore_eos=body.ignore_eos,
    )


def _temperature(value: float | None) -> float:
    if value is None:
        return 1.0
    # Below this, dividing the logits overflows to inf (NaN probabilities); the result is greedy anyway.
    return value if value >= MIN_TEMPERATURE else 0.0


def _common(body: ChatCompletionRequest | CompletionRequest) -> dict[str, Any]:
    hints = dict(body.hints or {})
    return {
        "stream": body.stream,
        "include_usage": bool(body.stream and body.stream_options and body.stream_options.include_usage),
        "program_id": body.program_id,
        "priority": body.priority or 0,
        "hints": hints,
        "deadline_s": body.deadline_s,
    }


def _refuse_unsupported(body: ChatCompletionRequest | CompletionRequest) -> None:
    if body.logit_bias:
        raise APIError(400, "is not supported (only an empty map)", field="logit_bias")


# ---- what the response tells about the request ---------------------------------------------------------------------


def _response_headers(body: ChatCompletionRequest | CompletionRequest, unenforced: list[str]) -> dict[str, str]:
    ignored = list(body.ignored_fields)
    if body.stream_options is not None:
        ignored += [f"stream_options.{name}" for name in body.stream_options.ignored_fields]
    headers = {}
    if ignored:
        headers[IGNORED_FIELDS_HEADER] = _header_list([_header_name(name) for name in ignored], ", ")
    if unenforced:
        headers[UNENFORCED_HEADER] = _header_list(unenforced, "; ")
    return headers


def ignored_fields_headers(names: list[str]) -> dict[str, str]:
    """The ``X-Plait-Ignored-Fields`` header naming ``names`` (none when empty), for the bodies of other APIs."""
    return {IGNORED_FIELDS_HEADER: _header_list([_header_name(name) for name in names], ", ")} if names else {}


def _header_list(items: list[str], separator: str) -> str:
    shown = separator.join(items[:MAX_HEADER_ITEMS])
    return shown if len(items) <= MAX_HEADER_ITEMS else f"{shown}{separator}(+{len(items) - MAX_HEADER_ITEMS} more)"


def _header_name(name: str) -> str:
    """``name`` as it can stand in a header list: as is when plain, else as a JSON string (quoted, ASCII escapes), so
    that no name can break the header or its list; cut to ``MAX_HEADER_NAME`` characters."""
    if len(name) > MAX_HEADER_NAME:
        name = name[:MAX_HEADER_NAME] + "..."
    return name if _PLAIN_NAME.fullmatch(name) else _json_string(name)


def _json_string(text: str) -> str:
    """``text`` as a JSON string of visible ASCII characters only (what an HTTP header value may hold)."""
    return json.dumps(text).replace("\x7f", "\\u007f")


def _enforceable_tool(tool: dict[str, Any], unenforced: list[str]) -> dict[str, Any]:
    """``tool`` (an OpenAI function tool, dumped) with its parameter schema made enforceable (see below)."""
    function = tool.get("function") or {}
    if not isinstance(function.get("parameters"), dict):
        return tool
    notes: list[str] = []
    parameters = _enforceable_schema(function["parameters"], notes)
    unenforced += [f"{note} (tool {_header_name(str(function.get('name')))})" for note in notes]
    return {**tool, "function": {**function, "parameters": parameters}}


def _enforceable_schema(schema: dict[str, Any], unenforced: list[str]) -> dict[str, Any]:
    """``schema`` without the ``format`` values the grammar cannot enforce (a copy where any is dropped; the caller's
    dict is never changed); appends ``format=VALUE at JSONPATH`` to ``unenforced`` for each one dropped."""
    return _drop_formats(schema, "$", unenforced, 0)


def _drop_formats(schema: Any, path: str, unenforced: list[str], depth: int) -> Any:
    """``_enforceable_schema`` of the subschema at ``path``: ``schema`` itself when nothing under it changes."""
    if not isinstance(schema, dict) or depth > MAX_SCHEMA_DEPTH:
        return schema
    changed: dict[str, Any] = {}
    fmt = schema.get("format")
    if isinstance(fmt, str) and fmt not in ENFORCED_FORMATS:
        changed["format"] = None
        unenforced.append(f"format={_header_name(fmt)} at {_header_path(path)}")
    for key, value in schema.items():
        if key in _SUBSCHEMA and not isinstance(value, list):
            new: Any = _drop_formats(value, f"{path}.{key}", unenforced, depth + 1)
        elif key in _SUBSCHEMA_LISTS and isinstance(value, list):
            new = [_drop_formats(sub, f"{path}.{key}[{i}]", unenforced, depth + 1) for i, sub in enumerate(value)]
            new = value if all(a is b for a, b in zip(new, value, strict=True)) else new
        elif key in _SUBSCHEMA_MAPS and isinstance(value, dict):
            new = {
                name: _drop_formats(sub, f"{path}.{key}{_path_member(str(name))}", unenforced, depth + 1)
                for name, sub in value.items()
            }
            new = value if all(new[name] is sub for name, sub in value.items()) else new
        else:
            continue
        if new is not value:
            changed[key] = new
    if not changed:
        return schema
    return {key: changed.get(key, value) for key, value in schema.items() if not (key == "format" and key in changed)}


def _path_member(name: str) -> str:
    """A JSONPath member: ``.name`` for identifiers, else ``["name"]`` (ASCII-escaped)."""
    return f".{name}" if _IDENTIFIER.fullmatch(name) else f"[{_json_string(name)}]"


def _header_path(path: str) -> str:
    """``path`` cut to a header-friendly length (its end, which names the subschema, is kept)."""
    return path if len(path) <= 4 * MAX_HEADER_NAME else "..." + path[-4 * MAX_HEADER_NAME :]
