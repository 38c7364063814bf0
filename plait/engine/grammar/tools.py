"""Tool calls: the output format the grammar enforces for declared functions, and the parser that reads it back.

Format (documented for the REST layer and prompts). A call is
``<tool_call>{"name": <a declared function name>, "arguments": <an object valid for its parameters>}</tool_call>``
(the Hermes / Qwen2.5 convention, which is also how earlier calls are shown to the model in a conversation):

- ``tool_choice="required"``: the whole output is one or more calls, one per line (``parallel_tool_calls``, the
  default: an agent that needs two tools in a turn gets both); exactly one call with ``parallel_tool_calls=False``.
- ``tool_choice="auto"``: free text, in which the model may write calls; once it writes ``<tool_call>``, the call up
  to ``</tool_call>`` is constrained to the declared functions and their argument schemas. Any number of calls with
  ``parallel_tool_calls``; with ``parallel_tool_calls=False`` the output ends after the first call.
- ``{"type": "function", "function": {"name": N}}``: the whole output is one bare JSON call object
  ``{"name": N, "arguments": {...}}`` (exactly one call of N).
- ``tool_choice="none"``: tools impose nothing; the output is free text.

``parse_tool_calls(text, tool_choice)`` returns the content and the calls, ready to become OpenAI ``tool_calls``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from plait.engine.errors import InvalidRequestError

TOOL_CALL_BEGIN = "<tool_call>"
TOOL_CALL_END = "</tool_call>"
CALL_SEPARATOR = "\n"  # between the calls of a required output
_OPEN_OBJECT = {"type": "object"}  # a function without a parameters schema takes any JSON object


@dataclass
class ToolCall:
    name: str
    arguments: dict[str, Any]


@dataclass
class ParsedToolOutput:
    content: str  # the text outside tool calls ("" when the whole output was a call)
    tool_calls: list[ToolCall] = field(default_factory=list)


def validate_tools(tools: Any, tool_choice: Any) -> dict[str, dict[str, Any]]:
    """Check OpenAI-style function specs and the tool choice; returns ``{name: parameters schema}`` of the functions
    the output may call (the named one only, for a named choice)."""
    if not isinstance(tools, list) or not tools:
        raise InvalidRequestError("tools", "must be a non-empty list of {'type': 'function', 'function': {...}}")
    functions: dict[str, dict[str, Any]] = {}
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(function, dict):
            raise InvalidRequestError("tools", f"tools[{i}] must be {{'type': 'function', 'function': {{...}}}}")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequestError("tools", f"tools[{i}].function.name must be a non-empty string")
        if name in functions:
            raise InvalidRequestError("tools", f"function name {name!r} is declared twice")
        parameters = function.get("parameters")
        if parameters is None:
            parameters = _OPEN_OBJECT
        if not isinstance(parameters, dict):
            raise InvalidRequestError("tools", f"tools[{i}].function.parameters must be a JSON schema object")
        functions[name] = parameters
    mode = tool_choice_mode(tool_choice)
    if mode == "named":
        name = tool_choice["function"]["name"]
        if name not in functions:
            raise InvalidRequestError("tool_choice", f"function {name!r} is not among the declared tools")
        return {name: functions[name]}
    return functions


def tool_choice_mode(tool_choice: Any) -> str:
    """``auto``, ``required``, ``none`` or ``named``."""
    if tool_choice in ("auto", "required", "none"):
        return str(tool_choice)
    if (
        isinstance(tool_choice, dict)
        and tool_choice.get("type") == "function"
        and isinstance(tool_choice.get("function"), dict)
        and isinstance(tool_choice["function"].get("name"), str)
    ):
        return "named"
    raise InvalidRequestError(
        "tool_choice",
        "must be 'auto', 'required', 'none' or {'type': 'function', 'function': {'name': ...}}, "
        f"got {tool_choice!r}",
    )


def call_schema(functions: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """JSON schema of one call object ``{"name", "arguments"}`` to any of ``functions``."""
    branches = [
        {
            "type": "object",
            "properties": {"name": {"const": name}, "arguments": parameters},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for name, parameters in functions.items()
    ]
    return branches[0] if len(branches) == 1 else {"oneOf": branches}


def _call_tags(arguments: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One xgrammar tag per function: ``<tool_call>{"name": N, "arguments": <its format>}</tool_call>``."""
    return [
        {
            "type": "tag",
            "begin": f'{TOOL_CALL_BEGIN}{{"name": {json.dumps(name)}, "arguments": ',
            "content": content,
            "end": f"}}{TOOL_CALL_END}",
        }
        for name, content in arguments.items()
    ]


def auto_structural_tag(arguments: dict[str, dict[str, Any]], parallel: bool = True) -> dict[str, Any]:
    """xgrammar structural tag for ``tool_choice="auto"``: free text with triggered ``<tool_call>`` sections (the
    output ends after the first call unless ``parallel``). ``arguments``: function name -> the structural-tag format
    its arguments follow."""
    return {
        "type": "structural_tag",
        "format": {
            "type": "triggered_tags",
            "triggers": [TOOL_CALL_BEGIN],
            "tags": _call_tags(arguments),
            "stop_after_first": not parallel,
        },
    }


def required_structural_tag(arguments: dict[str, dict[str, Any]], parallel: bool = True) -> dict[str, Any]:
    """xgrammar structural tag for ``tool_choice="required"``: one or more calls, one per line, nothing else (exactly
    one unless ``parallel``). ``arguments`` as for ``auto_structural_tag``."""
    return {
        "type": "structural_tag",
        "format": {
            "type": "tags_with_separator",
            "tags": _call_tags(arguments),
            "separator": CALL_SEPARATOR,
            "at_least_one": True,
            "stop_after_first": not parallel,
        },
    }


def parse_tool_calls(text: str, tool_choice: str | dict[str, Any] = "auto") -> ParsedToolOutput:
    """Read the tool calls out of an output written in the format above.

    Raises ``ValueError`` when a call is not valid JSON of the expected shape, or is not terminated, or a
    ``required`` output holds no call (an output cut off by ``max_tokens``).
    """
    mode = tool_choice_mode(tool_choice)
    if mode == "none":
        return ParsedToolOutput(text)
    if mode == "named":
        return ParsedToolOutput("", [_call_from_json(text)])
    content: list[str] = []
    calls: list[ToolCall] = []
    rest = text
    while (start := rest.find(TOOL_CALL_BEGIN)) >= 0:
        content.append(rest[:start])
        end = rest.find(TOOL_CALL_END, start)
        if end < 0:
            raise ValueError(f"unterminated {TOOL_CALL_BEGIN} in the output")
        calls.append(_call_from_json(rest[start + len(TOOL_CALL_BEGIN) : end]))
        rest = rest[end + len(TOOL_CALL_END) :]
    content.append(rest)
    if mode == "required" and not calls:
        raise ValueError(f"no {TOOL_CALL_BEGIN}...{TOOL_CALL_END} in the output")
    return ParsedToolOutput("".join(content).strip(), calls)


def _call_from_json(text: str) -> ToolCall:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"tool call is not valid JSON: {error}") from error
    if (
        not isinstance(value, dict)
        or not isinstance(value.get("name"), str)
        or not isinstance(value.get("arguments"), dict)
    ):
        raise ValueError('a tool call must be {"name": str, "arguments": object}')
    return ToolCall(value["name"], value["arguments"])
