"""Workflows and stand-in engines shared by the planning tests."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import TypeVar

import plait
from plait.cache import CacheEvent
from plait.dag import LLMCall, ToolCall, Workflow, var_ref
from plait.engine import ENGINE_COMMANDS, EngineCommand, EngineFeedback
from plait.semantic_vars import GenConstraints, Template

C = TypeVar("C")

PREFIX = "You are a careful assistant. Read the question and think step by step before answering it. "


@plait.tool
async def lookup(query: str, seconds: float = 0.05) -> str:
    await asyncio.sleep(seconds)
    return f"result for {query[:10]}"


def tool_chain(name: str, question: str, seconds: float = 0.05) -> Workflow:
    forced = GenConstraints(max_tokens=6, ignore_eos=True)
    return Workflow.build(
        [
            LLMCall("think", Template(PREFIX + "Question: {{q}}\nThought:"), "thought", constraints=forced),
            ToolCall("search", "lookup", "found", args={"query": var_ref("thought"), "seconds": seconds}),
            LLMCall(
                "answer",
                Template(PREFIX + "Question: {{q}}\nThought:{{thought}}\nObservation: {{found}}\nAnswer:"),
                "answer",
                constraints=forced,
            ),
        ],
        inputs={"q": question},
        name=name,
    )


class _NoStats:
    """Stats the planner must not read: it weighs pins by them, and pins are off."""

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"stats.{name} read without pins")


class CommandRecorder:
    """The engine surface the planner uses: records every command sent, in order, and hands out the cache events
    appended to ``events`` through its feedback, each once."""

    def __init__(self) -> None:
        self.sent: list[EngineCommand] = []
        self.events: list[CacheEvent] = []
        self.tokenizer = type("Tokenizer", (), {"encode": staticmethod(lambda text: list(text.encode()))})()

    def send(self, command: EngineCommand) -> None:
        assert isinstance(command, ENGINE_COMMANDS), command
        self.sent.append(command)

    def of(self, kind: type[C]) -> list[C]:
        """The commands of one kind sent so far, in order."""
        return [command for command in self.sent if isinstance(command, kind)]

    def feedback(self) -> EngineFeedback:
        events, self.events = tuple(self.events), []
        return EngineFeedback(self.stats(), events)  # type: ignore[arg-type]

    def stats(self) -> object:
        return _NoStats()


class PressuredEngine(CommandRecorder):
    """A 1000-slot pool: 200 slots held for requests, 200 slots allocated per second; ``lost``: the cache's count of
    tool-waiting KV lost (``tool_wait_tokens_lost``); ``fixed_share``: the engine's fitted share of a step that does
    not grow with its batch."""

    lost = 0
    fixed_share: float | None = None  # the engine's fitted step_fixed_share

    def stats(self):
        return SimpleNamespace(
            waiting=0,
            kv_slots_used=200,
            kv_slots_total=1000,
            pinned_slots=0,
            pinned_idle_slots=0,
            prefill_tokens_per_s=150.0,
            decode_tokens_per_s=50.0,
            prefill_s_per_token_marginal=1e-3,
            tool_wait_tokens_lost=self.lost,
            step_fixed_share=self.fixed_share,
        )
