"""Which LLM call continues another's conversation (``kv_reuse.continues``) for text and chat prompts, and the
planner's bookkeeping after a chat-messages call that feeds a later call (its hook used to raise on chat prompts)."""

from __future__ import annotations

import asyncio
import logging

import plait
from plait.dag import LLMCall, decode_workflow, to_workflow
from plait.runtime import Executor
from plait.runtime.planning import PlanConfig
from plait.runtime.planning.kv_reuse import continues
from plait.semantic_vars import ChatPrompt, Template
from tests.runtime.conftest import wait_kv_free


def chat(*messages: tuple[str, str]) -> LLMCall:
    return LLMCall("c", ChatPrompt.from_dicts([{"role": r, "content": c} for r, c in messages]), "out")


def text(template: str) -> LLMCall:
    return LLMCall("t", Template(template), "out")


def test_text_prompts_continue_when_their_shared_leading_text_holds_a_slot():
    assert continues(text("Q: {{q}}\nThought:"), text("Q: {{q}}\nThought: {{thought}}\nAnswer:"))
    assert not continues(text("Judge this. {{a}}"), text("Judge this: {{a}}"))  # fixed text only
    assert not continues(text("Q: {{q}}"), text("Another agent. {{q}}"))


def test_chat_prompts_continue_through_equal_leading_messages():
    system = ("system", "You answer briefly.")
    question = ("user", "Question: {{question}}")
    first = chat(system, question)
    # The next turn repeats the conversation and adds the reply: it reads the first call's KV (its question).
    assert continues(first, chat(system, question, ("assistant", "{{reply}}"), ("user", "Sure?")))
    # A message that differs after a shared slot still shares the text up to there.
    assert continues(first, chat(system, ("user", "Question: {{question}} (again)")))
    # Equal fixed messages only (a shared system prompt, cached for everyone): nothing of the program's own.
    assert not continues(first, chat(system, ("user", "Grade {{reply}}")))
    # Same content under another role renders differently.
    assert not continues(first, chat(system, ("assistant", "Question: {{question}}")))


def test_a_text_prompt_and_a_chat_prompt_share_nothing():
    assert not continues(chat(("user", "{{question}} Answer briefly.")), text("{{question}} Answer briefly. {{x}}"))
    assert not continues(text("{{question}} Answer briefly."), chat(("user", "{{question}} Answer briefly.")))


@plait.tool
def word_count(text: str) -> int:
    return len(text.split())


QA_CHECK = {
    "name": "qa_check",
    "inputs": {"question": "What is the capital of France?"},
    "nodes": [
        {
            "kind": "llm",
            "id": "answer",
            "output": "reply",
            "max_tokens": 6,
            "messages": [{"role": "user", "content": "{{question}} Answer in a few words."}],
        },
        {"kind": "tool", "id": "measure", "tool": "word_count", "output": "words", "args": {"text": {"$var": "reply"}}},
        {
            "kind": "llm",
            "id": "judge",
            "output": "verdict",
            "choices": ["yes", "no"],
            "prompt": "Question: {{question}}\nAnswer: {{reply}}\nIs the answer correct? (yes/no): ",
        },
        {
            "kind": "llm",
            "id": "follow_up",
            "output": "more",
            "max_tokens": 4,
            "messages": [
                {"role": "user", "content": "{{question}} Answer in a few words."},
                {"role": "assistant", "content": "{{reply}}"},
                {"role": "user", "content": "Why?"},
            ],
        },
    ],
    "outputs": ["reply", "words", "verdict", "more"],
}


def test_a_chat_call_feeding_later_calls_keeps_the_planners_bookkeeping(tiny_engine, planner_hook_failures):
    async def main():
        executor = Executor(tiny_engine, [word_count], plan=PlanConfig())
        program = executor.start(to_workflow(decode_workflow(QA_CHECK)))
        outputs = await program.wait()
        await wait_kv_free(tiny_engine)
        return executor, outputs

    executor, outputs = asyncio.run(main())
    assert outputs["verdict"] in ("yes", "no") and outputs["words"] == len(outputs["reply"].split())
    planner = executor.planner
    assert planner.counters.hook_errors == 0 and not planner_hook_failures
    assert planner.stats()["tools"]["word_count"]["count"] == 1


def test_a_failing_planner_hook_fails_the_test(tiny_engine, planner_hook_failures, monkeypatch):
    """The suite-wide ``planner_hook_failures`` fixture sees a hook that raises (and this test then clears it)."""
    from plait.runtime.planning.planner import Planner

    def broken(self, program_id, node, record):
        raise RuntimeError("a bug in a hook")

    monkeypatch.setattr(Planner, "_node_finished", broken)

    async def main():
        executor = Executor(tiny_engine, [word_count], plan=PlanConfig())
        outputs = await executor.start(
            to_workflow(decode_workflow(QA_CHECK))
        ).wait()  # planning is advice: the program still finishes
        await wait_kv_free(tiny_engine)
        return executor, outputs

    executor, outputs = asyncio.run(main())
    assert set(outputs) == {"reply", "words", "verdict", "more"}
    assert executor.planner.counters.hook_errors == 4  # one per finished node
    assert len(planner_hook_failures) == 4
    assert all(record.levelno == logging.ERROR for record in planner_hook_failures)
    planner_hook_failures.clear()  # expected here; any other test fails on them
