"""How much KV memory a program's next call will add once its tool returns: what the planner reserves for it.

The call's prompt is the program's context so far plus what the tool returned (and, for a conversation, the previous
output as text); then it decodes. The prompt's growth is learned per tool, as an exponentially weighted average of
what the calls after that tool added to their program's context; before the first observation nothing is reserved
for it. The output is the call's ``max_tokens`` when it ignores the end-of-sequence token, else half of it (as the
engine's admission reserve counts a running request that may stop early), once per sample. A call mapped over a list
is counted once (how many items the list will hold is not known before the tool returns).
"""

from __future__ import annotations

from plait.dag import LLMCall

_EWMA = 0.2  # weight of the newest observation
_MAY_STOP_EARLY = 0.5  # share of max_tokens expected from a call that may stop at the end-of-sequence token


class NextCallGrowth:
    def __init__(self) -> None:
        self._prompt_growth: dict[str, float] = {}  # tool name -> tokens the next call's prompt adds

    def observe(self, tool: str, tokens: int) -> None:
        """A call after ``tool`` had a prompt ``tokens`` longer than its program's context when the tool started."""
        tokens = max(0, tokens)
        known = self._prompt_growth.get(tool)
        self._prompt_growth[tool] = float(tokens) if known is None else known + _EWMA * (tokens - known)

    def prompt_growth(self, tool: str) -> float:
        return self._prompt_growth.get(tool, 0.0)

    def slots(self, tool: str, call: LLMCall) -> int:
        """Slots ``call`` (run after ``tool``) is expected to add to its program's KV: prompt growth plus output."""
        constraints = call.constraints
        output = constraints.max_tokens * (1.0 if constraints.ignore_eos else _MAY_STOP_EARLY)
        return int(self.prompt_growth(tool) + output * call.n)

    def snapshot(self) -> dict[str, float]:
        """Learned prompt growth per tool (for the bench's planner stats)."""
        return {tool: round(tokens, 1) for tool, tokens in self._prompt_growth.items()}
