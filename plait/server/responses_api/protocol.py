"""The Responses API on the wire (``/v1/responses``): the request body and the response objects, as pydantic models.

They follow OpenAI's field names and shapes, so the official clients (``client.responses.create``, ``.stream``,
``response.output_text``) work unchanged. The request's unknown top-level fields (other vendors' extensions, newer
OpenAI options) are ignored and named in the response's ``X-Plait-Ignored-Fields`` header; a known field with a wrong
value is a 422 naming it. Nested objects that clients echo back from earlier responses (output messages and function
calls as input items, function tools) may carry fields plait does not use: those are ignored too.

Input items: messages (``role`` and ``content``: a string or ``input_text``/``output_text``/``refusal`` parts; the
``type`` may be left out), ``function_call`` items (a call the model made, echoed back) and ``function_call_output``
items (a call's result). Tools are function tools only; another tool type is a 422 naming ``tools.N.type``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from plait.server.openai.kv_hints import KVHintsEnvelope
from plait.server.openai.protocol import MAX_TOKENS_BOUND, MAX_TOOLS, PROGRAM_ID_PATTERN, FunctionName

MAX_ID_CHARS = 256
MAX_METADATA_PAIRS = 16  # OpenAI's bound

ResponseStatus = Literal["completed", "incomplete", "in_progress", "failed"]
ItemStatus = Literal["in_progress", "completed", "incomplete"]


class _Echoed(BaseModel):
    """An object clients echo back from responses: fields plait does not use are ignored."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class _Exact(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# ---- input items -----------------------------------------------------------------------------------------------------


class ResponseInputContent(_Echoed):
    type: str = Field(
        description="`input_text` (or `output_text`/`refusal` on an echoed assistant message); images, files and "
        "audio are refused (this server's models read text)."
    )
    text: str | None = Field(None, description="The text of a text part.")
    refusal: str | None = Field(None, description="The text of a `refusal` part.")


class ResponseInputMessage(_Echoed):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"] = Field(
        description="Who wrote the message; `developer` is treated as `system`."
    )
    content: str | list[ResponseInputContent] = Field(description="The text, or a list of text parts.")


class ResponseFunctionCallInput(_Echoed):
    type: Literal["function_call"]
    call_id: str = Field(min_length=1, max_length=MAX_ID_CHARS, description="The call's id.")
    name: str = Field(min_length=1, max_length=64, description="The function the model called.")
    arguments: str = Field(description="The call's arguments, a JSON-encoded object.")


class ResponseFunctionCallOutputInput(_Echoed):
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1, max_length=MAX_ID_CHARS, description="The call this is the result of.")
    output: str | list[ResponseInputContent] = Field(description="The call's result: text, or a list of text parts.")


def _input_item_type(value: Any) -> str:
    """An input item's kind: its ``type``; a message may leave it out."""
    kind = value.get("type", "message") if isinstance(value, dict) else getattr(value, "type", "message")
    return kind if isinstance(kind, str) else ""


ResponseInputItem = Annotated[
    Annotated[ResponseInputMessage, Tag("message")]
    | Annotated[ResponseFunctionCallInput, Tag("function_call")]
    | Annotated[ResponseFunctionCallOutputInput, Tag("function_call_output")],
    Discriminator(
        _input_item_type,
        custom_error_type="input_item_type",
        custom_error_message="type must be `message`, `function_call` or `function_call_output`",
    ),
]


def _input_kind(value: Any) -> str:
    return "text" if isinstance(value, str) else "items"


# A tagged union, so that an error inside an item is reported on that item (``input.items.3.message.role``), not as a
# mismatch of every alternative of ``input``.
ResponseInput = Annotated[
    Annotated[str, Tag("text")] | Annotated[list[ResponseInputItem], Tag("items")],
    Discriminator(_input_kind),
]


# ---- tools and text format -------------------------------------------------------------------------------------------


class ResponseFunctionTool(_Echoed):
    type: Literal["function"] = Field(description="Only function tools are served (no hosted tools).")
    name: FunctionName = Field(description="The function's name (letters, digits, `_`, `.`, `-`; at most 64).")
    description: str | None = Field(None, description="What the function does (shown to the model).")
    parameters: dict[str, Any] | None = Field(
        None, description="JSON schema of the arguments object; absent: any object. Enforced by grammar."
    )
    strict: bool | None = Field(None, description="Accepted; arguments always follow the schema exactly.")


class ResponseToolChoiceFunction(_Exact):
    type: Literal["function"]
    name: FunctionName


ResponseToolChoice = Literal["none", "auto", "required"] | ResponseToolChoiceFunction


class ResponseTextFormatText(_Exact):
    type: Literal["text"]


class ResponseTextFormatJSONObject(_Exact):
    type: Literal["json_object"]


class ResponseTextFormatJSONSchema(_Exact):
    type: Literal["json_schema"]
    name: str = Field("response", min_length=1, max_length=64, description="A name for the schema (informational).")
    schema_: dict[str, Any] = Field(
        alias="schema", description="The JSON schema the output must validate against (enforced by grammar)."
    )
    description: str | None = Field(None, description="Accepted and ignored.")
    strict: bool | None = Field(None, description="Accepted; the schema is always enforced exactly.")


ResponseTextFormat = Annotated[
    ResponseTextFormatText | ResponseTextFormatJSONObject | ResponseTextFormatJSONSchema, Field(discriminator="type")
]


class ResponseTextConfig(_Echoed):
    format: ResponseTextFormat | None = Field(
        None, description="`text` (default), `json_object`, or `json_schema` (structured output, enforced by grammar)."
    )
    verbosity: Literal["low", "medium", "high"] | None = Field(None, description="Accepted and ignored.")


# ---- the request -----------------------------------------------------------------------------------------------------


class ResponseCreateRequest(BaseModel):
    """`POST /v1/responses`."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)  # unknown fields: ignored, named in a header

    model: str = Field(
        min_length=1, max_length=256, description="The served model's id (see `GET /v1/models`) or `default`."
    )
    input: ResponseInput | None = Field(
        None,
        description="This turn's input: text (a user message) or a list of items (messages, `function_call` items "
        "echoed back, `function_call_output` items). May be left out only with `previous_response_id`.",
    )
    instructions: str | None = Field(
        None,
        description="A system message before the conversation. Not carried over from `previous_response_id`: "
        "send it with every response of a chain (as OpenAI defines it).",
    )
    previous_response_id: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_ID_CHARS,
        description="Continue the conversation of this stored response (its inputs and outputs come first). The "
        "chain of responses is one agent program: its KV is reused and its calls are scheduled together.",
    )
    tools: Annotated[list[ResponseFunctionTool], Field(max_length=MAX_TOOLS)] | None = Field(
        None, description="Function tools the model may call; calls follow their parameter schemas (grammar)."
    )
    tool_choice: ResponseToolChoice | None = Field(
        None, description='`auto` (default), `none`, `required`, or `{"type": "function", "name": ...}`.'
    )
    parallel_tool_calls: bool | None = Field(
        None, description="Default true: several calls in one turn may be made; false: at most one."
    )
    max_output_tokens: int | None = Field(
        None,
        ge=1,
        le=MAX_TOKENS_BOUND,
        description="Most tokens to generate. Over what the context window leaves after the prompt: 400 naming "
        "the field. Default: min(1024, the rest of the context window).",
    )
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="0 is greedy. Default 1.")
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="Nucleus sampling mass. Default 1.")
    stream: bool = Field(False, description="Stream server-sent events (`response.created` ... `response.completed`).")
    store: bool = Field(
        True,
        description="Keep the response (in memory, per tenant, the oldest evicted first) for `GET /v1/responses/{id}` "
        "and `previous_response_id`. false: it cannot be continued.",
    )
    metadata: Annotated[dict[str, str], Field(max_length=MAX_METADATA_PAIRS)] | None = Field(
        None, description="Stored with the response and returned as given."
    )
    user: str | None = Field(None, max_length=256, description="Accepted and echoed.")
    text: ResponseTextConfig | None = Field(None, description="The output's format (`text.format`).")
    truncation: Literal["auto", "disabled"] | None = Field(
        None, description="Only `disabled` (the default): a conversation over the context window is a 400."
    )
    background: bool | None = Field(None, description="Only false: responses are served in the foreground.")
    # plait extensions
    program_id: str | None = Field(
        None,
        pattern=PROGRAM_ID_PATTERN,
        description="plait: the agent program of a chain's first response (default: one named after that "
        "response's id), 1 to 256 printable ASCII characters (it is returned in the `X-Plait-Program-Id` header). "
        "A later response of the chain is in the chain's program; a different id is a 400.",
    )
    priority: int | None = Field(
        None,
        ge=-1000,
        le=1000,
        description="plait: lower runs first (as everywhere in plait); equal priorities are first-come.",
    )
    kv_hints: KVHintsEnvelope | None = Field(
        None,
        description='plait: retention advice for this response\'s program, e.g. `{"version": 1, "actions": '
        '[{"type": "retain", "ttl_s": 30}]}` (actions `retain`, `release`, `prefetch`).',
    )

    @property
    def ignored_fields(self) -> list[str]:
        """The body's fields this model does not define, in the order they were sent."""
        return [str(name) for name in self.model_extra or {}]


# ---- the response ----------------------------------------------------------------------------------------------------


class ResponseOutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list, description="Always empty.")
    logprobs: list[Any] = Field(default_factory=list, description="Always empty (log-probabilities: not served).")


class ResponseOutputMessage(BaseModel):
    type: Literal["message"] = "message"
    id: str
    role: Literal["assistant"] = "assistant"
    status: ItemStatus
    content: list[ResponseOutputText] = Field(default_factory=list)


class ResponseFunctionToolCall(BaseModel):
    type: Literal["function_call"] = "function_call"
    id: str
    call_id: str = Field(description="What the `function_call_output` item of the result names.")
    name: str
    arguments: str = Field(description="The arguments, a JSON-encoded object following the function's schema.")
    status: ItemStatus


ResponseOutputItem = Annotated[ResponseOutputMessage | ResponseFunctionToolCall, Field(discriminator="type")]


class ResponseInputTokensDetails(BaseModel):
    cached_tokens: int = Field(description="Input tokens served from the prefix cache (a chain's KV reused).")


class ResponseOutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: ResponseInputTokensDetails
    output_tokens: int
    output_tokens_details: ResponseOutputTokensDetails = Field(default_factory=ResponseOutputTokensDetails)
    total_tokens: int


class ResponseErrorDetails(BaseModel):
    code: str
    message: str


class ResponseIncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens"]


class ResponseObject(BaseModel):
    """A model response (`object: "response"`)."""

    id: str = Field(description="`resp_...`: what `previous_response_id` names.")
    object: Literal["response"] = "response"
    created_at: int = Field(description="Unix time the response was created.")
    completed_at: int | None = None
    status: ResponseStatus
    error: ResponseErrorDetails | None = None
    incomplete_details: ResponseIncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    model: str
    output: list[ResponseOutputItem] = Field(
        description="`message` items (text in `output_text` parts) and `function_call` items, in generation order."
    )
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    tool_choice: str | dict[str, Any] = "auto"
    tools: list[dict[str, Any]] = Field(default_factory=list)
    text: dict[str, Any] = Field(default_factory=lambda: {"format": {"type": "text"}})
    truncation: Literal["disabled"] = "disabled"
    background: bool = False
    store: bool = True
    metadata: dict[str, str] = Field(default_factory=dict)
    user: str | None = None
    usage: ResponseUsage | None = None


class ResponseDeleted(BaseModel):
    id: str
    object: Literal["response"] = "response"
    deleted: Literal[True] = True
