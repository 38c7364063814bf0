"""Expected durations of calls, learned online: per-token prefill and decode times, per-tool durations.

Deadline urgency needs each stage's expected time before it runs; the TTL choice needs the cost of recomputing a
program's context. Both come from what the engine actually did (exponentially weighted averages over finished calls),
starting from priors that are only used until the first observations arrive.
"""

from __future__ import annotations

import math

from plait.dag import LLMCall, Node, ToolCall
from plait.runtime.planning.tool_stats import ToolDurationStats

_EWMA = 0.2  # weight of the newest observation
_WORDS_PER_SLOT = 64  # a slot's value is unknown before its producer runs: assume a short paragraph
_CHARS_PER_TOKEN = 4


class DurationModel:
    def __init__(self, prefill_s_per_token: float = 2e-4, decode_s_per_token: float = 0.02) -> None:
        self.prefill_s_per_token = prefill_s_per_token
        self.decode_s_per_token = decode_s_per_token
        self.tools = ToolDurationStats()

    def observe_llm(self, prompt_tokens: int, prefill_s: float | None, completion_tokens: int, decode_s: float) -> None:
        """A finished call: ``prompt_tokens`` it computed (not those the prefix cache held), ``prefill_s`` from
        admission to the first token, ``decode_s`` after it."""
        if prefill_s is not None and prompt_tokens > 0 and math.isfinite(prefill_s) and prefill_s >= 0:
            self.prefill_s_per_token += _EWMA * (prefill_s / prompt_tokens - self.prefill_s_per_token)
        if completion_tokens > 1 and math.isfinite(decode_s) and decode_s >= 0:
            self.decode_s_per_token += _EWMA * (decode_s / (completion_tokens - 1) - self.decode_s_per_token)

    def reload_cost_s(self, tokens: int) -> float:
        """Seconds to recompute ``tokens`` tokens of context (what a pin saves when it is used)."""
        return tokens * self.prefill_s_per_token

    def expected(self, node: Node) -> float:
        """Expected seconds for ``node`` to run, from its prompt template and max_tokens or its tool's history."""
        if isinstance(node, ToolCall):
            return self.tools.distribution(node.tool).mean()
        assert isinstance(node, LLMCall)
        return self.prompt_tokens_estimate(node) * self.prefill_s_per_token + (
            node.constraints.max_tokens * self.decode_s_per_token
        )

    @staticmethod
    def prompt_tokens_estimate(node: LLMCall) -> int:
        prompt = node.prompt
        text = getattr(prompt, "text", None)
        static = len(text) if isinstance(text, str) else len(prompt.static_prefix)
        return static // _CHARS_PER_TOKEN + _WORDS_PER_SLOT * len(prompt.slots)
