"""Replay in-process, on the tiny dummy engine: a Python program stopped mid-run continues from its journal (recorded
calls are not run again, even when its branches ran concurrently); a finished one replays without the engine; a
changed body raises ``NonDeterminismError`` naming the call; a JSON workflow resumes by node id; tools get their
idempotency key, which is not part of their schema; a recorded tool failure is replayed, not retried."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import plait
from plait.dag import decode_workflow, to_workflow
from plait.engine import Engine, EngineConfig
from plait.runtime import Executor, Journal, NonDeterminismError, ProgramCancelledError, ProgramJournal, Tool
from tests.conftest import TINY


class CountingEngine:
    """Counts the engine requests of the programs run on ``engine`` (``Engine.generate`` calls)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.requests = 0
        generate = engine.generate

        def counted(request: Any, *args: Any, **kwargs: Any) -> Any:
            self.requests += 1
            return generate(request, *args, **kwargs)

        engine.generate = counted  # type: ignore[method-assign]


@pytest.fixture(scope="module")
def counting() -> Iterator[CountingEngine]:
    engine = Engine(EngineConfig(**TINY))
    try:
        yield CountingEngine(engine)
    finally:
        engine.close()


effects: list[str] = []
gate = asyncio.Event()


@plait.tool
def record(text: str, tag: str, idempotency_key: str) -> str:
    effects.append(idempotency_key)
    return f"{tag}:{len(text)}"


@plait.tool
async def wait_for_gate() -> str:
    await gate.wait()
    return "open"


@plait.program
async def branches(p: plait.Program, topic: str) -> str:
    fact = p.gen("Topic: {{topic}}. Fact:", topic=topic, max_tokens=4, name="fact")
    question = p.gen("Topic: {{topic}}. Question:", topic=topic, max_tokens=6, name="question")

    async def branch(variable: Any, tag: str) -> Any:  # each branch waits, then calls a tool
        return p.tool(record, text=await variable, tag=tag, name=f"record_{tag}")

    first, second = await asyncio.gather(branch(fact, "f"), branch(question, "q"))
    opened = p.tool(wait_for_gate, name="gate")
    final = p.gen("{{a}} {{b}} {{c}}", a=first, b=second, c=opened, max_tokens=3, name="final")
    return await final


@plait.program
async def branches_changed(p: plait.Program, topic: str) -> str:
    fact = p.gen("Topic: {{topic}}. A fact:", topic=topic, max_tokens=4, name="fact")
    return await fact


def test_a_stopped_program_continues_from_its_journal(tmp_path: Path, counting: CountingEngine) -> None:
    path = tmp_path / "runs.sqlite3"
    effects.clear()
    gate.clear()

    async def first_run() -> None:
        runtime = plait.Runtime(counting.engine, journal=path)
        execution = runtime.submit(branches, "rivers")
        while len(effects) < 2:  # both tools ran; the program now waits at the gate
            await asyncio.sleep(0.01)
        runtime.close()  # the "crash": a cancelled durable program is not ended, it resumes next time
        with pytest.raises(ProgramCancelledError):
            await execution.wait()

    async def run_again(program: Any = branches) -> Any:
        async with plait.Runtime(counting.engine, journal=path) as runtime:
            return await runtime.run(program, "rivers")

    counting.requests = 0
    asyncio.run(first_run())
    assert counting.requests == 2 and len(effects) == 2
    gate.set()
    counting.requests = 0
    result = asyncio.run(run_again())
    assert counting.requests == 1  # only the call after the stop: fact and question were replayed
    assert sorted(effects) == sorted(set(effects)) and len(effects) == 2  # the recorded tools did not run again
    assert all(key.startswith("branches-") and key.split("/")[1] in ("record_f", "record_q") for key in effects)

    counting.requests = 0
    assert asyncio.run(run_again()) == result  # a finished run replays entirely
    assert counting.requests == 0

    with pytest.raises(NonDeterminismError, match=r"call #1 is p\.gen\(name='fact', prompt='Topic: \{\{topic\}\}\. A"):
        asyncio.run(run_again(plait.ProgramDef(branches_changed.fn, "branches")))
    assert counting.requests == 0


def test_a_workflow_resumes_by_node_id_and_replays_a_recorded_tool_failure(
    tmp_path: Path, counting: CountingEngine
) -> None:
    calls: list[str] = []

    def flaky(text: str, idempotency_key: str) -> str:
        calls.append(idempotency_key)
        raise RuntimeError("the service said no")

    spec = decode_workflow(
        {
            "name": "w",
            "inputs": {"q": "hello"},
            "nodes": [
                {"kind": "llm", "id": "a", "prompt": "{{q}}:", "output": "x", "max_tokens": 3, "ignore_eos": True},
                {"kind": "tool", "id": "t", "tool": "flaky", "args": {"text": {"$var": "x"}}, "output": "y",
                 "on_error": "fallback", "fallback": "none"},
                {"kind": "llm", "id": "b", "prompt": "{{x}} / {{y}}", "output": "z", "max_tokens": 3,
                 "ignore_eos": True},
            ],
        }
    )  # fmt: skip
    tool = Tool(flaky)
    assert "idempotency_key" not in tool.spec.parameters["properties"]  # the runtime's to fill, not the caller's

    async def run(journal: Journal) -> tuple[dict[str, Any], set[str]]:
        executor = Executor(counting.engine, [tool])
        workflow = to_workflow(spec, executor.tools.specs())
        program = executor.start(
            workflow, program_id="wf-1", journal=ProgramJournal(journal, "wf-1", journal.outcomes("wf-1"))
        )
        return await program.wait(), program.replayed

    with Journal(tmp_path / "j.sqlite3") as journal:
        counting.requests = 0
        first, replayed = asyncio.run(run(journal))
        assert counting.requests == 2 and calls == ["wf-1/t"] and replayed == set()
        assert "z" in first and [o.state for o in journal.outcomes("wf-1")] == ["done", "failed", "done"]
        counting.requests = 0
        again, replayed = asyncio.run(run(journal))
    assert again == first and replayed == {"a", "t", "b"}
    assert counting.requests == 0 and calls == ["wf-1/t"]  # the failure was replayed, not retried
