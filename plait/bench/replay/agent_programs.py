"""An agent session as a plait program: its LLM calls in order, the recorded gap between calls as a tool call.

Call ``i``'s prompt is the session's real prompt text, passed as an input variable (so no character of the text is
read as template syntax), followed by the previous tool's result, which is empty: the prompt the engine sees is
exactly the recorded one. The tool ``env.<source>`` sleeps the recorded gap and depends on call ``i``'s output, so the
program runs call, tool, call, ... in order, and the planner sees a tool call after each LLM call (it may keep the
KV across it, with a TTL learned from that tool's observed durations). Each call generates exactly the number of
tokens its recorded output has (``ignore_eos``, greedy).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Sequence

from plait.bench.replay.records import AgentSession
from plait.dag import LLMCall, Node, ToolCall, Workflow, var_ref
from plait.runtime import Tool
from plait.semantic_vars import GenConstraints, Template


def tool_name_for(source: str) -> str:
    """The simulated environment tool of a session from ``source``: named after the folder holding its file
    (``lmcache_agent/miniswe/abc.jsonl`` -> ``env.miniswe``), so each agent kind's tool durations are learned
    separately (one tool per session would never learn anything)."""
    parts = [part for part in source.replace("\\", "/").split("/") if part]
    folder = parts[-2] if len(parts) >= 2 else "agent"
    return "env." + (re.sub(r"[^A-Za-z0-9_-]", "_", folder)[:48] or "agent")


def make_gap_tool(name: str) -> Tool:
    """A tool that sleeps the recorded gap and returns an empty string (the next prompt is the recorded text)."""

    async def recorded_gap(seconds: float, after: str = "") -> str:
        await asyncio.sleep(max(0.0, seconds))
        return ""

    return Tool(recorded_gap, name=name, description="Waits the recorded time between two agent calls.", timeout_s=None)


def session_workflow(
    session: AgentSession, output_tokens: Sequence[int], prompts: Sequence[str] | None = None
) -> Workflow:
    """The program of ``session``: ``call_i`` generates ``output_tokens[i]`` tokens from ``prompts[i]`` (default: the
    recorded inputs), then ``gap_i`` waits the recorded gap before ``call_{i+1}``."""
    texts = list(prompts) if prompts is not None else [call.input_text for call in session.calls]
    if len(texts) != len(session.calls) or len(output_tokens) != len(session.calls):
        raise ValueError("one prompt and one output length per call of the session")
    tool = tool_name_for(session.source)
    gaps = session.gaps_s()
    nodes: list[Node] = []
    inputs: dict[str, str] = {}
    for i, (text, tokens) in enumerate(zip(texts, output_tokens, strict=True)):
        inputs[f"prompt_{i}"] = text
        prompt = f"{{{{prompt_{i}}}}}" + (f"{{{{gap_{i - 1}}}}}" if i else "")
        constraints = GenConstraints(max_tokens=max(1, int(tokens)), ignore_eos=True, temperature=0.0)
        nodes.append(LLMCall(f"call_{i}", Template(prompt), f"out_{i}", constraints=constraints))
        if i < len(gaps):
            args = {"seconds": round(gaps[i], 3), "after": var_ref(f"out_{i}")}
            nodes.append(ToolCall(f"gap_{i}", tool, f"gap_{i}", args=args))
    last = f"out_{len(texts) - 1}"
    name = "session-" + re.sub(r"[^A-Za-z0-9_-]", "_", session.session_id)[:48]
    return Workflow.build(nodes, inputs=inputs, outputs=[last], name=name)


_NOTE_TOKENS = 16  # the most tokens the note of dropped characters takes


def cap_prompts(
    session: AgentSession, count_tokens: Callable[[str], int], max_prompt_tokens: int
) -> tuple[list[str], bool]:
    """The session's prompts cut so that none exceeds ``max_prompt_tokens``; whether any was cut.

    A prompt that is too long keeps a head and its newest tail, with a note of how many characters were dropped
    between them, as an agent that truncates the middle of its history does: the head is the same character prefix
    for every cut prompt of the session (so prefix sharing across turns survives the cut), the tail (at most a quarter
    of the budget) is the prompt's own last characters, and the note makes two cut prompts of different lengths
    different texts (an agent that repeats itself ends two prompts the same).
    """
    texts = [call.input_text for call in session.calls]
    too_long = {i for i, text in enumerate(texts) if count_tokens(text) > max_prompt_tokens}
    if not too_long:
        return texts, False
    tail_budget = max_prompt_tokens // 4 - _NOTE_TOKENS
    tails = {i: _characters_within(texts[i], count_tokens, tail_budget, newest=True) for i in too_long}
    longest = max((texts[i] for i in too_long), key=len)
    head = _characters_within(longest, count_tokens, max_prompt_tokens - tail_budget, newest=False)
    while True:  # tokens may merge differently across the joint: shrink the head until every prompt fits
        capped = [text if i not in too_long else _drop_middle(text, head, tails[i]) for i, text in enumerate(texts)]
        if all(count_tokens(text) <= max_prompt_tokens for text in capped) or head <= 1:
            return capped, True
        head = max(1, int(head * 0.95))


def _drop_middle(text: str, head: int, tail: int) -> str:
    """``text``'s first ``head`` and last ``tail`` characters, with a note of how many were dropped between them."""
    start = max(head, len(text) - tail)
    return f"{text[:head]}\n[... {start - head} characters omitted ...]\n{text[start:]}"


def _characters_within(text: str, count_tokens: Callable[[str], int], budget: int, *, newest: bool) -> int:
    """The most leading (or, with ``newest``, trailing) characters of ``text`` that fit in ``budget`` tokens."""
    low, high = 0, len(text)
    while low < high:
        middle = (low + high + 1) // 2
        if count_tokens(text[len(text) - middle :] if newest else text[:middle]) <= budget:
            low = middle
        else:
            high = middle - 1
    return low
