"""``plait.Client``: the same SDK program gives the same outputs through a server as through ``plait.Runtime``
(temperature 0, float32 so that batching cannot change a greedy token); local Python tools run on the client as
client-side tools; failures surface as with Runtime; the REST wrappers."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

import plait
from plait.runtime import ProgramCancelledError, ProgramFailedError
from plait.server.uvicorn_thread import UvicornThread
from tests.sdk.program_fixtures import research
from tests.server.conftest import wait_engine_idle

API_KEY = "client-test-key"


@pytest.fixture(scope="module")
def fp32_server(default_gguf) -> Iterator[tuple[str, Any]]:
    """A server of its own on a float32 engine (the session's shares a bfloat16 one): ``(base_url, state)``."""
    from plait.engine import Engine, EngineConfig
    from plait.server import ServerConfig, create_app
    from plait.server.app import build_state

    engine = Engine(EngineConfig(model=str(default_gguf), dtype="float32", device="cpu"))
    state = build_state(ServerConfig(api_keys={API_KEY: "c"}, shutdown_grace_s=1.0), engine, tools=[server_upper])
    runner = UvicornThread(create_app(state))
    try:
        yield runner.start(), state
    finally:
        runner.stop()
        engine.close()


@plait.tool
def server_upper(text: str) -> str:
    return text.upper()


@plait.tool
def count_letters(text: str) -> int:
    """A local tool: runs in the client."""
    return sum(char.isalpha() for char in text)


@plait.tool(name="explode")
def explode(text: str) -> str:
    raise ValueError(f"cannot handle {text!r}")


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def test_program_through_client_matches_runtime(fp32_server) -> None:
    url, state = fp32_server

    async def both() -> tuple[Any, Any]:
        local = await plait.Runtime(state.engine).run(research, "bananas")
        async with plait.Client(url, api_key=API_KEY) as client:
            remote = await client.run(research, "bananas")
        return local, remote

    local, remote = run(both())
    assert remote == local
    assert remote["verdict"] in (" yes", " no") and remote["words"] == len(remote["facts"].split())
    assert wait_engine_idle(state).kv_slots_used == 0


def test_program_streams_uses_server_and_local_tools_and_branches(fp32_server) -> None:
    url, _ = fp32_server

    @plait.program
    async def shout_and_count(p: plait.Program, topic: str) -> dict:
        text = p.gen("Name one {{topic}}:", topic=topic, max_tokens=5, stop=["\n"], name="name")
        pieces = [piece async for piece in text.stream()]
        loud = p.tool("server_upper", text=text)  # a server tool, by name
        letters = p.tool(count_letters, text=loud)  # a local Python tool
        if await letters > 1000:
            raise AssertionError("unreachable")
        return {"text": text, "pieces": pieces, "loud": loud, "letters": letters, "id": p.id}

    async def main() -> Any:
        async with plait.Client(url, api_key=API_KEY) as client:
            result = await client.run(shout_and_count, "fruit")
            status = await client.get(result["id"])
            return result, status

    result, status = run(main())
    assert "".join(result["pieces"]) == result["text"] and result["loud"] == result["text"].upper()
    assert result["letters"] == sum(char.isalpha() for char in result["loud"])
    assert status["state"] == "done" and status["open"] is True
    assert [node["node"] for node in status["nodes"]] == ["name", "server_upper", "count_letters"]


def test_failures_surface_like_runtime(fp32_server) -> None:
    url, _ = fp32_server

    @plait.program
    async def handled(p: plait.Program) -> str:
        try:
            await p.tool(explode, text="x")
        except plait.VariableFailedError as error:
            return f"handled: {error.reason}"
        return "no error"

    @plait.program
    async def unhandled(p: plait.Program) -> str:
        p.tool(explode, text="y")
        await asyncio.sleep(0.5)  # the failure arrives; nobody looks at it
        return "done"

    async def main() -> Any:
        async with plait.Client(url, api_key=API_KEY) as client:
            ok = await client.run(handled)
            with pytest.raises(ProgramFailedError) as failed:
                await client.run(unhandled)
            listed = await client.list_workflows(limit=1)
            return ok, failed.value, listed["data"][0]

    ok, failed, last = run(main())
    assert ok.startswith("handled: ") and "ValueError: cannot handle 'x'" in ok
    assert "cannot handle 'y'" in str(failed.cause)
    assert last["state"] == "failed" and "cannot handle 'y'" in last["error"]


def test_run_workflow_with_a_local_tool_and_rest_wrappers(fp32_server) -> None:
    url, _ = fp32_server
    spec = {
        "name": "count",
        "inputs": {"word": "plait"},
        "nodes": [
            {"kind": "tool", "id": "up", "tool": "server_upper", "args": {"text": {"$var": "word"}}, "output": "w"},
            {"kind": "tool", "id": "n", "tool": "count_letters", "args": {"text": {"$var": "w"}}, "output": "n"},
        ],
    }

    async def main() -> Any:
        async with plait.Client(url, api_key=API_KEY, tools=[count_letters]) as client:
            outputs = await client.run_workflow(spec, inputs={"word": "weave"})
            # The same by hand: submit, see the call in the events, answer it.
            bare = plait.Client(url, api_key=API_KEY)
            submitted = await bare.submit_workflow(
                spec, client_tools=[client.client_tool_decl("count_letters")], priority=1
            )
            async for event in bare.events(submitted["id"]):
                if event.kind == "tool_call":
                    await bare.post_tool_result(submitted["id"], event.data["node"], 42)
                if event.is_final:
                    final = event
            with pytest.raises(plait.ServerError) as missing:
                await bare.get("wf-unknown")
            cancelled = await bare.submit_workflow(spec, client_tools=[client.client_tool_decl("count_letters")])
            status = await bare.cancel(cancelled["id"])
            with pytest.raises(ProgramCancelledError):
                await bare.wait_workflow(cancelled["id"])
            await bare.aclose()
            return outputs, final, missing.value, status

    outputs, final, missing, status = run(main())
    assert outputs == {"n": 5}
    assert final.kind == "done" and final.data["outputs"] == {"n": 42}
    assert missing.status == 404 and missing.field == "id"
    assert status["state"] == "cancelled"


@plait.tool
async def nap(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds


def test_cancelling_the_caller_cancels_the_remote_program(fp32_server) -> None:
    url, _ = fp32_server

    @plait.program
    async def sleepy(p: plait.Program) -> float:
        return await p.tool(nap, seconds=30.0)

    async def main() -> Any:
        async with plait.Client(url, api_key=API_KEY) as client:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(client.run(sleepy), timeout=1.0)
            return (await client.list_workflows(limit=1))["data"][0]

    last = run(main())
    assert last["name"] == "sleepy" and last["state"] == "cancelled"


def test_run_batch_keeps_input_order(fp32_server) -> None:
    url, _ = fp32_server

    @plait.program
    async def upper(p: plait.Program, word: str) -> str:
        return await p.tool("server_upper", text=word)

    async def main() -> list:
        async with plait.Client(url, api_key=API_KEY) as client:
            return await client.run_batch(upper, [{"word": "a"}, ("b",), {"word": "c"}], max_concurrency=2)

    assert run(main()) == ["A", "B", "C"]
