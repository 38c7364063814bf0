"""Sampling parameters of one request, validated when the request is submitted."""

from __future__ import annotations

from dataclasses import dataclass, field

from plait.engine.errors import InvalidRequestError

MAX_TOP_LOGPROBS = 20


@dataclass
class SamplingParams:
    """How to pick tokens and when to stop.

    ``temperature == 0`` is greedy. ``top_k == 0`` disables top-k; ``top_p == 1`` and ``min_p == 0`` disable theirs.
    ``seed`` makes sampling reproducible for this request whatever else is in the batch. ``logprobs`` returns the
    chosen token's log-probability (under the model's raw distribution) and ``top_logprobs`` alternatives.
    ``n`` samples share one prefill of the prompt.
    """

    max_tokens: int = 256
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: bool = False
    top_logprobs: int = 0
    n: int = 1
    skip_special_tokens: bool = True

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def validate(self, vocab_size: int) -> None:
        """Raise ``InvalidRequestError`` naming the first bad field."""
        _check(_is_int(self.max_tokens) and self.max_tokens > 0, "max_tokens", "must be a positive integer")
        _check(self.temperature >= 0.0, "temperature", f"must be >= 0, got {self.temperature}")
        _check(isinstance(self.top_k, int) and self.top_k >= 0, "top_k", f"must be an integer >= 0, got {self.top_k}")
        _check(0.0 < self.top_p <= 1.0, "top_p", f"must be in (0, 1], got {self.top_p}")
        _check(0.0 <= self.min_p <= 1.0, "min_p", f"must be in [0, 1], got {self.min_p}")
        _check(isinstance(self.n, int) and 1 <= self.n <= 128, "n", f"must be an integer in [1, 128], got {self.n}")
        _check(
            _is_int(self.top_logprobs) and 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS,
            "top_logprobs",
            f"must be in [0, {MAX_TOP_LOGPROBS}], got {self.top_logprobs}",
        )
        _check(all(isinstance(s, str) and s for s in self.stop), "stop", "stop strings must be non-empty strings")
        _check(len(self.stop) <= 16, "stop", "at most 16 stop strings")
        bad = [t for t in self.stop_token_ids if not (isinstance(t, int) and 0 <= t < vocab_size)]
        _check(not bad, "stop_token_ids", f"ids outside the vocabulary [0, {vocab_size}): {bad[:5]}")
        if self.seed is not None:
            _check(isinstance(self.seed, int) and 0 <= self.seed < 2**63, "seed", "must be an integer in [0, 2**63)")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check(condition: bool, field_name: str, message: str) -> None:
    if not condition:
        raise InvalidRequestError(field_name, message)
