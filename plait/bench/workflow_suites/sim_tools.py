"""Simulated tools for workflow suites: each sleeps for the time its call asks for and returns deterministic text.

A suite decides every tool call's duration when it builds the workflow (sampled from a trace or a distribution) and
writes it into the call's arguments, so a run's tool time is the same in plait mode and in baseline mode:

    ToolCall("act_1", tool="search", output="obs_1", args=sim_tool_args(1.7, 40, var_ref("thought_1")))

The result is ``result_words`` words of ``synthetic_text``, seeded by the tool's name and its arguments, so the same
call returns the same text in every run (and calls with different inputs return different text).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

from plait.bench.workflow_suites.synthetic_text import synthetic_text
from plait.runtime import Tool

# What each simulated tool stands for (its description in the tool registry).
SIM_TOOL_DESCRIPTIONS: dict[str, str] = {
    "search": "Simulated web or knowledge-base search: sleeps `seconds`, returns `result_words` words of results.",
    "run_code": "Simulated code or shell execution: sleeps `seconds`, returns `result_words` words of output.",
    "execute_sql": "Simulated SQL execution: sleeps `seconds`, returns `result_words` words describing the rows.",
    "lookup": "Simulated API lookup: sleeps `seconds`, returns `result_words` words of record data.",
}


def sim_tool_args(seconds: float, result_words: int, query: Any = None) -> dict[str, Any]:
    """Arguments of one simulated call; ``query`` may hold variable references (``var_ref``) so the call depends on
    the calls that produce them."""
    args: dict[str, Any] = {"seconds": round(float(seconds), 3), "result_words": int(result_words)}
    if query is not None:
        args["query"] = query
    return args


def _result_seed(name: str, seconds: float, result_words: int, query: Any) -> str:
    payload = json.dumps([name, seconds, result_words, query], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def make_sim_tool(name: str, description: str | None = None) -> Tool:
    """An async ``Tool`` named ``name`` that sleeps ``seconds`` and returns ``result_words`` words (no timeout: the
    suite chose the duration)."""

    async def simulated_tool(seconds: float, result_words: int = 40, query: Any = None) -> str:
        await asyncio.sleep(max(0.0, seconds))
        return synthetic_text(result_words, _result_seed(name, seconds, result_words, query))

    text = description if description is not None else SIM_TOOL_DESCRIPTIONS.get(name, f"Simulated tool {name!r}.")
    return Tool(simulated_tool, name=name, description=text, timeout_s=None)


def make_sim_tools(names: list[str] | tuple[str, ...]) -> list[Tool]:
    """One simulated tool per name, in order, each name once."""
    return [make_sim_tool(name) for name in dict.fromkeys(names)]
