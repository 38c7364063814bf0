"""Response bodies of the OpenAI-compatible API, as pydantic models (documented in ``/openapi.json``).

Responses are serialised with ``dump`` (``None`` fields left out), which the official clients read as absent.
Streams send the ``*Chunk`` models as server-sent events: ``data: {json}\\n\\n`` ... ``data: [DONE]\\n\\n``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


def dump(model: BaseModel) -> dict[str, Any]:
    """The JSON-ready body of a response model, without its unset (``None``) fields."""
    return model.model_dump(mode="json", exclude_none=True, by_alias=True)


class ModelCard(BaseModel):
    id: str = Field(description="The id to pass as `model`.")
    object: Literal["model"] = "model"
    created: int = Field(description="Unix time the server started.")
    owned_by: str = "plait"
    max_model_len: int | None = Field(None, description="The context window in tokens.")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class PromptTokensDetails(BaseModel):
    cached_tokens: int = Field(description="Prompt tokens served from the prefix cache (not computed).")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int = Field(description="Generated tokens over all samples.")
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None


# ---- log-probabilities -----------------------------------------------------------------------------------------------


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = Field(None, description="UTF-8 bytes of `token`.")


class ChatTokenLogprob(BaseModel):
    token: str
    logprob: float = Field(description="Under the model's raw distribution (before grammar masks and sampling).")
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob] | None = None


class CompletionLogprobs(BaseModel):
    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float] = Field(default_factory=list)
    top_logprobs: list[dict[str, float]] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list, description="Character offset of each token in `text`.")


# ---- chat ------------------------------------------------------------------------------------------------------------


class FunctionCallOut(BaseModel):
    name: str | None = None
    arguments: str | None = Field(None, description="JSON-encoded arguments object.")


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut


class ToolCallDelta(BaseModel):
    index: int = Field(description="Position of the call among the sample's calls.")
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallOut | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = Field(None, description="The text; absent when the sample is only tool calls.")
    tool_calls: list[ToolCallOut] | None = None


FinishReason = Literal["stop", "length", "tool_calls"]


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: FinishReason | None = None
    logprobs: ChatLogprobs | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    finish_reason: FinishReason | None = None
    logprobs: ChatLogprobs | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = Field(None, description="Only on the last chunk, with `stream_options.include_usage`.")


# ---- completions -----------------------------------------------------------------------------------------------------


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: CompletionLogprobs | None = None


class TextCompletion(BaseModel):
    """A completion, or (streamed) one chunk of it: the same shape, with `usage` only on the last."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


# ---- errors ----------------------------------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    type: str = Field(description="e.g. `invalid_request_error`, `authentication_error`, `rate_limit_error`.")
    message: str
    field: str | None = Field(None, description="The offending request field (dotted path), when there is one.")
    param: str | None = Field(None, description="Same as `field` (OpenAI's name).")
    code: int = Field(description="The HTTP status.")


class ErrorResponse(BaseModel):
    """The body of every error response (and of an `error` event in a stream)."""

    error: ErrorDetail
