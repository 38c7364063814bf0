"""Chat completions out: the whole ``chat.completion`` and the ``chat.completion.chunk`` stream of a ``Generation``.

Stream shape (what OpenAI sends): a first chunk per choice with ``role``; then content (and ``logprobs``) and
``tool_calls`` deltas; a chunk with an empty delta and the ``finish_reason``; with ``include_usage``, a last chunk
with empty ``choices`` and ``usage``. Each tool call comes whole in one delta (its own id, name and complete
arguments); the calls of a parallel output come in order with ``index`` 0, 1, ... (their order in the whole message).
"""

from __future__ import annotations

import json
import secrets
import time

from plait.engine import ToolCall
from plait.server.openai.generation import Generation, Sample, SampleUpdate
from plait.server.openai.logprobs import TokenTexts, chat_logprobs
from plait.server.openai.responses import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatDelta,
    FunctionCallOut,
    PromptTokensDetails,
    ToolCallDelta,
    ToolCallOut,
    Usage,
)


def new_call_id() -> str:
    return f"call_{secrets.token_hex(12)}"


def usage_of(gen: Generation) -> Usage:
    completion = gen.completion_tokens
    return Usage(
        prompt_tokens=gen.prompt_tokens,
        completion_tokens=completion,
        total_tokens=gen.prompt_tokens + completion,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=gen.cached_tokens),
    )


def _call_out(call: ToolCall) -> ToolCallOut:
    return ToolCallOut(id=new_call_id(), function=FunctionCallOut(name=call.name, arguments=json.dumps(call.arguments)))


class ChatOutput:
    """Renders one generation as ``completion_id`` for the served ``model``."""

    def __init__(self, gen: Generation, completion_id: str, model: str, texts: TokenTexts) -> None:
        self.gen = gen
        self.id = completion_id
        self.model = model
        self.texts = texts
        self.created = int(time.time())
        self.want_logprobs = gen.plan.sampling.logprobs

    # ---- the whole response ----------------------------------------------------------------------------------------

    def whole(self) -> ChatCompletion:
        choices = [self._choice(sample) for _, sample in sorted(self.gen.samples.items())]
        return ChatCompletion(
            id=self.id, created=self.created, model=self.model, choices=choices, usage=usage_of(self.gen)
        )

    def _choice(self, sample: Sample) -> ChatChoice:
        calls = [_call_out(c) for c in sample.tool_calls]
        content: str | None = sample.text
        if calls:
            content = content.strip() or None  # OpenAI sends null content with calls
        return ChatChoice(
            index=sample.index,
            message=AssistantMessage(content=content, tool_calls=calls or None),
            finish_reason=sample.finish_reason,  # type: ignore[arg-type]
            logprobs=chat_logprobs(sample.logprobs, self.texts) if self.want_logprobs else None,
        )

    # ---- the stream --------------------------------------------------------------------------------------------------

    def _chunk(self, choices: list[ChatChunkChoice], usage: Usage | None = None) -> ChatCompletionChunk:
        return ChatCompletionChunk(id=self.id, created=self.created, model=self.model, choices=choices, usage=usage)

    def first_chunks(self) -> list[ChatCompletionChunk]:
        return [
            self._chunk([ChatChunkChoice(index=i, delta=ChatDelta(role="assistant", content=""))])
            for i in sorted(self.gen.samples)
        ]

    def chunks(self, update: SampleUpdate) -> list[ChatCompletionChunk]:
        out = []
        index = update.index
        if update.content or (update.logprobs and self.want_logprobs):
            logprobs = chat_logprobs(update.logprobs, self.texts) if self.want_logprobs else None
            delta = ChatDelta(content=update.content)
            out.append(self._chunk([ChatChunkChoice(index=index, delta=delta, logprobs=logprobs)]))
        if update.tool_calls:
            first = len(self.gen.samples[index].tool_calls) - len(update.tool_calls)
            deltas = [
                ToolCallDelta(index=first + k, id=call.id, type="function", function=call.function)
                for k, call in enumerate(_call_out(c) for c in update.tool_calls)
            ]
            out.append(self._chunk([ChatChunkChoice(index=index, delta=ChatDelta(tool_calls=deltas))]))
        if update.finish_reason is not None:
            reason = update.finish_reason
            out.append(self._chunk([ChatChunkChoice(index=index, delta=ChatDelta(), finish_reason=reason)]))  # type: ignore[arg-type]
        return out

    def usage_chunk(self) -> ChatCompletionChunk:
        return self._chunk([], usage_of(self.gen))
