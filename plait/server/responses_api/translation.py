"""A Responses request as the chat completion it runs as: the same messages, tools and sampling, planned by the chat
API's ``chat_plan``, so both APIs generate, constrain and parse tool calls one way.

The plan keeps the Responses field names for everything it reports: an error on the chat request's ``messages`` is on
``input``, ``max_tokens`` is ``max_output_tokens``, ``response_format`` is ``text.format``, and a tool's
``tools[i].function.parameters`` is ``tools[i].parameters``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Any

from pydantic import ValidationError

from plait.server.errors import APIError
from plait.server.openai.params import GenerationPlan, chat_plan
from plait.server.openai.protocol import (
    ChatCompletionRequest,
    ChatMessage,
    ChatTool,
    FunctionDefinition,
    JSONSchemaSpec,
    NamedFunction,
    NamedToolChoice,
    ResponseFormatJSONObject,
    ResponseFormatJSONSchema,
)
from plait.server.responses_api.protocol import (
    ResponseCreateRequest,
    ResponseTextFormatJSONObject,
    ResponseTextFormatJSONSchema,
    ResponseToolChoiceFunction,
)

ENDPOINT = "responses"  # the metrics' endpoint label
_TOOL_FUNCTION = re.compile(r"^tools(\[\d+\]|\.\d+)\.function\b")


def responses_field(chat_field: str) -> str:
    """The Responses request field a chat request field corresponds to."""
    if chat_field.startswith(("messages", "prompt")):
        return "input"
    if chat_field in ("max_tokens", "max_completion_tokens"):
        return "max_output_tokens"
    if chat_field.startswith("response_format.json_schema.schema"):
        return "text.format.schema" + chat_field.removeprefix("response_format.json_schema.schema")
    if chat_field.startswith("response_format"):
        return "text.format"
    return _TOOL_FUNCTION.sub(lambda match: f"tools{match.group(1)}", chat_field)


@dataclass
class ResponsesPlan(GenerationPlan):
    """A chat plan that names the fields of the Responses request in its errors."""

    @property
    def prompt_field(self) -> str:
        return "input"

    def api_field(self, engine_field: str) -> str:
        return responses_field(super().api_field(engine_field))


def responses_plan(body: ResponseCreateRequest, messages: list[ChatMessage]) -> ResponsesPlan:
    """The plan of ``body`` over the whole conversation ``messages``; ``APIError`` naming the Responses field."""
    _refuse_unsupported(body)
    if not messages:
        raise APIError(400, "is required (at least one item) unless previous_response_id is given", field="input")
    try:
        plan = chat_plan(chat_request(body, messages))
    except APIError as error:
        error.field = None if error.field is None else responses_field(error.field)
        raise
    values = {item.name: getattr(plan, item.name) for item in fields(plan) if item.init}
    values.update(endpoint=ENDPOINT, max_tokens_field="max_output_tokens", stream=body.stream, include_usage=False)
    return ResponsesPlan(**values)


def chat_request(body: ResponseCreateRequest, messages: list[ChatMessage]) -> ChatCompletionRequest:
    """``body`` as a chat completion request over ``messages``."""
    tools = [
        ChatTool(
            function=FunctionDefinition(
                name=tool.name, description=tool.description, parameters=tool.parameters, strict=tool.strict
            )
        )
        for tool in body.tools or []
    ]
    values: dict[str, Any] = {
        "model": body.model,
        "messages": messages,
        "max_tokens": body.max_output_tokens,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "tools": tools or None,
        "tool_choice": _tool_choice(body),
        "parallel_tool_calls": body.parallel_tool_calls,
        "response_format": _response_format(body),
        "program_id": body.program_id,
        "priority": body.priority,
        "kv_hints": body.kv_hints,
    }
    try:
        return ChatCompletionRequest(**values)
    except ValidationError as error:  # every value was validated as the Responses field: a gap between the schemas
        problem = error.errors()[0]
        location = ".".join(str(part) for part in problem.get("loc", ()))
        raise APIError(400, f"{problem.get('msg', 'invalid value')}", field=responses_field(location)) from error


def _tool_choice(body: ResponseCreateRequest) -> Any:
    choice = body.tool_choice
    if isinstance(choice, ResponseToolChoiceFunction):
        return NamedToolChoice(function=NamedFunction(name=choice.name))
    return choice


def _response_format(body: ResponseCreateRequest) -> Any:
    fmt = body.text.format if body.text is not None else None
    if isinstance(fmt, ResponseTextFormatJSONSchema):
        spec = JSONSchemaSpec(name=fmt.name, description=fmt.description, schema=fmt.schema_, strict=fmt.strict)
        return ResponseFormatJSONSchema(type="json_schema", json_schema=spec)
    if isinstance(fmt, ResponseTextFormatJSONObject):
        return ResponseFormatJSONObject(type="json_object")
    return None


def _refuse_unsupported(body: ResponseCreateRequest) -> None:
    if body.background:
        raise APIError(400, "is not supported (responses are served in the foreground)", field="background")
    if body.truncation == "auto":
        raise APIError(
            400, "only 'disabled' is supported (a conversation must fit the context window)", field="truncation"
        )
