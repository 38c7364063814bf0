"""From OpenAI chat messages to the plain ``{"role", "content"}`` messages the model's chat template renders.

- ``developer`` becomes ``system``; a list of ``text`` parts becomes their concatenation (other parts: 400).
- An assistant turn's ``tool_calls`` are written back in the format the model produced them in
  (``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, see ``plait.engine.grammar.tools``), so the model sees
  its own calls; a ``tool`` message keeps its role and carries the result text.
- With ``tools``, a system message describes the functions and the call format (one or more calls in a turn, or one
  with ``parallel_tool_calls=false``); it goes after the caller's own system message, or first when there is none.
  It is the same whatever the ``tool_choice`` (``none`` included): the grammar enforces the choice, and an agent that
  changes it between turns (forcing a first call, then ``auto``) keeps its conversation's KV.
"""

from __future__ import annotations

import json
from typing import Any

from plait.engine import TOOL_CALL_BEGIN, TOOL_CALL_END
from plait.server.errors import APIError
from plait.server.openai.protocol import ChatMessage, ChatTool

_TEXT_PART_TYPES = ("text", "input_text")


def template_messages(
    messages: list[ChatMessage],
    tools: list[ChatTool] | None = None,
    tool_choice: str | dict[str, Any] = "none",
    parallel_tool_calls: bool = True,
) -> list[dict[str, str]]:
    """The messages to render, with the tools' description added when the request has tools. ``tool_choice`` does
    not change the text (the grammar enforces it): a conversation whose turns change it still renders the same
    leading text, so each turn finds the previous turns' KV in the prefix cache."""
    del tool_choice  # enforced by the grammar, never by the prompt
    rendered = [_message(i, m) for i, m in enumerate(messages)]
    if tools:
        prompt = tools_prompt(tools, parallel_tool_calls)
        if rendered[0]["role"] == "system":
            rendered[0] = {"role": "system", "content": f"{rendered[0]['content']}\n\n{prompt}"}
        else:
            rendered.insert(0, {"role": "system", "content": prompt})
    return rendered


def tools_prompt(tools: list[ChatTool], parallel_tool_calls: bool = True) -> str:
    """What the model is told about the functions and how to call them (the grammar enforces the format and the
    tool choice)."""
    specs = [
        json.dumps(
            {
                "name": t.function.name,
                **({"description": t.function.description} if t.function.description else {}),
                "parameters": t.function.parameters or {"type": "object"},
            }
        )
        for t in tools
    ]
    lines = ["You can call these functions:", *specs, ""]
    call = f'{TOOL_CALL_BEGIN}{{"name": <function name>, "arguments": <arguments object>}}{TOOL_CALL_END}'
    if parallel_tool_calls:
        lines.append(
            f"To call a function, write {call}; to call several, write one such line per call. "
            "Otherwise answer normally."
        )
    else:
        lines.append(f"To call a function, write {call} (one call at most). Otherwise answer normally.")
    return "\n".join(lines)


def _message(i: int, message: ChatMessage) -> dict[str, str]:
    role = "system" if message.role == "developer" else message.role
    content = _text(i, message)
    if message.tool_calls:
        if message.role != "assistant":
            raise APIError(400, "only assistant messages may carry tool_calls", field=f"messages[{i}].tool_calls")
        calls = "".join(_call_text(call.function.name, call.function.arguments) for call in message.tool_calls)
        content = f"{content}{calls}" if content else calls
    elif message.content is None and message.role != "assistant":
        raise APIError(400, "is required (it may be null only on an assistant message)", field=f"messages[{i}].content")
    return {"role": role, "content": content}


def _text(i: int, message: ChatMessage) -> str:
    content = message.content
    if content is None or isinstance(content, str):
        return content or ""
    pieces = []
    for j, part in enumerate(content):
        if part.type not in _TEXT_PART_TYPES or part.text is None:
            raise APIError(
                400,
                f"content part of type '{part.type}' is not supported: this model reads text only",
                field=f"messages[{i}].content[{j}]",
            )
        pieces.append(part.text)
    return "".join(pieces)


def _call_text(name: str, arguments: str) -> str:
    try:
        parsed: Any = json.loads(arguments) if arguments.strip() else {}
    except json.JSONDecodeError:
        parsed = arguments  # shown as given; the model only reads it
    return f"{TOOL_CALL_BEGIN}{json.dumps({'name': name, 'arguments': parsed})}{TOOL_CALL_END}"
