"""Acceptance 5: a tool that raises, hangs past its timeout, or returns ill-typed data fails only its node with a
clear error; cancelling a program frees all its KV and stops its tools; 100 concurrent programs with random failures
leave no leaked KV slot or task."""

from __future__ import annotations

import asyncio
import random
import threading

import pytest

import plait
from plait.runtime import NodeError, NodeState, ProgramCancelledError, ProgramFailedError, ProgramState
from plait.semantic_vars import VariableFailedError
from tests.runtime.conftest import other_tasks, wait_for, wait_kv_free


@plait.tool
def add(a: int, b: int) -> int:
    return a + b


@plait.tool
def shout(text: str) -> str:
    return text.upper()


@plait.tool
def raises(x: int) -> int:
    raise ValueError(f"no good value for {x}")


@plait.tool(timeout_s=0.1)
async def hangs(x: int) -> int:
    await asyncio.sleep(30)
    return x


@plait.tool
def ill_typed(x: int) -> int:
    return "two"  # type: ignore[return-value]


FAULTS = {"tool_raised": raises, "tool_timeout": hangs, "tool_result": ill_typed}
CLEAR = {
    "tool_raised": "tool 'raises' raised ValueError: no good value for 1",
    "tool_timeout": "tool 'hangs' ran past its 0.1s timeout",
    "tool_result": "tool 'ill_typed' returned data that does not match its return type",
}


@plait.program
async def healthy(p, topic: str):
    """LLM calls and a tool: its result must not depend on what other programs do."""
    a = p.gen("About {{topic}}:", topic=topic, max_tokens=12)
    total = p.tool(add, a=2, b=3)
    b = p.gen("{{a}} and {{total}} ->", a=a, total=total, max_tokens=8)
    return {"a": a, "total": total, "b": b}


@plait.program
async def faulty(p, fault: str):
    value = p.tool(FAULTS[fault], x=1)
    after = p.gen("Then {{value}}:", value=value, max_tokens=4)  # downstream of the failure: skipped
    return await value, after


@plait.program
async def catches(p, fault: str):
    value = p.tool(FAULTS[fault], x=1)
    try:
        return await value
    except VariableFailedError as error:
        return f"handled: {error.reason}"


@pytest.fixture(scope="module")
def expected_healthy(tiny_engine) -> dict:
    async def main():
        async with plait.Runtime(tiny_engine) as rt:
            return await rt.run(healthy, "cats")

    return asyncio.run(main())


@pytest.mark.parametrize("fault", list(FAULTS))
def test_python_fault_fails_only_its_node(tiny_engine, expected_healthy, fault):
    async def main():
        async with plait.Runtime(tiny_engine) as rt:
            bad = rt.submit(faulty, fault)
            good = [rt.submit(healthy, "cats") for _ in range(3)]
            with pytest.raises(ProgramFailedError) as info:
                await bad.wait()
            for handle in good:
                assert await handle.wait() == expected_healthy
        cause = info.value.cause
        assert isinstance(cause, VariableFailedError)
        assert f"({fault})" in str(cause) and CLEAR[fault] in str(cause), str(cause)
        value_node = next(iter(bad.nodes.values()))
        assert value_node.state is NodeState.FAILED and CLEAR[fault] in (value_node.error or "")
        assert bad.nodes["gen"].state is NodeState.SKIPPED and "upstream" in (bad.nodes["gen"].error or "")
        assert bad.state is ProgramState.FAILED and CLEAR[fault] in (bad.status()["error"] or "")
        await wait_kv_free(tiny_engine)

    asyncio.run(main())


@pytest.mark.parametrize("fault", list(FAULTS))
def test_python_program_can_handle_a_failure(tiny_engine, fault):
    async def main():
        async with plait.Runtime(tiny_engine) as rt:
            handle = rt.submit(catches, fault)
            result = await handle.wait()
        assert result.startswith("handled: ") and CLEAR[fault] in result
        assert handle.state is ProgramState.DONE
        assert next(iter(handle.nodes.values())).state is NodeState.FAILED

    asyncio.run(main())


def test_unobserved_failure_fails_the_program(tiny_engine):
    @plait.program
    async def ignores(p):
        p.tool(raises, x=1)  # never awaited
        text = p.gen("Long:", max_tokens=40)
        await text  # the tool has failed by now
        return "finished"

    async def main():
        async with plait.Runtime(tiny_engine) as rt:
            with pytest.raises(ProgramFailedError, match="no good value for 1") as info:
                await rt.run(ignores)
        assert isinstance(info.value.cause, VariableFailedError) and info.value.cause.producer == "raises"

    asyncio.run(main())


def test_downstream_of_a_failure_is_skipped(tiny_engine):
    @plait.program
    async def chain(p):
        root = p.tool(raises, x=1)
        text = p.gen("{{root}}", root=root, max_tokens=4)
        total = p.tool(shout, text=text)
        side = p.tool(add, a=1, b=1)
        try:
            await total
        except VariableFailedError as error:
            return error.reason, await side

    async def main():
        async with plait.Runtime(tiny_engine) as rt:
            handle = rt.submit(chain)
            reason, side = await handle.wait()
        states = {node: record.state for node, record in handle.nodes.items()}
        assert states == {
            "raises": NodeState.FAILED,
            "gen": NodeState.SKIPPED,
            "shout": NodeState.SKIPPED,
            "add": NodeState.DONE,
        }
        assert side == 2 and "upstream" in reason and "no good value for 1" in reason  # the root cause is kept
        assert handle.nodes["gen"].started_at is None and handle.nodes["gen"].request_ids == []

    asyncio.run(main())


def _workflow(fault_tool: str, *, fallback: bool) -> dict:
    tool_node = {"kind": "tool", "id": "fault", "tool": fault_tool, "args": {"x": 1}, "output": "value"}
    if fallback:
        tool_node |= {"on_error": "fallback", "fallback": -1}
    return {
        "name": "faults",
        "nodes": [
            tool_node,
            {"kind": "tool", "id": "plus", "tool": "add", "args": {"a": {"$var": "value"}, "b": 10}, "output": "sum"},
            {"kind": "llm", "id": "talk", "prompt": "{{sum}} is", "output": "said", "max_tokens": 4},
            {
                "kind": "llm",
                "id": "long",
                "prompt": "Independent:",
                "output": "long_text",
                "max_tokens": 8 if fallback else 3000,
            },
        ],
        "outputs": ["sum", "said"] if fallback else ["said", "long_text"],
    }


@pytest.mark.parametrize("fault", list(FAULTS))
def test_json_workflow_fail_fast(tiny_engine, expected_healthy, fault):
    async def main():
        async with plait.Runtime(tiny_engine, tools=[add, *FAULTS.values()]) as rt:
            good = rt.submit(healthy, "cats")
            handle = rt.start_workflow(_workflow(FAULTS[fault].name, fallback=False))
            with pytest.raises(ProgramFailedError) as info:
                await handle.wait()
            assert await good.wait() == expected_healthy
            await wait_kv_free(tiny_engine)  # the long call was aborted, not run to its end
        cause = info.value.cause
        assert isinstance(cause, NodeError) and cause.kind == fault and cause.node == "fault"  # the root cause
        assert CLEAR[fault] in str(info.value)
        states = {node["node"]: node["state"] for node in handle.status()["nodes"]}
        assert states == {"fault": "failed", "plus": "skipped", "talk": "skipped", "long": "cancelled"}
        assert handle.nodes["long"].completion_tokens < 3000

    asyncio.run(main())


@pytest.mark.parametrize("fault", list(FAULTS))
def test_json_workflow_fallback(tiny_engine, fault):
    async def main():
        async with plait.Runtime(tiny_engine, tools=[add, *FAULTS.values()]) as rt:
            handle = rt.start_workflow(_workflow(FAULTS[fault].name, fallback=True))
            outputs = await handle.wait()
        assert outputs["sum"] == 9 and isinstance(outputs["said"], str)
        assert handle.state is ProgramState.DONE
        assert handle.nodes["fault"].state is NodeState.FAILED and CLEAR[fault] in (handle.nodes["fault"].error or "")
        assert CLEAR[fault] in handle.workflow.variables["value"].metadata["error"]
        assert all(record.state is NodeState.DONE for node, record in handle.nodes.items() if node != "fault")

    asyncio.run(main())


def test_cancel_frees_kv_and_stops_tools(tiny_engine):
    tool_started = threading.Event()
    tool_cancelled = threading.Event()

    @plait.tool(timeout_s=60)
    async def slow_lookup(key: str) -> str:
        tool_started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            tool_cancelled.set()
            raise
        return key

    @plait.program
    async def busy(p):
        texts = [p.gen("Story {{i}}:", i=i, max_tokens=4000) for i in range(3)]
        found = p.tool(slow_lookup, key="k")
        return await found, texts

    async def main():
        before = other_tasks()
        async with plait.Runtime(tiny_engine) as rt:
            handle = rt.submit(busy)
            await wait_for(
                lambda: all(
                    r is not None and r.first_token_at for r in (handle.nodes.get(n) for n in ("gen", "gen_2", "gen_3"))
                ),
                what="every call to be generating",
            )
            await wait_for(tool_started.is_set, what="the tool to start")
            assert tiny_engine.core.kv_in_use() > 0
            events = []
            handle.subscribe(events.append)
            handle.cancel()
            with pytest.raises(ProgramCancelledError):
                await handle.wait()
            assert tool_cancelled.is_set()
            await wait_kv_free(tiny_engine)
            assert other_tasks() == before
        for node in ("gen", "gen_2", "gen_3", "slow_lookup"):
            assert handle.nodes[node].state is NodeState.CANCELLED
        for node in ("gen", "gen_2", "gen_3"):
            assert 0 < handle.nodes[node].completion_tokens < 4000 or handle.nodes[node].first_token_at
        assert [event.kind for event in events][-1] == "program_finished"
        assert {event.node for event in events[:-1]} == {"gen", "gen_2", "gen_3", "slow_lookup"}

    asyncio.run(main())


def test_cancel_before_anything_ran(tiny_engine):
    async def main():
        async with plait.Runtime(tiny_engine, tools=[add, raises]) as rt:
            handle = rt.start_workflow(_workflow("raises", fallback=False))
            handle.cancel()  # the node tasks exist but have not started
            with pytest.raises(ProgramCancelledError):
                await handle.wait()
            await wait_kv_free(tiny_engine)
        assert all(record.state is NodeState.CANCELLED for record in handle.nodes.values())
        assert all(variable.is_settled for variable in handle.workflow.variables.values())

    asyncio.run(main())


def test_cancelling_the_caller_cancels_the_program(tiny_engine):
    @plait.program
    async def long(p):
        return await p.gen("Long:", max_tokens=4000)

    async def main():
        async with plait.Runtime(tiny_engine) as rt:
            task = asyncio.create_task(rt.run(long))
            await wait_for(lambda: tiny_engine.core.kv_in_use() > 0, what="generation")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            (handle,) = rt.executor.programs.values()
            assert handle.state is ProgramState.CANCELLED
            await wait_kv_free(tiny_engine)

    asyncio.run(main())


# ---- many programs, random faults ---------------------------------------------------------------------------------


@plait.tool(timeout_s=0.05, retries=1, retry_backoff_s=0.01)
async def flaky_hang(x: int) -> int:
    await asyncio.sleep(30)
    return x


@plait.tool
async def blocker(x: int) -> int:
    await asyncio.sleep(60)  # only a cancellation ends it
    return x


@plait.program
async def mixed(p, seed: int, behaviour: str):
    first = p.gen("Program {{number}}:", number=seed, max_tokens=10 + seed % 20)
    total = p.tool(add, a=seed, b=1)
    if behaviour == "raise":
        bad = p.tool(raises, x=seed)
    elif behaviour in ("timeout", "timeout_caught"):
        bad = p.tool(flaky_hang, x=seed)
    elif behaviour == "ill_typed":
        bad = p.tool(ill_typed, x=seed)
    elif behaviour == "cancel":
        bad = p.tool(blocker, x=seed)
        p.gen("Long {{number}}:", number=seed, max_tokens=2000)  # still generating when cancelled
    else:
        bad = None
    second = p.gen("{{first}} / {{total}}:", first=first, total=total, max_tokens=6)
    if bad is not None and behaviour.endswith("_caught"):
        try:
            await bad
        except VariableFailedError:
            bad = None
    if bad is not None:
        await bad
    return {"total": await total, "second": second}


EXPECTED_STATE = {
    "ok": ProgramState.DONE,
    "timeout_caught": ProgramState.DONE,
    "raise": ProgramState.FAILED,
    "timeout": ProgramState.FAILED,
    "ill_typed": ProgramState.FAILED,
    "cancel": ProgramState.CANCELLED,
    "workflow_ok": ProgramState.DONE,
    "workflow_raise": ProgramState.FAILED,
    "workflow_cancel": ProgramState.CANCELLED,
}


def test_100_concurrent_programs_with_random_faults_leak_nothing(tiny_engine):
    rng = random.Random(2024)
    behaviours = [rng.choice(list(EXPECTED_STATE)) for _ in range(100)]

    async def main():
        before = other_tasks()
        async with plait.Runtime(tiny_engine, tools=[add, raises, blocker]) as rt:
            handles = []
            for seed, behaviour in enumerate(behaviours):
                if behaviour.startswith("workflow"):
                    tool = {"workflow_ok": "add", "workflow_raise": "raises", "workflow_cancel": "blocker"}[behaviour]
                    args = {"a": seed, "b": 1} if tool == "add" else {"x": seed}
                    spec = {
                        "nodes": [
                            {"kind": "llm", "id": "g", "prompt": f"W{seed}", "output": "g", "max_tokens": 30},
                            {"kind": "tool", "id": "t", "tool": tool, "args": args, "output": "t"},
                            {"kind": "llm", "id": "h", "prompt": "{{g}}{{t}}", "output": "h", "max_tokens": 5},
                        ],
                        "outputs": ["t", "h"],
                    }
                    handles.append(rt.start_workflow(spec))
                else:
                    handles.append(rt.submit(mixed, seed, behaviour))
            cancels = [h for h, b in zip(handles, behaviours, strict=True) if b.endswith("cancel")]

            async def cancel_later(handle, delay):
                await asyncio.sleep(delay)
                handle.cancel()

            await asyncio.gather(*(cancel_later(h, rng.uniform(0.0, 0.3)) for h in cancels))
            results = await asyncio.gather(*(h.wait() for h in handles), return_exceptions=True)
        await wait_kv_free(tiny_engine, timeout=10)
        assert other_tasks() == before
        assert len({h.program_id for h in handles}) == 100
        for seed, (handle, behaviour, result) in enumerate(zip(handles, behaviours, results, strict=True)):
            expected = EXPECTED_STATE[behaviour]
            assert handle.state is expected, (seed, behaviour, handle.status())
            assert all(record.state.finished for record in handle.nodes.values()), handle.status()
            if expected is ProgramState.DONE:
                total = result["t"] if behaviour == "workflow_ok" else result["total"]
                assert total == seed + 1
            elif expected is ProgramState.FAILED:
                assert isinstance(result, ProgramFailedError), result
                kind = {"raise": "tool_raised", "timeout": "tool_timeout", "ill_typed": "tool_result"}.get(
                    behaviour, "tool_raised"
                )
                assert f"({kind})" in str(result), result
            else:
                assert isinstance(result, ProgramCancelledError), result
        assert set(behaviours) == set(EXPECTED_STATE)  # the seed exercises every behaviour

    asyncio.run(main())
