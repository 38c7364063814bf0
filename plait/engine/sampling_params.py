"""Sampling parameters of one request, validated when the request is submitted."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from plait.engine.errors import InvalidRequestError

MAX_TOP_LOGPROBS = 20
MAX_PENALTY = 2.0  # presence_penalty and frequency_penalty lie in [-MAX_PENALTY, MAX_PENALTY] (OpenAI's range)
CONSTRAINT_FIELDS = ("json_schema", "json_object", "regex", "ebnf", "choices", "tools")
ANSWER_FORMATS = ("json_schema", "json_object")  # constraints that may go with tools: the format of a non-call answer


@dataclass
class SamplingParams:
    """How to pick tokens and when to stop.

    ``temperature == 0`` is greedy. ``top_k == 0`` disables top-k; ``top_p == 1`` and ``min_p == 0`` disable theirs.
    ``presence_penalty`` and ``frequency_penalty`` (OpenAI's, each in [-2, 2]; 0 disables) lower the logit of every
    token this sample has generated so far: ``logit[t] -= frequency_penalty * count[t] + presence_penalty *
    (count[t] > 0)``, before temperature and the filters (greedy rows too); the prompt's tokens do not count, and
    log-probabilities stay those of the model's raw distribution.
    ``seed`` makes sampling reproducible for this request whatever else is in the batch. ``logprobs`` returns the
    chosen token's log-probability (under the model's raw distribution) and ``top_logprobs`` alternatives.
    ``n`` samples share one prefill of the prompt.

    Constraints (at most one; see ``plait.engine.grammar``): ``json_schema`` (a dict or its JSON text),
    ``json_object`` (any JSON object), ``regex``, ``ebnf`` (xgrammar EBNF with a ``root`` rule), ``choices`` (the output
    is exactly one of the strings) and ``tools`` (OpenAI-style function specs; ``tool_choice`` is ``auto``,
    ``required``, ``none`` or ``{"type": "function", "function": {"name": ...}}``; the output format is documented in
    ``plait.engine.grammar.tools``). ``tools`` may be combined with ``json_schema`` or ``json_object``, the format of an
    answer that calls no tool (OpenAI's ``response_format`` with ``tools``): with ``tool_choice="auto"`` the output is
    either calls (as for ``required``) or a JSON answer, with ``required`` or a named choice only calls, with ``none``
    only the answer. A constrained sample finishes with ``stop`` when its grammar is complete and the model ends it,
    ``length`` when ``max_tokens`` cuts it off.

    ``prompt_logprobs_start``: also return the log-probability of each prompt token at positions ``>=`` it (each
    given the tokens before it), on the sample's first delta (``GenerateDelta.prompt_logprobs``).

    ``max_tokens`` larger than the room the context window leaves after the prompt is an ``InvalidRequestError``
    (as OpenAI and vLLM answer).
    ``parallel_tool_calls`` (with ``tools``): the output may hold one or more calls; false allows one at most.
    """

    max_tokens: int = 256
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: bool = False
    top_logprobs: int = 0
    n: int = 1
    skip_special_tokens: bool = True
    json_schema: dict[str, Any] | str | None = None
    json_object: bool = False
    regex: str | None = None
    ebnf: str | None = None
    choices: list[str] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] = "auto"
    prompt_logprobs_start: int | None = None
    parallel_tool_calls: bool = True

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def penalized(self) -> bool:
        """Whether a presence or frequency penalty applies (the sampler then reads this sample's output tokens)."""
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0

    def validate(self, vocab_size: int | None = None) -> None:
        """Raise ``InvalidRequestError`` naming the first bad field. Without ``vocab_size`` (before a model is
        loaded), every field is checked but the range of ``stop_token_ids``."""
        _check(_is_int(self.max_tokens) and self.max_tokens > 0, "max_tokens", "must be a positive integer")
        _check(self.temperature >= 0.0, "temperature", f"must be >= 0, got {self.temperature}")
        _check(isinstance(self.top_k, int) and self.top_k >= 0, "top_k", f"must be an integer >= 0, got {self.top_k}")
        _check(0.0 < self.top_p <= 1.0, "top_p", f"must be in (0, 1], got {self.top_p}")
        _check(0.0 <= self.min_p <= 1.0, "min_p", f"must be in [0, 1], got {self.min_p}")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            _check(
                _is_number(value) and -MAX_PENALTY <= value <= MAX_PENALTY,
                name,
                f"must be a number in [{-MAX_PENALTY:g}, {MAX_PENALTY:g}], got {value!r}",
            )
        _check(isinstance(self.n, int) and 1 <= self.n <= 128, "n", f"must be an integer in [1, 128], got {self.n}")
        _check(
            _is_int(self.top_logprobs) and 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS,
            "top_logprobs",
            f"must be in [0, {MAX_TOP_LOGPROBS}], got {self.top_logprobs}",
        )
        _check(all(isinstance(s, str) and s for s in self.stop), "stop", "stop strings must be non-empty strings")
        _check(len(self.stop) <= 16, "stop", "at most 16 stop strings")
        if vocab_size is not None:
            bad = [t for t in self.stop_token_ids if not (isinstance(t, int) and 0 <= t < vocab_size)]
            _check(not bad, "stop_token_ids", f"ids outside the vocabulary [0, {vocab_size}): {bad[:5]}")
        _check(isinstance(self.json_object, bool), "json_object", "must be true or false")
        _check(isinstance(self.parallel_tool_calls, bool), "parallel_tool_calls", "must be true or false")
        conflict = constraint_conflict(self.constraint_fields())
        if conflict is not None:
            raise InvalidRequestError(*conflict)
        if self.prompt_logprobs_start is not None:
            _check(
                _is_int(self.prompt_logprobs_start) and self.prompt_logprobs_start >= 1,
                "prompt_logprobs_start",
                "must be an integer >= 1 (the first prompt position whose log-probability is returned)",
            )
        if self.seed is not None:
            _check(isinstance(self.seed, int) and 0 <= self.seed < 2**63, "seed", "must be an integer in [0, 2**63)")

    def constraint_fields(self) -> list[str]:
        """Names of the constraint fields that are set."""
        names = CONSTRAINT_FIELDS
        return [n for n in names if (getattr(self, n) is True if n == "json_object" else getattr(self, n) is not None)]

    @property
    def constrained(self) -> bool:
        return bool(self.constraint_fields())


def constraint_conflict(constraints: list[str]) -> tuple[str, str] | None:
    """``(field, message)`` when the constraint fields set cannot go together, else None: at most one is set, or
    ``tools`` with one of ``ANSWER_FORMATS``."""
    answer = [name for name in constraints if name in ANSWER_FORMATS]
    if len(constraints) <= 1 or (len(constraints) == 2 and "tools" in constraints and len(answer) == 1):
        return None
    return (
        constraints[0],
        f"set at most one of {', '.join(CONSTRAINT_FIELDS)}, or tools with one of {' or '.join(ANSWER_FORMATS)} "
        f"(got {', '.join(constraints)})",
    )


def check_max_tokens_fit(max_tokens: int, prompt_tokens: int, max_context: int, field: str = "max_tokens") -> None:
    """Raise ``InvalidRequestError`` naming ``field`` when ``max_tokens`` new tokens do not fit in the context window
    after ``prompt_tokens`` (the message gives the numbers, as vLLM's does)."""
    room = max_context - prompt_tokens
    if max_tokens > room:
        raise InvalidRequestError(
            field,
            f"{max_tokens} tokens do not fit: the context window is {max_context} tokens and the prompt has "
            f"{prompt_tokens}, which leaves room for {room} ({max_tokens} > {max_context} - {prompt_tokens}); "
            f"lower {field}",
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    """An int or float that is not a bool (NaN fails every range check that uses it)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check(condition: bool, field_name: str, message: str) -> None:
    if not condition:
        raise InvalidRequestError(field_name, message)
