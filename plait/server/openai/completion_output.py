"""Legacy completions out: the whole ``text_completion`` and its stream (chunks of the same shape).

With ``echo`` the prompt's text comes first (in the first chunk of each choice when streaming); ``text_offset`` of
log-probabilities counts characters from the start of the choice's text, echo included.
"""

from __future__ import annotations

import time

from plait.server.openai.chat_output import usage_of
from plait.server.openai.generation import Generation, SampleUpdate
from plait.server.openai.logprobs import TokenTexts, completion_logprobs
from plait.server.openai.responses import CompletionChoice, TextCompletion


class CompletionOutput:
    """Renders one generation as ``completion_id`` for the served ``model``; ``echo_text`` is the prompt or ""."""

    def __init__(self, gen: Generation, completion_id: str, model: str, texts: TokenTexts, echo_text: str = "") -> None:
        self.gen = gen
        self.id = completion_id
        self.model = model
        self.texts = texts
        self.echo_text = echo_text
        self.created = int(time.time())
        self.want_logprobs = gen.plan.sampling.logprobs
        self._offsets = dict.fromkeys(gen.samples, len(echo_text))  # streamed characters per choice

    def _completion(self, choices: list[CompletionChoice], usage: bool = False) -> TextCompletion:
        return TextCompletion(
            id=self.id,
            created=self.created,
            model=self.model,
            choices=choices,
            usage=usage_of(self.gen) if usage else None,
        )

    def whole(self) -> TextCompletion:
        choices = []
        for index, sample in sorted(self.gen.samples.items()):
            logprobs = None
            if self.want_logprobs:
                logprobs = completion_logprobs(sample.logprobs, self.texts, len(self.echo_text))
            text = self.echo_text + sample.text
            choices.append(
                CompletionChoice(index=index, text=text, finish_reason=sample.finish_reason, logprobs=logprobs)
            )  # type: ignore[arg-type]
        return self._completion(choices, usage=True)

    def first_chunks(self) -> list[TextCompletion]:
        if not self.echo_text:
            return []
        return [self._completion([CompletionChoice(index=i, text=self.echo_text)]) for i in sorted(self.gen.samples)]

    def chunks(self, update: SampleUpdate) -> list[TextCompletion]:
        if not (update.content or update.finish_reason or (update.logprobs and self.want_logprobs)):
            return []
        logprobs = None
        if self.want_logprobs:
            logprobs = completion_logprobs(update.logprobs, self.texts, self._offsets[update.index])
        self._offsets[update.index] += len(update.content)
        choice = CompletionChoice(
            index=update.index,
            text=update.content,
            finish_reason=update.finish_reason,  # type: ignore[arg-type]
            logprobs=logprobs,
        )
        return [self._completion([choice])]

    def usage_chunk(self) -> TextCompletion:
        return self._completion([], usage=True)
