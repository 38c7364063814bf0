"""Request bodies of the OpenAI-compatible API (``/v1/chat/completions``, ``/v1/completions``), as pydantic models.

They follow OpenAI's field names and shapes, so the official clients work unchanged, and bound every number (``n``,
``max_tokens``, ``temperature``...) so that no body, however generated, can make the server work without end. Unknown
top-level fields (other vendors' extensions, which frameworks send unasked) are ignored, as other OpenAI-compatible
servers do, and named in the response's ``X-Plait-Ignored-Fields`` header so that a misspelt field is still seen; a
known field with a wrong value is still a 422 naming it. Fields OpenAI defines that plait cannot honour are accepted
only at their neutral value (checked in ``params``). plait's own optional fields
(``program_id``, ``deadline_s``, ``hints``, ``priority``) give agent frameworks program-level scheduling;
``deadline_s`` (and the server's ``max_request_time_s``) bounds how long a request may run.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, StringConstraints, model_validator

from plait.server.openai.kv_hints import KVHintsEnvelope

MAX_N = 16  # samples per request
MAX_STOP = 16  # stop strings per request
MAX_TOP_LOGPROBS = 20
MAX_TOKENS_BOUND = 1 << 20  # a bound for the schema; the real cap is the model's context window
MAX_TOOLS = 128
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
PROGRAM_ID_PATTERN = r"^[\x20-\x7e]{1,256}$"  # what a header value can carry as is

NonEmptyStr = Annotated[str, StringConstraints(min_length=1)]
FunctionName = Annotated[str, StringConstraints(pattern=r"^[a-zA-Z0-9_.-]{1,64}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class _Lenient(BaseModel):
    """Nested objects that clients echo back from responses may carry fields plait does not use: ignored."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class _Tolerant(BaseModel):
    """An object whose unknown fields are ignored but remembered (``ignored_fields``), for the client to be told."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    _ignored_fields: list[str] = PrivateAttr(default_factory=list)

    @model_validator(mode="wrap")
    @classmethod
    def _note_ignored_fields(cls, data: Any, handler: Any) -> Any:
        model = handler(data)
        if isinstance(data, dict) and isinstance(model, _Tolerant):
            known = _known_names(cls)
            model._ignored_fields = [str(key) for key in data if key not in known]
        return model

    @property
    def ignored_fields(self) -> list[str]:
        """The body's fields this model does not define, in the order they were sent."""
        return list(self._ignored_fields)


def _known_names(model: type[BaseModel]) -> set[str]:
    names = set(model.model_fields)
    for info in model.model_fields.values():
        names |= {alias for alias in (info.alias, info.validation_alias) if isinstance(alias, str)}
    return names


# ---- chat messages ---------------------------------------------------------------------------------------------------


class ContentPart(_Lenient):
    type: str = Field(description="Only `text` parts are supported (this server's models read text).")
    text: str | None = Field(None, description="The text of a `text` part.")


class FunctionCallIn(_Lenient):
    name: str = Field(description="Name of the function the assistant called.")
    arguments: str = Field(description="The call's arguments as a JSON-encoded object.")


class ToolCallIn(_Lenient):
    id: str | None = Field(None, description="The call's id (what a `tool` message's `tool_call_id` refers to).")
    type: Literal["function"] = "function"
    function: FunctionCallIn


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"] = Field(
        description="Who wrote the message; `developer` is treated as `system`."
    )
    content: str | list[ContentPart] | None = Field(
        None, description="The text (or a list of `text` parts); may be null only on an assistant message with calls."
    )
    name: str | None = Field(None, description="Accepted and ignored.")
    tool_calls: list[ToolCallIn] | None = Field(None, description="Calls an earlier assistant turn made.")
    tool_call_id: str | None = Field(None, description="On a `tool` message: the call this is the result of.")


# ---- tools and structured output -------------------------------------------------------------------------------------


class FunctionDefinition(_Strict):
    name: FunctionName = Field(description="The function's name (letters, digits, `_`, `.`, `-`; at most 64).")
    description: str | None = Field(None, description="What the function does (shown to the model).")
    parameters: dict[str, Any] | None = Field(
        None, description="JSON schema of the arguments object; absent: any object. Enforced by grammar."
    )
    strict: bool | None = Field(None, description="Accepted; arguments always follow the schema exactly.")


class ChatTool(_Strict):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedFunction(_Strict):
    name: FunctionName


class NamedToolChoice(_Strict):
    type: Literal["function"] = "function"
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class ResponseFormatText(_Strict):
    type: Literal["text"]


class ResponseFormatJSONObject(_Strict):
    type: Literal["json_object"]


class JSONSchemaSpec(_Strict):
    name: str = Field("response", max_length=64, description="A name for the schema (informational).")
    description: str | None = Field(None, description="Accepted and ignored.")
    schema_: dict[str, Any] = Field(
        alias="schema", description="The JSON schema the output must validate against (enforced by grammar)."
    )
    strict: bool | None = Field(None, description="Accepted; the schema is always enforced exactly.")


class ResponseFormatJSONSchema(_Strict):
    type: Literal["json_schema"]
    json_schema: JSONSchemaSpec


ResponseFormat = Annotated[
    ResponseFormatText | ResponseFormatJSONObject | ResponseFormatJSONSchema, Field(discriminator="type")
]


class StreamOptions(_Tolerant):
    include_usage: bool = Field(False, description="Send a last chunk (with empty `choices`) carrying `usage`.")
    include_obfuscation: bool | None = Field(None, description="Accepted and ignored (chunks carry no padding).")


# ---- the common fields -----------------------------------------------------------------------------------------------


class _GenerationRequest(_Tolerant):
    model: str = Field(
        min_length=1, max_length=256, description="The served model's id (see `GET /v1/models`) or `default`."
    )
    stream: bool = Field(False, description="Stream server-sent events, ending with `data: [DONE]`.")
    stream_options: StreamOptions | None = Field(None, description="With `stream`: options of the stream.")
    n: int = Field(1, ge=1, le=MAX_N, description="How many samples to generate (they share the prompt's KV).")
    stop: NonEmptyStr | Annotated[list[NonEmptyStr], Field(max_length=MAX_STOP)] | None = Field(
        None, description="Stop strings: generation ends before the first occurrence (not included in the output)."
    )
    max_tokens: int | None = Field(
        None,
        ge=1,
        le=MAX_TOKENS_BOUND,
        description="Most tokens to generate per sample. Over what the context window leaves after the prompt: 400 "
        "naming the field (as OpenAI and vLLM answer). Default: min(1024, the rest of the context window).",
    )
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="0 is greedy. Default 1.")
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="Nucleus sampling mass. Default 1.")
    top_k: int | None = Field(None, ge=0, le=1_000_000, description="plait extension: top-k (0 disables).")
    min_p: float | None = Field(None, ge=0.0, le=1.0, description="plait extension: min-p (0 disables).")
    seed: int | None = Field(
        None, ge=INT64_MIN, le=INT64_MAX, description="Makes sampling reproducible, whatever else runs in the batch."
    )
    presence_penalty: float | None = Field(
        None,
        ge=-2.0,
        le=2.0,
        description="Lowers the logit of every token the sample has generated at least once by this much. Default 0.",
    )
    frequency_penalty: float | None = Field(
        None,
        ge=-2.0,
        le=2.0,
        description="Lowers the logit of each token by this much per time the sample has generated it. Default 0.",
    )
    logit_bias: dict[str, float] | None = Field(None, description="Only an empty map is supported.")
    user: str | None = Field(None, max_length=256, description="Accepted and ignored.")
    metadata: dict[str, str] | None = Field(None, description="Accepted and ignored.")
    store: bool | None = Field(None, description="Accepted and ignored (nothing is stored).")
    service_tier: str | None = Field(None, max_length=64, description="Accepted and ignored.")
    # plait extensions
    program_id: str | None = Field(
        None,
        pattern=PROGRAM_ID_PATTERN,
        description="plait: the agent program this call belongs to (1 to 256 printable ASCII characters; it is "
        "returned in the `X-Plait-Program-Id` header), for program-level scheduling and KV reuse.",
    )
    deadline_s: float | None = Field(
        None,
        gt=0.0,
        le=86_400.0,
        description="plait: seconds from submission by which the request must finish, queueing included (as "
        "everywhere in plait; the server's `max_request_time_s` applies when lower). When it passes, generation "
        'stops as at `max_tokens`: the text so far, with `finish_reason: "length"` (the last chunk of a stream).',
    )
    hints: dict[str, Any] | None = Field(
        None, description='plait: what the program does next, e.g. `{"next": "tool", "tool": "search"}`.'
    )
    priority: int | None = Field(
        None,
        ge=-1000,
        le=1000,
        description="plait: lower runs first (as everywhere in plait); equal priorities are first-come.",
    )
    kv_hints: KVHintsEnvelope | None = Field(
        None,
        description='plait: retention advice for this call\'s program, e.g. `{"version": 1, "actions": [{"type": '
        '"retain", "ttl_s": 30}]}` (actions `retain`, `release`, `prefetch`).',
    )
    ignore_eos: bool = Field(
        False,
        description="plait: keep generating past the end-of-sequence token until `max_tokens` or a stop string "
        "(benchmarks force output lengths with it).",
    )


class ChatCompletionRequest(_GenerationRequest):
    """`POST /v1/chat/completions`."""

    messages: list[ChatMessage] = Field(min_length=1, description="The conversation so far.")
    max_completion_tokens: int | None = Field(
        None,
        ge=1,
        le=MAX_TOKENS_BOUND,
        description="Same as `max_tokens` (OpenAI's newer name; the 400 names it when it is the one given).",
    )
    logprobs: bool | None = Field(None, description="Return each output token's log-probability.")
    top_logprobs: int | None = Field(
        None, ge=0, le=MAX_TOP_LOGPROBS, description="With `logprobs`: also the most likely alternatives."
    )
    response_format: ResponseFormat | None = Field(
        None, description="`text`, `json_object` (any JSON object) or `json_schema` (enforced by grammar)."
    )
    tools: Annotated[list[ChatTool], Field(min_length=1, max_length=MAX_TOOLS)] | None = Field(
        None, description="Functions the model may call; calls follow their parameter schemas (grammar)."
    )
    tool_choice: ToolChoice | None = Field(
        None, description="`auto` (default with tools), `none`, `required`, or a named function."
    )
    parallel_tool_calls: bool | None = Field(
        None,
        description="Default true: the model may make one or more calls in a turn (each its own `tool_calls` entry). "
        "false: at most one call (exactly one with `required`); the grammar enforces it.",
    )


class CompletionRequest(_GenerationRequest):
    """`POST /v1/completions`."""

    prompt: (
        str
        | Annotated[list[int], Field(min_length=1)]
        | Annotated[list[str], Field(min_length=1, max_length=1)]
        | Annotated[list[Annotated[list[int], Field(min_length=1)]], Field(min_length=1, max_length=1)]
    ) = Field(description="The prompt: text or token ids (one prompt per request).")
    logprobs: int | None = Field(
        None,
        ge=0,
        le=MAX_TOP_LOGPROBS,
        description="Return each token's log-probability and this many most likely alternatives.",
    )
    echo: bool = Field(False, description="Put the prompt before the generated text.")
    suffix: str | None = Field(None, description="Not supported (only null or empty).")
    best_of: int | None = Field(None, ge=1, le=MAX_N, description="Only equal to `n` (or 1) is supported.")
