"""A Responses API conversation as chat messages: what the model reads is the chat rendering of the same turns.

- A string input is one user message. A message item keeps its role (``developer`` is ``system``); its text parts
  (``input_text``, and ``output_text``/``refusal`` on echoed assistant messages) are concatenated; any other part
  (images, files, audio) is a 400 naming it, as this server's models read text only.
- ``function_call`` items are the calls of an assistant turn: consecutive ones, and those right after an assistant
  message of the same input, join that turn's ``tool_calls``; a ``function_call_output`` item is a ``tool`` message
  answering ``call_id``.
- A response's output (its ``message`` texts and ``function_call`` items) is one assistant turn, stored with the
  response, so that the next response of the chain reads exactly the turns the model produced.
"""

from __future__ import annotations

from collections.abc import Sequence

from plait.server.errors import APIError
from plait.server.openai.protocol import ChatMessage, FunctionCallIn, ToolCallIn
from plait.server.responses_api.protocol import (
    ResponseFunctionCallInput,
    ResponseFunctionCallOutputInput,
    ResponseFunctionToolCall,
    ResponseInputContent,
    ResponseInputItem,
    ResponseInputMessage,
    ResponseOutputItem,
    ResponseOutputMessage,
)

_TEXT_PARTS = ("input_text", "output_text", "text")


def input_messages(items: str | list[ResponseInputItem] | None, field: str = "input") -> list[ChatMessage]:
    """The chat messages of a request's ``input`` (``field`` is its name in errors)."""
    if items is None:
        return []
    if isinstance(items, str):
        return [ChatMessage(role="user", content=items)]
    messages: list[ChatMessage] = []
    joins_turn = False  # whether a function_call item may join the last message (an assistant turn of this input)
    for i, item in enumerate(items):
        where = f"{field}[{i}]"
        if isinstance(item, ResponseInputMessage):
            role = "system" if item.role == "developer" else item.role
            messages.append(ChatMessage(role=role, content=_text(item.content, f"{where}.content")))
            joins_turn = role == "assistant"
        elif isinstance(item, ResponseFunctionCallInput):
            call = ToolCallIn(id=item.call_id, function=FunctionCallIn(name=item.name, arguments=item.arguments))
            if joins_turn:
                turn = messages[-1]
                messages[-1] = turn.model_copy(update={"tool_calls": [*(turn.tool_calls or []), call]})
            else:
                messages.append(ChatMessage(role="assistant", content=None, tool_calls=[call]))
            joins_turn = True
        elif isinstance(item, ResponseFunctionCallOutputInput):
            output = _text(item.output, f"{where}.output")
            messages.append(ChatMessage(role="tool", tool_call_id=item.call_id, content=output))
            joins_turn = False
    return messages


def output_turn(output: Sequence[ResponseOutputItem]) -> ChatMessage:
    """A response's output as the assistant turn the next response of its chain reads."""
    text = "".join(part.text for item in output if isinstance(item, ResponseOutputMessage) for part in item.content)
    calls = [
        ToolCallIn(id=item.call_id, function=FunctionCallIn(name=item.name, arguments=item.arguments))
        for item in output
        if isinstance(item, ResponseFunctionToolCall)
    ]
    if calls:
        return ChatMessage(role="assistant", content=text if text.strip() else None, tool_calls=calls)
    return ChatMessage(role="assistant", content=text)


def _text(content: str | list[ResponseInputContent], field: str) -> str:
    if isinstance(content, str):
        return content
    pieces = []
    for j, part in enumerate(content):
        text = part.refusal if part.type == "refusal" else part.text if part.type in _TEXT_PARTS else None
        if text is None:
            raise APIError(
                400,
                f"a content part of type '{part.type}' is not supported: this model reads text only",
                field=f"{field}[{j}]",
            )
        pieces.append(text)
    return "".join(pieces)
