"""Acceptance of the SDK on the default model: a Python program with parallel calls, a tool, a loop that branches on
generated values and selects runs through ``plait.Runtime``; the same workflow as JSON through ``plait run`` gives
the same outputs (every call is temperature 0, float32 so batching cannot change a greedy token)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
from program_fixtures import research, word_count

import plait
from plait.dag import LLMCall, decode_workflow, encode_workflow, levels
from plait.engine import Engine, EngineConfig

HERE = Path(__file__).resolve().parent
ENGINE_FLAGS = ["--dtype", "float32", "--device", "cpu"]


@pytest.fixture(scope="module")
def engine(default_gguf):
    engine = Engine(EngineConfig(model=str(default_gguf), dtype="float32", device="cpu"))
    yield engine
    engine.close()


def test_python_program_and_json_workflow_agree(engine, tmp_path: Path) -> None:
    async def run_program():
        runtime = plait.Runtime(engine)
        execution = runtime.submit(research, "bananas")
        return await execution.wait(), execution

    result, execution = asyncio.run(run_program())
    workflow = execution.workflow
    # The program really has what the acceptance asks for.
    kinds = [node.kind for node in workflow.nodes.values()]
    assert kinds.count("tool") == 1 and kinds.count("llm") >= 5
    depth = levels(workflow)
    assert depth["fact"] == depth["question"] == 0  # parallel calls
    assert result["verdict"] in (" yes", " no")
    assert result["kind"] in (" fruit", " colour", " planet")
    assert set(workflow.variables["kind"].metadata["scores"]) == {" fruit", " colour", " planet"}
    assert result["words"] == len(result["facts"].split())
    assert len(result["expansions"]) == min(2, max(0, 14 - result["words"] - 1))  # the loop's branch was taken

    # The graph the program built, as JSON, through the real CLI.
    spec = decode_workflow(encode_workflow(workflow))
    llm_outputs = [node.output for node in workflow.nodes.values() if isinstance(node, LLMCall)]
    spec.outputs = [*llm_outputs, "count"]
    path = tmp_path / "research.json"
    path.write_bytes(encode_workflow(spec))
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "plait",
            "run",
            str(path),
            "--json",
            "--model",
            str(engine.core.config.model),
            "--tools",
            f"{HERE / 'program_fixtures.py'}:word_count",
            *ENGINE_FLAGS,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr
    from_cli = json.loads(completed.stdout)
    for name in [*llm_outputs, "count"]:
        assert from_cli[name] == workflow.variables[name].value, name


def test_dependent_calls_run_server_side_and_independent_calls_share_batches(engine) -> None:
    """A 5-call chain's wall time is within 5% of its calls' engine times; independent calls share engine steps."""
    batches: list[set[str]] = []
    scheduler = engine.core.scheduler
    original = scheduler.schedule

    def recording_schedule():
        batch = original()
        if batch:
            batches.append({scheduled.seq.request_id for scheduled in batch.seqs})
        return batch

    @plait.program
    async def chain(p: plait.Program) -> str:
        text = p.gen("Count: one,", max_tokens=16, name="c0")
        for _ in range(4):
            text = p.gen("Continue: {{text}}", text=text, max_tokens=16, name="c")
        return text

    @plait.program
    async def fan(p: plait.Program) -> list:
        return [p.gen(f"Topic {i}: tell me about the sea.", max_tokens=8, name=f"f{i}") for i in range(3)]

    async def run_both():
        runtime = plait.Runtime(engine)
        chained = runtime.submit(chain)
        await chained.wait()
        fanned = runtime.submit(fan)
        await fanned.wait()
        return chained, fanned

    scheduler.schedule = recording_schedule
    try:
        chained, fanned = asyncio.run(run_both())
    finally:
        scheduler.schedule = original
    records = list(chained.nodes.values())
    assert len(records) == 5 and all(r.state.value == "done" for r in records)
    engine_time = sum(r.engine_s for r in records)
    wall = chained.record.elapsed_s
    print(f"chain: wall {wall:.3f}s, sum of engine times {engine_time:.3f}s, ratio {wall / engine_time:.4f}")
    assert wall <= 1.05 * engine_time
    fan_ids = [set(r.request_ids) for r in fanned.nodes.values()]
    together = [batch for batch in batches if all(ids & batch for ids in fan_ids)]
    print(f"fan-out: {len(together)} engine steps ran all 3 independent calls together")
    assert together, "independent calls of one program never ran in the same engine step"


def test_word_count_tool_is_typed() -> None:
    assert word_count.spec.parameters["properties"]["text"]["type"] == "string"
    assert word_count.spec.returns == {"type": "integer"}


def test_streaming_and_run_batch(engine) -> None:
    pieces: list[str] = []

    @plait.program
    async def story(p: plait.Program, topic: str, stream: bool = False) -> str:
        text = p.gen("A story about {{topic}}:", topic=topic, max_tokens=12, name="story")
        if stream:
            async for piece in text.stream():
                pieces.append(piece)
        return text

    async def scenario():
        runtime = plait.Runtime(engine)
        value = await runtime.run(story, "owls", stream=True)
        batch = await runtime.run_batch(story, [{"topic": "owls"}, ("cats",)])
        return value, batch

    value, batch = asyncio.run(scenario())
    assert len(pieces) > 1 and "".join(pieces) == value
    assert batch[0] == value  # temperature 0, float32: the same text alone and in a batch
    assert isinstance(batch[1], str)
