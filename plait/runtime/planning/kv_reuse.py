"""Which of a program's KV is worth pinning: the tool calls that sit between two LLM calls of one conversation, and
the prompt prefixes other programs share (kept resident by their use, so not the program's own to hold or save)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from plait.dag import LLMCall, ToolCall, Workflow


def continues_across(workflow: Workflow, tool: ToolCall) -> bool:
    """True if an LLM call right after ``tool`` reads KV of this program that an LLM call right before it left: their
    templates share a leading text that holds a slot (``{{...}}``), so the shared prefix carries the program's own
    values (a ReAct turn after its observation, a revision after the run of its candidate). Prompts that share only
    fixed text (a system prompt every program shares, cached anyway) or nothing (another agent's prompt, a vote over
    the results) read none of the program's KV: pinning it across the tool would only hold memory others need."""
    graph = workflow.graph
    earlier = [workflow.nodes[n] for n in graph.predecessors(tool.id)]
    later = [workflow.nodes[n] for n in graph.successors(tool.id)]
    return any(
        continues(before, after)
        for before in earlier
        if isinstance(before, LLMCall)
        for after in later
        if isinstance(after, LLMCall)
    )


def continues(before: LLMCall, after: LLMCall) -> bool:
    """Whether ``after``'s prompt starts with KV of ``before``'s that carries the program's own values: the two
    templates share a leading text holding a slot (see ``continues_across``)."""
    return "{{" in _common_prefix(before.prompt.text, after.prompt.text)


def _common_prefix(a: str, b: str) -> str:
    """The longest common leading text, bisected with slice comparisons (templates run to tens of thousands of
    characters)."""
    low, high = 0, min(len(a), len(b)) + 1  # invariant: a[:low] == b[:low]; a[:high] != b[:high] (or past the end)
    while high - low > 1:
        middle = (low + high) // 2
        if a[low:middle] == b[low:middle]:
            low = middle
        else:
            high = middle
    return a[:low]


class SharedPrefixes:
    """How many live programs have calls whose prompts start with each static prefix. A prefix two or more of them
    read is shared: its KV stays resident for the others (next-use hints, recency), so a pin of one program neither
    holds it nor saves its recomputation."""

    def __init__(self) -> None:
        self._programs: Counter[str] = Counter()

    def add(self, prefixes: Iterable[str]) -> None:
        """A program started whose calls read ``prefixes`` (each counted once per program)."""
        self._programs.update(set(prefixes))

    def remove(self, prefixes: Iterable[str]) -> None:
        """That program finished."""
        for prefix in set(prefixes):
            left = self._programs[prefix] - 1
            if left > 0:
                self._programs[prefix] = left
            else:
                del self._programs[prefix]

    def is_shared(self, prefix: str) -> bool:
        return self._programs[prefix] >= 2
