"""From a validated OpenAI request body to what the engine runs: the prompt, ``SamplingParams`` and plait's hints.

``GenerationPlan`` also remembers how to talk back: which field names the client used (so an engine error on
``json_schema`` is reported on ``response_format``), whether tool calls are to be parsed, and the stream options.
Fields OpenAI defines but plait cannot honour are refused here with a 400 naming them, unless they are neutral.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from plait.engine import InvalidRequestError, SamplingParams
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
    stream: bool = False
    include_usage: bool = False
    echo: bool = False
    program_id: str | None = None
    priority: int = 0
    hints: dict[str, Any] = field(default_factory=dict)
    field_names: dict[str, str] = field(default_factory=dict)  # engine field -> request field

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
    fmt = body.response_format
    if isinstance(fmt, ResponseFormatJSONSchema):
        sampling.json_schema = fmt.json_schema.schema_
        names["json_schema"] = "response_format.json_schema.schema"
    elif isinstance(fmt, ResponseFormatJSONObject):
        sampling.json_object = True
    tool_choice: str | dict[str, Any] = "none"
    if body.tools:
        tool_choice = body.tool_choice or "auto"
        if not isinstance(tool_choice, str):
            tool_choice = tool_choice.model_dump()
        if tool_choice != "none":
            if sampling.constrained:
                raise APIError(
                    400, "cannot be combined with tools (unless tool_choice is 'none')", field="response_format"
                )
            sampling.tools = [t.model_dump(exclude_none=True) for t in body.tools]
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
        field_names=names,
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
        **_common(body),
    )


def _sampling(body: ChatCompletionRequest | CompletionRequest) -> SamplingParams:
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    return SamplingParams(
        temperature=_temperature(body.temperature),
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=body.top_k or 0,
        min_p=body.min_p or 0.0,
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
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(body, name):
            raise APIError(400, "is not supported (only 0)", field=name)
    if body.logit_bias:
        raise APIError(400, "is not supported (only an empty map)", field="logit_bias")
