"""Expected durations of calls, learned online: per-token prefill and decode times, per-tool durations.

Deadline urgency needs each stage's expected time before it runs; the TTL choice needs the cost of recomputing a
program's context. Both come from what the engine actually did (exponentially weighted averages over finished calls),
starting from priors that are only used until the first observations arrive.
"""

from __future__ import annotations

import math
from collections import deque

from plait.dag import LLMCall, Node, ToolCall
from plait.runtime.planning.tool_stats import ToolDurationStats

_EWMA = 0.2  # weight of the newest observation
_WORDS_PER_SLOT = 64  # a slot's value is unknown before its producer runs: assume a short paragraph
_CHARS_PER_TOKEN = 4


class PrefillFit:
    """Prefill seconds of a call as ``overhead_s + s_per_token * computed tokens``, fitted by least squares over the
    last ``window`` calls.

    A call's time from admission to its first token holds a fixed part (at least one scheduling step, shared with the
    batch) and a part proportional to the tokens it computes. Dividing one by the other, as a single per-token rate
    does, over-states the rate for short prefills (mostly fixed cost) and so the cost of recomputing a long context.
    Until the calls seen differ enough in size to separate the two, the rate is the ratio of the sums.
    """

    def __init__(self, s_per_token: float, window: int = 256) -> None:
        self.s_per_token = s_per_token
        self.overhead_s = 0.0
        self._points: deque[tuple[float, float]] = deque(maxlen=window)

    def observe(self, tokens: int, seconds: float) -> None:
        self._points.append((float(tokens), seconds))
        n = len(self._points)
        sum_x = sum(x for x, _ in self._points)
        sum_y = sum(y for _, y in self._points)
        if sum_x <= 0:
            return
        mean_x, mean_y = sum_x / n, sum_y / n
        var_x = sum((x - mean_x) ** 2 for x, _ in self._points)
        slope = sum((x - mean_x) * (y - mean_y) for x, y in self._points) / var_x if var_x > 0 else 0.0
        # Sizes too alike to separate fixed and per-token costs, or a fit that says tokens cost nothing: the ratio.
        if n < 8 or var_x < (0.25 * mean_x) ** 2 * n or slope <= 0:
            self.s_per_token, self.overhead_s = sum_y / sum_x, 0.0
        else:
            self.s_per_token, self.overhead_s = slope, max(0.0, mean_y - slope * mean_x)


class DurationModel:
    def __init__(self, prefill_s_per_token: float = 2e-4, decode_s_per_token: float = 0.02) -> None:
        self.prefill = PrefillFit(prefill_s_per_token)
        self.decode_s_per_token = decode_s_per_token
        self.tools = ToolDurationStats()

    @property
    def prefill_s_per_token(self) -> float:
        return self.prefill.s_per_token

    def observe_llm(self, prompt_tokens: int, prefill_s: float | None, completion_tokens: int, decode_s: float) -> None:
        """A finished call: ``prompt_tokens`` it computed (not those the prefix cache held), ``prefill_s`` from
        admission to the first token, ``decode_s`` after it."""
        if prefill_s is not None and prompt_tokens > 0 and math.isfinite(prefill_s) and prefill_s >= 0:
            self.prefill.observe(prompt_tokens, prefill_s)
        if completion_tokens > 1 and math.isfinite(decode_s) and decode_s >= 0:
            self.decode_s_per_token += _EWMA * (decode_s / (completion_tokens - 1) - self.decode_s_per_token)

    def reload_cost_s(self, tokens: int, marginal_s_per_token: float | None = None) -> float:
        """GPU seconds to recompute ``tokens`` tokens of context (what a pin saves when it is used).

        ``marginal_s_per_token``: what one more prefill token adds to a step, as the engine measured it
        (``EngineStats.prefill_s_per_token_marginal``): the work a re-prefill displaces. Without it, the per-token
        part of a prompt's latency to its first token, which also counts the steps it shares with decodes and so
        over-states that work; the fixed part is left out either way, since the next call pays it whether its
        context was kept or not."""
        rate = marginal_s_per_token if marginal_s_per_token is not None else self.prefill.s_per_token
        return tokens * rate

    def expected(self, node: Node) -> float:
        """Expected seconds for ``node`` to run, from its prompt template and max_tokens or its tool's history."""
        if isinstance(node, ToolCall):
            return self.tools.distribution(node.tool).mean()
        assert isinstance(node, LLMCall)
        return (
            self.prefill.overhead_s
            + self.prompt_tokens_estimate(node) * self.prefill_s_per_token
            + (node.constraints.max_tokens * self.decode_s_per_token)
        )

    @staticmethod
    def prompt_tokens_estimate(node: LLMCall) -> int:
        prompt = node.prompt
        text = getattr(prompt, "text", None)
        static = len(text) if isinstance(text, str) else len(prompt.static_prefix)
        return static // _CHARS_PER_TOKEN + _WORDS_PER_SLOT * len(prompt.slots)
