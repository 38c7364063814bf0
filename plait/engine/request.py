"""What callers submit to the engine and what they get back, as plain data."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from plait.engine.sampling_params import SamplingParams

_request_counter = itertools.count()


def new_request_id() -> str:
    return f"req-{next(_request_counter)}"


@dataclass
class GenerateRequest:
    """One generation. Give exactly one of ``prompt`` (text), ``prompt_token_ids``, ``prompt_pieces`` or ``messages``
    (chat).

    ``prompt_pieces``: the prompt as texts and id lists in order. Each text is tokenized on its own (the first piece
    with the tokenizer's special tokens, such as BOS); each id list is used as given. A runtime splices an earlier
    call's generated ids into a later prompt this way, so the prompt matches the KV computed while generating them
    (re-tokenizing the text can split it into other tokens).

    ``priority``: lower values are served first; equal priorities are first-come first-served. A tuple of numbers
    compares element by element (the runtime's planner gives ``(user priority, virtual time)``).
    ``program_id``, ``call_id`` (which call of the program this is: a reservation made for that call ends when it is
    admitted) and ``hints`` are plain data from the runtime (the engine never sees workflow objects).
    """

    prompt: str | None = None
    prompt_token_ids: list[int] | None = None
    messages: list[dict[str, Any]] | None = None
    prompt_pieces: list[str | list[int]] | None = None
    sampling: SamplingParams = field(default_factory=SamplingParams)
    priority: float | tuple[float, ...] = 0
    request_id: str = field(default_factory=new_request_id)
    program_id: str | None = None
    call_id: str | None = None
    hints: dict[str, Any] = field(default_factory=dict)


def priority_key(priority: float | tuple[float, ...]) -> tuple[float, ...]:
    """``priority`` as a tuple of floats, so numbers and tuples order together (a number ``p`` is ``(p,)``)."""
    values = tuple(priority) if isinstance(priority, tuple | list) else (priority,)
    if not values or any(isinstance(v, bool) or not isinstance(v, int | float) or v != v for v in values):
        raise ValueError(f"priority must be a number or a non-empty tuple of numbers (no NaN), got {priority!r}")
    return tuple(float(v) for v in values)


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)  # (token id, logprob), best first


@dataclass
class GenerateDelta:
    """What one engine step produced for one sample of a request (streamed in order).

    ``finish_reason`` is set on a sample's last delta: ``stop`` (stop string, stop token or end of sequence),
    ``length`` (max_tokens or the context window), ``abort`` (cancelled) or ``error``.
    """

    request_id: str
    index: int  # which of the n samples
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0  # so far, for this sample
    # Seconds from submission to the first time the scheduler admitted the sample (None while it has not been).
    queued_s: float | None = None
    # Prompt tokens found in the prefix cache when the sample was first admitted (the rest were computed).
    cached_tokens: int = 0
    # With SamplingParams.prompt_logprobs_start: the prompt tokens' log-probabilities, on the sample's first delta.
    prompt_logprobs: list[TokenLogprob] | None = None


@dataclass
class Completion:
    """One finished sample, assembled from its deltas."""

    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None
    logprobs: list[TokenLogprob] | None = None
    prompt_logprobs: list[TokenLogprob] | None = None


@dataclass
class GenerateResult:
    request_id: str
    prompt_tokens: int
    completions: list[Completion]

    @property
    def text(self) -> str:
        return self.completions[0].text


@dataclass
class ChoiceScore:
    """How likely the model finds one choice after the prompt (``Engine.score_choices``).

    ``logprob`` sums the log-probabilities of the choice's tokens, each given the prompt and the choice tokens before
    it; ``mean_logprob`` divides by ``num_tokens`` (a length-normalised score for choices of different lengths).
    """

    text: str
    logprob: float
    num_tokens: int
    mean_logprob: float

    @classmethod
    def from_logprobs(cls, text: str, logprobs: list[float]) -> ChoiceScore:
        total = float(sum(logprobs))
        return cls(text, total, len(logprobs), total / max(len(logprobs), 1))
