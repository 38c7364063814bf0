"""Which of a program's KV is worth pinning: the tool calls that sit between two LLM calls of one conversation, and
the prompt prefixes other programs share (kept resident by their use, so not the program's own to hold or save)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from plait.dag import LLMCall, ToolCall, Workflow
from plait.semantic_vars import ChatPrompt, Prompt, Template


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
    templates share a leading text holding a slot (see ``continues_across``). The start of a slot counts: two
    templates parting inside it (``{{prompt_0}}``, ``{{prompt_1}}``) may still bind values that extend one another
    (an agent's recorded turns, each prompt the previous one and more)."""
    return any("{{" in text for text in _shared_template_text(before.prompt, after.prompt))


def _shared_template_text(before: Prompt, after: Prompt) -> list[str]:
    """The template text two prompts start with, in pieces (one per chat message), as far as their renderings share
    it.

    Two text prompts share their common leading text. Two chat prompts render through the same chat template, which
    writes each message as its role's header and then its content, in order: they share every leading message that
    is equal (role and content template) and, in the first message that differs, the common leading text of the
    contents when the roles match. A text prompt and a chat prompt share nothing: only one of them goes through the
    chat template, so their renderings part at the first token."""
    if isinstance(before, Template) and isinstance(after, Template):
        return [_common_prefix(before.text, after.text)]
    if not (isinstance(before, ChatPrompt) and isinstance(after, ChatPrompt)):
        return []
    shared: list[str] = []
    for earlier, later in zip(before.messages, after.messages, strict=False):
        if earlier.role != later.role:
            break
        common = _common_prefix(earlier.content.text, later.content.text)
        shared.append(common)
        if common != earlier.content.text or common != later.content.text:
            break
    return shared


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
