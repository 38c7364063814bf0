"""Size and time estimates of suite workflows, made without a tokenizer or a model.

Suites use them to size the KV pool (``kv_slots``) against the working set and to set deadlines from a program's
unloaded time. They are estimates: token counts come from a word/punctuation count (synthetic text is ~1 token a
word, see ``synthetic_text``), output lengths from ``max_tokens`` (suites force lengths with ``ignore_eos``) or from
the one text a call's grammar admits, tool result lengths from the tools' ``result_words`` argument, and times from
per-profile throughput figures.
"""

from __future__ import annotations

import math
import re
from collections.abc import Hashable, Iterable
from dataclasses import dataclass

import networkx as nx

from plait.dag import LLMCall, Node, ToolCall, Workflow, critical_path
from plait.semantic_vars import ChatPrompt, Prompt, render_value

# A letter run (long words split into two tokens), one digit, or one punctuation mark. BPE vocabularies keep common
# short words whole, split identifiers like ``singer_id`` at the underscore and numbers into digits (SmolLM2).
_PIECE = re.compile(r"[A-Za-z]{1,8}|[A-Za-z]{9,}|[0-9]|[^A-Za-z0-9\s]|\n")
_LONG_WORD = 9
# What a sim tool returns per requested word: the word plus a period every ~12 words.
TOOL_TOKENS_PER_WORD = 1.1
DEFAULT_TOOL_RESULT_TOKENS = 32


@dataclass(frozen=True)
class ProfileCosts:
    """Rough unloaded speeds of one profile: prompt tokens per second and generated tokens per second per sequence."""

    prefill_tokens_per_s: float
    decode_tokens_per_s: float


PROFILE_COSTS: dict[str, ProfileCosts] = {
    # SmolLM2-135M on the project's 2-core CPU box, measured through the runtime: prefill ~500-800 tokens/s, decode
    # ~15-23 tokens/s for one sequence (~160 tokens/s summed over a batch of 12).
    "cpu": ProfileCosts(prefill_tokens_per_s=600.0, decode_tokens_per_s=18.0),
    # Llama-3.1-8B (bf16) on one H100/H200: compute-bound prefill, ~11 ms per decode step at moderate batch.
    "gpu": ProfileCosts(prefill_tokens_per_s=12000.0, decode_tokens_per_s=90.0),
}


def approx_tokens(text: str) -> int:
    """About how many tokens ``text`` is in the Llama-3 / SmolLM2 tokenizers."""
    pieces = _PIECE.findall(text)
    return len(pieces) + sum(1 for piece in pieces if len(piece) >= _LONG_WORD)


def _prompt_parts(prompt: Prompt) -> list[tuple[str, str]]:
    """The prompt as ``("literal", text)`` and ``("slot", name)`` parts, in rendering order.

    Rendered with sentinel values and split at them, which keeps to the templates' public API."""
    slots = prompt.slots
    marker = "\x00"
    values = {slot: f"{marker}{slot}{marker}" for slot in slots}
    if isinstance(prompt, ChatPrompt):
        text = "".join(f"<{m['role']}>{m['content']}" for m in prompt.render(values))
    else:
        text = prompt.render(values)
    pieces = text.split(marker)
    return [("slot" if index % 2 else "literal", piece) for index, piece in enumerate(pieces) if piece or index % 2]


class _SegmentTrie:
    """A radix cache at segment granularity: a path of segments from the root is a cached prefix."""

    def __init__(self) -> None:
        self._children: dict[tuple[int, Hashable], int] = {}

    def insert(self, segments: list[tuple[Hashable, int]]) -> list[int]:
        """Add the path ``segments``; per segment, its tokens if it was not cached yet, else 0."""
        parent, fresh = 0, []
        for key, size in segments:
            child = self._children.get((parent, key))
            if child is None:
                child = self._children[(parent, key)] = len(self._children) + 1
                fresh.append(size)
            else:
                fresh.append(0)
            parent = child
        return fresh


class SizeEstimator:
    """Token sizes of variables, prompts and KV for a set of workflows (token counts of literals are cached)."""

    def __init__(self) -> None:
        self._literal_tokens: dict[str, int] = {}

    def tokens(self, text: str) -> int:
        """``approx_tokens`` of ``text``, cached (suites ask for the same long literals many times)."""
        cached = self._literal_tokens.get(text)
        if cached is None:
            cached = self._literal_tokens[text] = approx_tokens(text)
        return cached

    def variable_tokens(self, workflow: Workflow, name: str) -> int:
        """Estimated size of a variable's rendered value."""
        variable = workflow.variables[name]
        if variable.producer is None:
            return self.tokens(render_value(variable.value))
        node = workflow.nodes[variable.producer]
        if isinstance(node, LLMCall):
            return self.output_tokens(node)
        words = node.args.get("result_words") if isinstance(node.args, dict) else None
        if isinstance(words, int):
            return math.ceil(words * TOOL_TOKENS_PER_WORD)
        return DEFAULT_TOOL_RESULT_TOKENS

    def prompt_segments(self, workflow: Workflow, node: LLMCall) -> list[tuple[Hashable, int]]:
        """The prompt as a sequence of (identity, tokens): equal identities are equal text, so a common run of
        segments is a shared prefix. Literals are identified by their text, variables by (workflow, variable)."""
        segments: list[tuple[Hashable, int]] = []
        for kind, piece in _prompt_parts(node.prompt):
            if kind == "literal":
                segments.append((("literal", piece), self.tokens(piece)))
                continue
            bound = node.slot_binding(piece)
            names = tuple(bound) if isinstance(bound, list) else (bound,)
            size = sum(self.variable_tokens(workflow, name) for name in names) + len(names) - 1  # newlines
            segments.append((("var", workflow.name, names), size))
        return segments

    def output_tokens(self, node: LLMCall) -> int:
        """Tokens one call generates over its samples: its forced text's when a grammar admits exactly one text,
        else ``max_tokens`` (suites force lengths with ``ignore_eos``)."""
        choices = node.constraints.choices
        per_sample = self.tokens(choices[0]) if choices and len(choices) == 1 else node.constraints.max_tokens
        return per_sample * node.n

    def prompt_tokens(self, workflow: Workflow, node: LLMCall) -> int:
        """Estimated prompt length of one call (slots filled with their estimated values)."""
        return sum(size for _, size in self.prompt_segments(workflow, node))

    def footprint_tokens(self, workflow: Workflow, node: LLMCall) -> int:
        """KV tokens one call holds at its end: prompt plus generated tokens."""
        return self.prompt_tokens(workflow, node) + self.output_tokens(node)

    def node_seconds(
        self, workflow: Workflow, node: Node, costs: ProfileCosts, prefill_tokens: int | None = None
    ) -> float:
        """Unloaded time of one node: prefill (of ``prefill_tokens``, default the whole prompt) plus decode, or the
        tool's requested sleep."""
        if isinstance(node, ToolCall):
            seconds = node.args.get("seconds", 0.0) if isinstance(node.args, dict) else 0.0
            return float(seconds) if isinstance(seconds, int | float) else 0.0
        if prefill_tokens is None:
            prefill_tokens = self.prompt_tokens(workflow, node)
        decode_tokens = self.output_tokens(node) / node.n  # the samples decode side by side
        return prefill_tokens / costs.prefill_tokens_per_s + decode_tokens / costs.decode_tokens_per_s

    def uncached_prompt_tokens(self, workflow: Workflow) -> dict[str, int]:
        """Per LLM call, the prompt tokens a program running alone must prefill: its calls run in dependency order
        and reuse the KV of earlier calls' prompts and outputs (a prefix cache large enough for one program)."""
        trie = _SegmentTrie()
        uncached: dict[str, int] = {}
        for node_id in nx.topological_sort(workflow.graph):
            node = workflow.nodes[node_id]
            if isinstance(node, LLMCall):
                fresh = trie.insert([*self.prompt_segments(workflow, node), self._output_segment(workflow, node)])
                uncached[node_id] = sum(fresh[:-1])  # the output is decoded, not prefilled
        return uncached

    def unloaded_seconds(self, workflow: Workflow, costs: ProfileCosts) -> float:
        """Time along the critical path when the program runs alone on a cold engine (see
        ``uncached_prompt_tokens``)."""
        prefill = self.uncached_prompt_tokens(workflow)
        _, total = critical_path(workflow, lambda node: self.node_seconds(workflow, node, costs, prefill.get(node.id)))
        return total

    def distinct_kv_tokens(self, workflows: Iterable[Workflow]) -> int:
        """KV tokens needed to keep every call's prompt and output cached at once, counting shared prefixes once
        (a radix cache at segment granularity)."""
        trie = _SegmentTrie()
        return sum(
            sum(trie.insert([*self.prompt_segments(workflow, node), self._output_segment(workflow, node)]))
            for workflow in workflows
            for node in workflow.llm_calls()
        )

    def _output_segment(self, workflow: Workflow, node: LLMCall) -> tuple[Hashable, int]:
        """A call's generated tokens, which follow its prompt in the KV cache."""
        return ("var", workflow.name, (node.output,)), self.output_tokens(node)
