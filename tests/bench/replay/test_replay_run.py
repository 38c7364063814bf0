"""Replays on a real engine (the tiny dummy shape) and against a real plait server: what is measured is what ran."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest

from plait.bench.replay.http_target import HttpTarget, TargetError
from plait.bench.replay.inprocess_target import InProcessTarget
from plait.bench.replay.prompt_synthesis import expected_prefix_reuse
from plait.bench.replay.records import AgentCall, AgentSession, Trace, TraceRequest
from plait.bench.replay.replay_inputs import prepare_inputs
from plait.bench.replay.replay_run import run_replay
from plait.runtime.planning import PlanConfig
from tests.runtime.conftest import wait_kv_free

BLOCK = 8


def conversation_trace() -> Trace:
    """Mooncake-like: three conversations whose turns extend each other, plus unrelated requests, 40 ms apart."""
    requests, next_id = [], 1000
    chains = {0: [0], 1: [1], 2: [2]}
    for turn in range(4):
        for ids in chains.values():
            ids.extend([next_id, next_id + 1])
            next_id += 2
            tokens = BLOCK * (len(ids) - 1) + 5  # the last block partial
            requests.append(TraceRequest(0.04 * len(requests), tokens, 3, tuple(ids)))
            ids[-1] = next_id  # the partial block is not reused as such: the next turn has a fresh tail
            next_id += 1
        requests.append(TraceRequest(0.04 * len(requests), 20, 2, (5000 + turn, 5100 + turn, 5200 + turn)))
    return Trace("mooncake", Path("synthetic"), requests=requests, block_tokens=BLOCK)


def agent_trace() -> Trace:
    def session(name: str, arrival: float, source: str) -> AgentSession:
        text, calls = f"system prompt of {name}. ", []
        for turn in range(3):
            text += f"user turn {turn} asks something. "
            calls.append(AgentCall(0.08 * turn, text, "an answer of a few tokens"))
        return AgentSession(name, arrival, tuple(calls), source)

    sessions = [session("a", 0.0, "miniswe/a.jsonl"), session("b", 0.03, "taubench/b.jsonl")]
    return Trace("lmcache-agent", Path("synthetic"), sessions=sessions)


def inputs_for(trace: Trace, engine):
    count = lambda text: len(engine.tokenizer.encode(text, add_special_tokens=False))  # noqa: E731
    return prepare_inputs(trace, vocab_size=engine.tokenizer.vocab_size, count_tokens=count, max_context=4096)


def test_request_replay_measures_every_request_and_the_trace_prefix_reuse(tiny_engine):
    trace = conversation_trace()
    inputs = inputs_for(trace, tiny_engine)

    async def main():
        run = await run_replay(trace, inputs, InProcessTarget(tiny_engine, PlanConfig()))
        await wait_kv_free(tiny_engine)
        return run

    run = asyncio.run(main())
    assert not run.interrupted and len(run.requests) == len(trace.requests)
    for record, request in zip(run.requests, trace.requests, strict=True):
        assert record.ok, record.error
        assert record.output_tokens == request.output_tokens  # forced lengths
        assert record.sent_s >= request.arrival_s - 1e-3  # open loop: never before its arrival
        assert 0 < record.ttft_s <= record.e2e_s
    expected = expected_prefix_reuse(inputs.requests, BLOCK)
    assert expected is not None and expected > 0.3
    # The engine recomputes at most the last prompt token of a fully cached prompt.
    assert run.engine["prefix_hit_rate"] == pytest.approx(expected, abs=0.03)
    assert run.kv_usage and all(0.0 <= usage <= 1.0 for _, usage in run.kv_usage)


def test_agent_sessions_replay_as_programs_in_both_modes(tiny_engine):
    trace = agent_trace()
    inputs = inputs_for(trace, tiny_engine)

    async def main():
        runs = []
        for plan in (PlanConfig(), PlanConfig.baseline()):
            runs.append(await run_replay(trace, inputs, InProcessTarget(tiny_engine, plan)))
        await wait_kv_free(tiny_engine)
        return runs

    plait_run, baseline = asyncio.run(main())
    for run in (plait_run, baseline):
        assert [s.ok for s in run.sessions] == [True, True]
        assert len(run.requests) == 6 and all(r.ok for r in run.requests)
        for session, recorded in zip(run.sessions, trace.sessions, strict=True):
            assert session.completed_calls == 3
            assert session.jct_s >= sum(recorded.gaps_s())  # the recorded gaps ran as tool time
        calls = [r for r in run.requests if r.session_id == "a"]
        assert [c.output_tokens for c in calls] == inputs.session_outputs[0]
        assert all(a.finished_s <= b.sent_s for a, b in itertools.pairwise(calls))  # in order
    assert plait_run.engine["planner"]["pins"] > 0 and baseline.engine["planner"]["pins"] == 0
    assert plait_run.engine["prefix_hit_rate"] > 0  # every turn extends the previous prompt


def test_stopping_keeps_what_was_measured(tiny_engine):
    trace = Trace("azure", Path("synthetic"), requests=[TraceRequest(0.0, 10, 2), TraceRequest(30.0, 10, 2)])
    inputs = inputs_for(trace, tiny_engine)

    async def main():
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.5, stop.set)
        run = await run_replay(trace, inputs, InProcessTarget(tiny_engine, PlanConfig()), stop=stop)
        await wait_kv_free(tiny_engine)
        return run

    run = asyncio.run(main())
    assert run.interrupted and run.wall_s < 5
    assert run.requests[0].ok and not run.requests[1].ok and run.requests[1].error == "interrupted"


def test_time_limit_interrupts_too(tiny_engine):
    trace = Trace("azure", Path("synthetic"), requests=[TraceRequest(0.0, 10, 2), TraceRequest(30.0, 10, 2)])
    inputs = inputs_for(trace, tiny_engine)
    run = asyncio.run(run_replay(trace, inputs, InProcessTarget(tiny_engine, PlanConfig()), time_limit_s=0.5))
    assert run.interrupted and run.requests[0].ok and run.requests[1].error == "interrupted"


def test_unreachable_target_says_what_to_fix():
    async def main():
        await HttpTarget("http://127.0.0.1:9").start()

    with pytest.raises(TargetError, match=r"cannot reach http://127\.0\.0\.1:9/v1/models.*--target"):
        asyncio.run(main())


@pytest.fixture(scope="module")
def tiny_server():
    from plait.engine import Engine, EngineConfig
    from plait.server import ServerConfig, create_app
    from plait.server.app import build_state
    from plait.server.uvicorn_thread import UvicornThread
    from tests.conftest import TINY

    engine = Engine(EngineConfig(**TINY))
    runner = UvicornThread(create_app(build_state(ServerConfig(shutdown_grace_s=1.0), engine)))
    try:
        yield runner.start(), engine
    finally:
        runner.stop()
        engine.close()


def test_replay_against_a_plait_server_over_http(tiny_server):
    url, _ = tiny_server
    for trace in (conversation_trace(), agent_trace()):
        target = HttpTarget(url + "/v1")
        inputs = prepare_inputs(trace, vocab_size=512, count_tokens=target.count_tokens, max_context=None)
        run = asyncio.run(run_replay(trace, inputs, target))
        assert not run.interrupted and all(r.ok for r in run.requests), [r.error for r in run.requests]
        assert [r.output_tokens for r in run.requests] == [r.output_tokens_target for r in run.requests]
        assert not run.notes  # plait accepts ignore_eos and program_id
        assert run.kv_usage and 0.0 <= run.engine["prefix_hit_rate"] <= 1.0
        # The server's engine counters over the run (from /server_info), as an in-process replay reports them.
        assert run.engine["steps"] > 0 and "admission_stops" in run.engine and "pins" in run.engine["planner"]
        if trace.is_agent:
            assert all(s.ok and s.jct_s > 0 for s in run.sessions)
        else:
            expected = expected_prefix_reuse(inputs.requests, BLOCK)
            assert run.engine["prefix_hit_rate"] == pytest.approx(expected, abs=0.03)


def test_max_input_tokens_cuts_agent_prompts_keeping_the_shared_prefix():
    """``--max-input-tokens`` applies to agent sessions too: every prompt fits, the cut ones share one head (so
    prefix sharing across turns survives) and keep their own newest characters, and a note says why."""
    trace = agent_trace()
    whole = prepare_inputs(trace, vocab_size=512, count_tokens=len, max_context=None)
    longest = max(len(p) for prompts in whole.session_prompts for p in prompts)
    cap = longest // 2
    cut = prepare_inputs(trace, vocab_size=512, count_tokens=len, max_context=None, max_input_tokens=cap)
    for prompts, full in zip(cut.session_prompts, whole.session_prompts, strict=True):
        assert all(len(p) <= cap for p in prompts)
        for prompt, original in zip(prompts, full, strict=True):
            if prompt != original:  # cut: a head of the original, then its newest characters
                head, _, tail = prompt.partition("\n[... ")
                assert original.startswith(head) and original.endswith(tail.split(" omitted ...]\n", 1)[1])
        heads = [p.partition("\n[... ")[0] for p, f in zip(prompts, full, strict=True) if p != f]
        assert len(set(heads)) <= 1  # one head for every cut prompt of a session: its KV is shared
    assert any("--max-input-tokens" in note for note in cut.notes) and not whole.notes
