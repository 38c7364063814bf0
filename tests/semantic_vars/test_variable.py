"""SemanticVariable: bind/fail once, get/await, streaming, on_settled callbacks, the ``observed`` flag."""

from __future__ import annotations

import asyncio

import pytest

from plait.semantic_vars import SemanticVariable, VariableFailedError, VarState


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=5))


def test_new_variable_is_unbound() -> None:
    var = SemanticVariable("x", producer="n1", schema={"type": "string"})
    assert var.state is VarState.UNBOUND
    assert not var.is_settled
    assert var.producer == "n1"
    assert var.schema == {"type": "string"}
    assert var.consumers == []
    with pytest.raises(LookupError, match="not bound yet"):
        _ = var.value
    assert "unbound" in repr(var)


def test_bind_sets_value() -> None:
    var = SemanticVariable("x")
    var.bind({"rows": [1, 2]})
    assert var.state is VarState.BOUND
    assert var.is_settled
    assert var.value == {"rows": [1, 2]}
    assert "bound" in repr(var) and "rows" in repr(var)


def test_value_given_at_construction_binds_even_none() -> None:
    assert SemanticVariable("q", value="hello").value == "hello"
    none = SemanticVariable("n", value=None)
    assert none.state is VarState.BOUND
    assert none.value is None


def test_double_bind_is_an_error_and_keeps_first_value() -> None:
    var = SemanticVariable("x")
    var.bind(1)
    with pytest.raises(RuntimeError, match="'x' is already bound"):
        var.bind(2)
    assert var.value == 1


def test_bind_after_fail_is_an_error() -> None:
    var = SemanticVariable("x")
    var.fail("boom")
    with pytest.raises(RuntimeError, match="already failed"):
        var.bind(1)
    assert var.state is VarState.FAILED


def test_fail_after_settle_is_ignored() -> None:
    bound = SemanticVariable("x")
    bound.bind(7)
    bound.fail("late cancellation")
    assert bound.state is VarState.BOUND and bound.value == 7
    failed = SemanticVariable("y")
    failed.fail("first")
    failed.fail("second")
    assert failed.error is not None and failed.error.reason == "first"


def test_failed_value_raises_naming_variable_and_producer() -> None:
    var = SemanticVariable("sql", producer="gen_sql")
    var.fail("tool timed out")
    with pytest.raises(VariableFailedError) as caught:
        _ = var.value
    assert caught.value.variable == "sql"
    assert caught.value.producer == "gen_sql"
    assert caught.value.reason == "tool timed out"
    assert "'gen_sql'" in str(caught.value) and "tool timed out" in str(caught.value)


def test_get_and_await_wait_for_bind() -> None:
    async def main() -> list:
        var = SemanticVariable("x")
        waiters = [asyncio.ensure_future(var.get()), asyncio.ensure_future(_await(var))]
        await asyncio.sleep(0)
        assert not any(w.done() for w in waiters)
        var.bind("v")
        return await asyncio.gather(*waiters)

    assert run(main()) == ["v", "v"]


async def _await(var: SemanticVariable):
    return await var


def test_get_on_settled_variable_returns_at_once() -> None:
    async def main():
        var = SemanticVariable("x", value=[1])
        return await var, await var.get()

    assert run(main()) == ([1], [1])


def test_get_raises_when_producer_fails() -> None:
    async def main() -> None:
        var = SemanticVariable("x", producer="p")
        waiter = asyncio.ensure_future(var.get())
        await asyncio.sleep(0)
        var.fail("engine aborted")
        with pytest.raises(VariableFailedError, match="engine aborted"):
            await waiter
        with pytest.raises(VariableFailedError):
            await var  # after the fact too

    run(main())


def test_cancelling_one_waiter_leaves_others() -> None:
    async def main():
        var = SemanticVariable("x")
        first = asyncio.ensure_future(var.get())
        second = asyncio.ensure_future(var.get())
        await asyncio.sleep(0)
        first.cancel()
        await asyncio.sleep(0)
        var.bind(3)
        return first.cancelled(), await second

    assert run(main()) == (True, 3)


def test_on_settled_runs_once_on_bind_and_at_once_if_settled() -> None:
    seen: list[tuple[str, VarState]] = []
    var = SemanticVariable("x")
    var.on_settled(lambda v: seen.append(("first", v.state)))
    var.on_settled(lambda v: seen.append(("second", v.state)))
    assert seen == []
    var.bind(1)
    assert seen == [("first", VarState.BOUND), ("second", VarState.BOUND)]
    var.on_settled(lambda v: seen.append(("late", v.state)))
    assert seen[-1] == ("late", VarState.BOUND)
    assert len(seen) == 3


def test_on_settled_runs_on_fail() -> None:
    seen = []
    var = SemanticVariable("x")
    var.on_settled(lambda v: seen.append(v.error.reason if v.error else None))
    var.fail("nope")
    assert seen == ["nope"]
    var.fail("again")  # no second notification
    assert seen == ["nope"]


def test_raising_callback_does_not_starve_the_others() -> None:
    seen = []
    var = SemanticVariable("x")

    def bad(_: SemanticVariable) -> None:
        raise KeyError("consumer bug")

    var.on_settled(bad)
    var.on_settled(lambda v: seen.append(v.value))
    with pytest.raises(KeyError, match="consumer bug"):
        var.bind(5)
    assert seen == [5]
    assert var.state is VarState.BOUND


def test_observed_flag() -> None:
    async def main() -> None:
        unobserved = SemanticVariable("a")
        unobserved.on_settled(lambda v: None)  # the runtime listening is not the program looking
        unobserved.fail("x")
        assert not unobserved.observed

        via_value = SemanticVariable("b", value=1)
        assert not via_value.observed
        _ = via_value.value
        assert via_value.observed

        via_await = SemanticVariable("c", value=1)
        await via_await
        assert via_await.observed

        via_stream = SemanticVariable("d", value="t")
        assert [piece async for piece in via_stream.stream()] == ["t"]
        assert via_stream.observed

        failed = SemanticVariable("e")
        failed.fail("boom")
        with pytest.raises(VariableFailedError):
            await failed.get()
        assert failed.observed

    run(main())


# ---- streaming ------------------------------------------------------------------------------------------------------


def test_stream_subscribed_before_text() -> None:
    async def main() -> list[str]:
        var = SemanticVariable("x")
        pieces: list[str] = []

        async def consume() -> None:
            async for piece in var.stream():
                pieces.append(piece)

        task = asyncio.ensure_future(consume())
        await asyncio.sleep(0)
        for piece in ("Hel", "lo", "", " world"):
            var.publish(piece)
            await asyncio.sleep(0)
        var.bind("Hello world")
        var.publish("ignored after bind")
        await task
        return pieces

    assert run(main()) == ["Hel", "lo", " world"]


def test_stream_subscribed_midway_gets_backlog_first() -> None:
    async def main() -> list[str]:
        var = SemanticVariable("x")
        var.publish("a")
        var.publish("b")
        stream = var.stream()
        first = await stream.__anext__()
        var.publish("c")
        var.bind("abc")
        return [first] + [piece async for piece in stream]

    assert run(main()) == ["ab", "c"]


def test_stream_after_bind_yields_streamed_text_once() -> None:
    async def main() -> list[str]:
        var = SemanticVariable("x")
        var.publish("p1")
        var.publish("p2")
        var.bind("p1p2")
        return [piece async for piece in var.stream()]

    assert run(main()) == ["p1p2"]


def test_stream_of_unstreamed_value_yields_its_text() -> None:
    async def main():
        text = SemanticVariable("t", value="plain")
        obj = SemanticVariable("o", value={"a": [1, 2]})
        rows = SemanticVariable("r", value=["x", "y"])
        none = SemanticVariable("n", value=None)
        return (
            [p async for p in text.stream()],
            [p async for p in obj.stream()],
            [p async for p in rows.stream()],
            [p async for p in none.stream()],
        )

    # Non-text values stream as the text they contribute to a prompt (JSON, lists one item per line).
    assert run(main()) == (["plain"], ['{"a":[1,2]}'], ["x\ny"], [])


def test_stream_of_tool_result_bound_later() -> None:
    async def main() -> list[str]:
        var = SemanticVariable("x")
        task = asyncio.ensure_future(_collect(var))
        await asyncio.sleep(0)
        var.bind(42)
        return await task

    assert run(main()) == ["42"]


async def _collect(var: SemanticVariable) -> list[str]:
    return [piece async for piece in var.stream()]


def test_stream_raises_on_failure_after_partial_text() -> None:
    async def main() -> None:
        var = SemanticVariable("x", producer="gen")
        got: list[str] = []

        async def consume() -> None:
            async for piece in var.stream():
                got.append(piece)

        task = asyncio.ensure_future(consume())
        await asyncio.sleep(0)
        var.publish("partial")
        await asyncio.sleep(0)
        var.fail("cancelled")
        with pytest.raises(VariableFailedError, match="cancelled"):
            await task
        assert got == ["partial"]
        with pytest.raises(VariableFailedError):  # subscribing after the failure raises too
            await _collect(var)

    run(main())


def test_several_streams_each_get_everything() -> None:
    async def main():
        var = SemanticVariable("x")
        tasks = [asyncio.ensure_future(_collect(var)) for _ in range(3)]
        await asyncio.sleep(0)
        var.publish("a")
        var.publish("b")
        var.bind("ab")
        return await asyncio.gather(*tasks)

    assert run(main()) == [["a", "b"]] * 3
