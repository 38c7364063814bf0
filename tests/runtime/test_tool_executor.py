"""The tool executor: per-attempt timeouts, retries with backoff, concurrency limits, sync and async tools,
cancellation that reaches the tool."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time

import pytest

import plait
from plait.runtime import NodeError, NodeState, ProgramCancelledError, Tool, ToolExecutor
from tests.runtime.conftest import other_tasks, wait_for


def run_tool(tool: Tool, arguments: dict, attempts: list[int] | None = None):
    return asyncio.run(ToolExecutor().run(tool, arguments, "node", (attempts if attempts is not None else []).append))


def failure(tool: Tool, arguments: dict, attempts: list[int] | None = None) -> NodeError:
    with pytest.raises(NodeError) as info:
        run_tool(tool, arguments, attempts)
    return info.value


def test_sync_and_async_tools():
    def sync_add(a: int, b: int) -> int:
        sync_add.thread = threading.current_thread()  # type: ignore[attr-defined]
        return a + b

    async def async_add(a: int, b: int) -> int:
        await asyncio.sleep(0)
        return a + b

    assert run_tool(Tool(sync_add), {"a": 2, "b": 3}) == 5
    assert sync_add.thread is not threading.main_thread()  # type: ignore[attr-defined]  # never blocks the loop
    assert run_tool(Tool(async_add), {"a": 2, "b": 3}) == 5


@pytest.mark.parametrize("is_async", [True, False])
def test_timeout_applies_per_attempt(is_async: bool):
    async def hang_async(x: int) -> int:
        await asyncio.sleep(30)
        return x

    def hang_sync(x: int) -> int:
        time.sleep(0.6)  # abandoned by the executor; the thread ends on its own
        return x

    tool = Tool(hang_async if is_async else hang_sync, name="hang", timeout_s=0.1, retries=1, retry_backoff_s=0.01)
    attempts: list[int] = []
    started = time.monotonic()
    error = failure(tool, {"x": 1}, attempts)
    elapsed = time.monotonic() - started
    assert error.kind == "tool_timeout" and error.node == "node"
    assert "tool 'hang' ran past its 0.1s timeout" in str(error)
    assert attempts == [1, 2]
    assert 0.2 <= elapsed < 0.5, elapsed  # two attempts of 0.1 s each (plus the backoff), not the tool's own time


def test_retries_with_exponential_backoff():
    calls: list[float] = []

    def flaky(x: int) -> int:
        calls.append(time.monotonic())
        if len(calls) < 4:
            raise ConnectionError(f"try {len(calls)}")
        return x * 10

    attempts: list[int] = []
    assert run_tool(Tool(flaky, retries=3, retry_backoff_s=0.05), {"x": 4}, attempts) == 40
    assert attempts == [1, 2, 3, 4]
    gaps = [later - earlier for earlier, later in itertools.pairwise(calls)]
    for gap, backoff in zip(gaps, (0.05, 0.1, 0.2), strict=True):
        assert backoff * 0.9 <= gap < backoff + 0.15, gaps  # doubling each time


def test_retries_exhausted_keep_the_last_error():
    calls: list[int] = []

    async def always(x: int) -> int:
        calls.append(x)
        raise ValueError(f"bad input {x}")

    error = failure(Tool(always, retries=2, retry_backoff_s=0.01), {"x": 7})
    assert len(calls) == 3
    assert error.kind == "tool_raised"
    assert str(error) == "node 'node' failed (tool_raised): tool 'always' raised ValueError: bad input 7"
    assert isinstance(error.__cause__, ValueError)


def test_bad_arguments_and_results_are_not_retried():
    calls: list[int] = []

    def wrong(x: int) -> int:
        calls.append(x)
        return "not a number"  # type: ignore[return-value]

    tool = Tool(wrong, retries=3, retry_backoff_s=0.01)
    error = failure(tool, {"x": "seven"})
    assert error.kind == "tool_arguments" and "`$.x`" in error.message and "'wrong'" in error.message
    assert calls == []
    error = failure(tool, {"x": 1})
    assert error.kind == "tool_result" and "does not match its return type" in error.message
    assert "'wrong'" in error.message and calls == [1]


def test_a_timeout_error_raised_by_the_tool_is_not_our_timeout():
    def connect(host: str) -> str:
        raise TimeoutError("connect timed out")

    error = failure(Tool(connect, timeout_s=5), {"host": "h"})
    assert error.kind == "tool_raised" and "TimeoutError: connect timed out" in error.message


@pytest.mark.parametrize("is_async", [True, False])
def test_concurrency_limit_holds_across_calls(is_async: bool):
    running = 0
    peak = 0
    lock = threading.Lock()

    def enter() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)

    def leave() -> None:
        nonlocal running
        with lock:
            running -= 1

    async def slow_async(i: int) -> int:
        enter()
        await asyncio.sleep(0.01)
        leave()
        return i

    def slow_sync(i: int) -> int:
        enter()
        time.sleep(0.01)
        leave()
        return i

    fn = slow_async if is_async else slow_sync

    async def main(limit: int | None) -> list[int]:
        executor = ToolExecutor()
        tool = Tool(fn, name="slow", max_concurrency=limit)
        return await asyncio.gather(*(executor.run(tool, {"i": i}, f"n{i}") for i in range(12)))

    assert asyncio.run(main(2)) == list(range(12))
    assert peak == 2
    peak = 0
    asyncio.run(main(None))
    assert peak > 2  # without a limit they do overlap, so the check above can fail


def test_async_tool_is_cancelled_with_its_program(tiny_engine):
    started = threading.Event()
    observed: list[str] = []

    @plait.tool(timeout_s=30)
    async def wait_forever(x: int) -> int:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            observed.append("cancelled")
            raise
        return x

    @plait.program
    async def waits(p):
        return await p.tool(wait_forever, x=1)

    async def main() -> None:
        before = other_tasks()
        async with plait.Runtime(tiny_engine) as rt:
            handle = rt.submit(waits)
            await wait_for(started.is_set, what="the tool to start")
            handle.cancel()
            with pytest.raises(ProgramCancelledError):
                await handle.wait()
            assert observed == ["cancelled"]
            assert handle.nodes["wait_forever"].state is NodeState.CANCELLED
            assert other_tasks() == before

    asyncio.run(main())
