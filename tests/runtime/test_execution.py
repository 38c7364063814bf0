"""Program execution: node records and timings, events, fan-out and fan-in, map_over, JSON outputs, empty
workflows, program ids and the executor's history."""

from __future__ import annotations

import asyncio
import time

import pytest

import plait
from plait.dag import LLMCall, Workflow
from plait.runtime import Executor, NodeState, ProgramFailedError, ProgramState
from plait.runtime import executor as executor_module
from plait.semantic_vars import GenConstraints, Template, VariableFailedError
from tests.runtime.conftest import other_tasks, wait_kv_free


@plait.tool
def numbers(count: int) -> list[int]:
    return list(range(count))


@plait.tool
def words(count: int) -> list[str]:
    return [f"item{i}" for i in range(count)]


CHAIN = {
    "name": "chain",
    "inputs": {"topic": "cats"},
    "nodes": [
        {"kind": "llm", "id": "first", "prompt": "About {{topic}}:", "output": "a", "max_tokens": 12},
        {"kind": "tool", "id": "count", "tool": "numbers", "args": {"count": 3}, "output": "nums"},
        {"kind": "llm", "id": "second", "prompt": "{{a}} {{nums}} ->", "output": "b", "max_tokens": 7},
    ],
    "outputs": ["a", "nums", "b"],
}


def test_records_timings_status_and_events(tiny_engine):
    async def main():
        async with plait.Runtime(tiny_engine, tools=[numbers]) as rt:
            handle = rt.start_workflow(CHAIN)
            events = []
            handle.subscribe(events.append)
            outputs = await handle.wait()
        return handle, events, outputs

    handle, events, outputs = asyncio.run(main())
    assert outputs["nums"] == [0, 1, 2] and isinstance(outputs["a"], str) and isinstance(outputs["b"], str)
    status = handle.status()
    assert status["state"] == "done" and status["error"] is None and status["name"] == "chain"
    assert status["elapsed_s"] > 0 and handle.record.finished_at is not None
    nodes = {node["node"]: node for node in status["nodes"]}
    assert set(nodes) == {"first", "count", "second"}
    for name in ("first", "second"):
        node = nodes[name]
        assert node["kind"] == "llm" and node["state"] == "done" and node["attempts"] == 0
        assert node["engine_s"] > 0 and node["run_s"] >= node["engine_s"] * 0.5 and node["ttft_s"] > 0
        assert node["prompt_tokens"] > 0 and node["completion_tokens"] > 0
    assert nodes["first"]["completion_tokens"] <= 12 and nodes["second"]["completion_tokens"] <= 7
    # The rendered prompt is what the engine saw: the tool's list renders one item per line.
    expected_prompt = f"{outputs['a']} 0\n1\n2 ->"
    assert nodes["second"]["prompt_tokens"] == len(tiny_engine.tokenizer.encode(expected_prompt))
    assert nodes["count"]["kind"] == "tool" and nodes["count"]["attempts"] == 1 and nodes["count"]["engine_s"] == 0
    first, second = handle.nodes["first"], handle.nodes["second"]
    assert second.started_at is not None and first.finished_at is not None
    assert second.started_at >= first.finished_at  # a dependent call starts only after its inputs are bound
    assert len(first.request_ids) == 1 and first.request_ids != second.request_ids
    # Events: each node starts before it finishes; the program's end comes last.
    kinds = [(event.kind, event.node) for event in events]
    assert kinds[-1] == ("program_finished", None) and events[-1].state == "done"
    for name in ("first", "count", "second"):
        assert kinds.index(("node_started", name)) < kinds.index(("node_finished", name))
    assert kinds.index(("node_finished", "first")) < kinds.index(("node_started", "second"))
    assert kinds.index(("node_finished", "count")) < kinds.index(("node_started", "second"))
    assert all(event.program_id == handle.program_id for event in events)
    assert [event.at for event in events] == sorted(event.at for event in events)


def test_fan_out_fan_in_and_map_over(tiny_engine):
    @plait.program
    async def fans(p):
        samples = p.gen("Sample:", n=3, temperature=1.0, seed=7, max_tokens=5)
        items = p.tool(words, count=4)
        mapped = p.gen("Say {{item}}:", item=items, map_over="item", max_tokens=6)
        one = p.gen("Say {{item}}:", item="item2", max_tokens=6)
        merged = p.gen("All: {{parts}}.", parts=[one, items], max_tokens=3)
        return samples, mapped, await one, merged

    async def main():
        async with plait.Runtime(tiny_engine) as rt:
            handle = rt.submit(fans)
            result = await handle.wait()
        return handle, result

    handle, (samples, mapped, one, merged) = asyncio.run(main())
    assert isinstance(samples, list) and len(samples) == 3 and all(isinstance(s, str) for s in samples)
    assert handle.nodes["gen"].completion_tokens <= 15 and len(handle.nodes["gen"].request_ids) == 1
    assert isinstance(mapped, list) and len(mapped) == 4
    assert mapped[2] == one  # item order: greedy output of "Say item2:" equals the single call's
    assert len(set(mapped)) > 1  # the items did get different prompts
    assert len(handle.nodes["gen_2"].request_ids) == 4
    assert isinstance(merged, str)
    # Fan-in: a list binding renders its parts one per line (a list value's items too).
    expected = "All: " + one + "\nitem0\nitem1\nitem2\nitem3."
    assert handle.nodes["gen_4"].prompt_tokens == len(handle.services.engine.tokenizer.encode(expected))


def test_map_over_failure_cancels_the_other_items(tiny_engine):
    @plait.program
    async def mapped(p):
        items = ["short", "x" * 6000, "also short"]  # the middle prompt is longer than the model's context
        return await p.gen("Say {{item}}:", item=items, map_over="item", max_tokens=3000)

    async def main():
        before = other_tasks()
        async with plait.Runtime(tiny_engine) as rt:
            handle = rt.submit(mapped)
            started = time.monotonic()
            with pytest.raises(ProgramFailedError, match=r"\(engine\)"):
                await handle.wait()
            assert other_tasks() == before  # no item outlived its node
            await wait_kv_free(tiny_engine, timeout=2)
            assert time.monotonic() - started < 2  # the 3000-token items were aborted, not run to their end
        assert handle.nodes["gen"].state is NodeState.FAILED

    asyncio.run(main())


def test_json_outputs_are_parsed(tiny_engine):
    from plait.engine import SamplingParams

    if "json_schema" not in SamplingParams.__dataclass_fields__:
        pytest.skip("the engine has no grammar-constrained decoding")
    schema = {
        "type": "object",
        "properties": {"colour": {"enum": ["red", "green"]}},
        "required": ["colour"],
        "additionalProperties": False,
    }

    @plait.program
    async def structured(p):
        chosen = p.gen("JSON:", json_schema=schema, max_tokens=60)
        picked = p.select("Pick one:", choices=["red", "green", "blue"])
        cut = p.gen("JSON:", json_object=True, max_tokens=3)  # cannot close the object in 3 tokens
        try:
            await cut
        except VariableFailedError as error:
            cut_error = error.reason
        return await chosen, await picked, cut_error

    async def main():
        async with plait.Runtime(tiny_engine) as rt:
            return await rt.run(structured)

    chosen, picked, cut_error = asyncio.run(main())
    assert isinstance(chosen, dict) and chosen["colour"] in ("red", "green")
    assert picked in ("red", "green", "blue")
    assert "(output)" in cut_error and "not valid JSON (cut off by max_tokens" in cut_error


def test_empty_workflow_finishes_at_once(tiny_engine):
    async def main():
        async with plait.Runtime(tiny_engine) as rt:
            handle = rt.start_workflow({"name": "empty", "nodes": []})
            assert await handle.wait() == {}
            assert handle.state is ProgramState.DONE and handle.status()["nodes"] == []

    asyncio.run(main())


def test_program_ids_are_unique_and_history_is_bounded(tiny_engine, monkeypatch):
    async def quick(p):
        return await p.gen("Hi", max_tokens=1)

    async def main():
        async with plait.Runtime(tiny_engine) as rt:
            handles = [rt.submit(quick) for _ in range(20)]
            assert len({handle.program_id for handle in handles}) == 20
            with pytest.raises(ValueError, match="already in use"):
                rt.submit(quick, program_id=handles[0].program_id)
            await asyncio.gather(*(handle.wait() for handle in handles))
            monkeypatch.setattr(executor_module, "FINISHED_HISTORY", 5)
            executor = rt.executor
            blocked = asyncio.Event()

            async def waits(p):
                await blocked.wait()
                return "late"

            running = rt.submit(waits, program_id="still-running")
            kept = [rt.submit(quick, program_id=f"late-{i}") for i in range(3)]
            await asyncio.gather(*(handle.wait() for handle in kept))
            rt.submit(quick, program_id="last")  # registering forgets the oldest finished programs
            assert "still-running" in executor.programs and executor.running()[0] is running
            finished = [pid for pid, program in executor.programs.items() if program.state.finished]
            assert len(finished) == 5 and finished[-3:] == ["late-0", "late-1", "late-2"]
            assert handles[0].program_id not in executor.programs
            assert executor.cancel("still-running") and not executor.cancel("still-running")
            assert not executor.cancel("no-such-program")

    asyncio.run(main())


def test_executor_runs_a_hand_built_workflow(tiny_engine):
    async def main():
        executor = Executor(tiny_engine)
        workflow = Workflow.build(
            [LLMCall("say", Template("Say {{word}}"), "said", constraints=GenConstraints(max_tokens=4))],
            inputs={"word": "hi"},
        )
        handle = executor.start(workflow, program_id="manual")
        assert executor.programs["manual"] is handle and handle.options.program_id == "manual"
        outputs = await handle.wait()
        assert list(outputs) == ["said"] and isinstance(outputs["said"], str)
        assert handle.nodes["say"].state is NodeState.DONE
        with pytest.raises(ValueError, match="already in use"):
            executor.start(workflow, program_id="manual")

    asyncio.run(main())
