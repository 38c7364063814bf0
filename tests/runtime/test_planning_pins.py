"""Program-level planning, the KV side: which tool calls pin, what a pin weighs (the program's own tokens, the chance
of losing them), the priority it carries, next-use hints, the timeline, and baseline mode sending none of it."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace
from typing import Any

import pytest

from plait.dag import LLMCall, ToolCall, Workflow, var_ref
from plait.engine import HintNextUse, Pin, Reserve, Unpin, Unreserve
from plait.engine.request import priority_key
from plait.runtime import Executor
from plait.runtime.planning import PlanConfig
from plait.runtime.timeline import TimelineKind
from plait.semantic_vars import GenConstraints, Template
from tests.runtime.conftest import wait_for, wait_kv_free
from tests.runtime.planning_fixtures import PREFIX, CommandRecorder, PressuredEngine, lookup, tool_chain


def test_pins_only_where_the_call_after_the_tool_reads_the_programs_kv():
    from plait.runtime.planning.kv_reuse import continues_across

    forced = GenConstraints(max_tokens=4, ignore_eos=True)

    def chain(after: str) -> Workflow:
        return Workflow.build(
            [
                LLMCall("think", Template(PREFIX + "Q: {{q}}\nThought:"), "thought", constraints=forced),
                ToolCall("search", "lookup", "found", args={"query": var_ref("thought")}),
                LLMCall("next", Template(after), "answer", constraints=forced),
            ],
            inputs={"q": "why"},
            outputs=["answer"],
        )

    tool = ToolCall("search", "lookup", "found", args={"query": var_ref("thought")})
    assert continues_across(chain(PREFIX + "Q: {{q}}\nThought:{{thought}}\nSeen: {{found}}\nAnswer:"), tool)
    assert continues_across(chain(PREFIX + "Q: {{q}} again, given {{found}}:"), tool)  # shares the question
    assert not continues_across(chain(PREFIX + "Judge {{thought}} and {{found}}:"), tool)  # fixed text only
    assert not continues_across(chain("Another agent. {{found}}"), tool)


def test_planner_pins_hints_and_records_a_timeline(tiny_engine, tmp_path, monkeypatch):
    from plait.runtime.planning.planner import Planner

    # A pool under pressure: unpinned KV would be evicted at once (the horizon is tested on its own below).
    monkeypatch.setattr(Planner, "_eviction_horizon_s", lambda self, plan, stats: 0.0)

    async def main():
        executor = Executor(tiny_engine, [lookup], plan=PlanConfig(dedup=False))
        programs = [executor.start(tool_chain(f"p{i}", f"question {i}")) for i in range(3)]
        for program in programs:
            await program.wait()
        await wait_kv_free(tiny_engine)
        # The unpin travels through the engine's command queue after the answer's KV is already free.
        await wait_for(lambda: tiny_engine.stats().pinned_slots == 0, timeout=2.0, what="the unpins")
        return executor, programs

    executor, programs = asyncio.run(main())
    planner = executor.planner
    assert planner.counters.pins == 3 and planner.counters.hook_errors == 0
    assert planner.counters.next_use_hints > 0 and planner.counters.prefix_hints > 0
    assert planner.stats()["tools"]["lookup"]["count"] == 3
    events = planner.timeline.events(programs[0].program_id)
    kinds = {event.kind for event in events}
    assert {TimelineKind.QUEUED, TimelineKind.PREFILL, TimelineKind.DECODE, TimelineKind.TOOL} <= kinds
    assert {TimelineKind.PINNED, TimelineKind.PROGRAM} <= kinds
    pinned = next(e for e in events if e.kind is TimelineKind.PINNED)
    assert pinned.args["tool"] == "lookup" and pinned.end is not None and pinned.end >= pinned.start
    tool = next(e for e in events if e.kind is TimelineKind.TOOL)
    assert tool.end is not None and pinned.end <= tool.end + 0.05  # the pin ends when the tool returns
    path = planner.timeline.write_chrome_trace(tmp_path / "trace.json")
    trace = json.loads(path.read_text())
    names = {e["args"]["name"] for e in trace["traceEvents"] if e.get("name") == "process_name"}
    assert {program.program_id for program in programs} <= names


def test_baseline_sends_no_hints_and_no_pins(tiny_engine):
    async def main():
        executor = Executor(tiny_engine, [lookup], plan=PlanConfig.baseline())
        program = executor.start(tool_chain("base", "question"))
        await program.wait()
        await wait_kv_free(tiny_engine)
        return executor

    planner = asyncio.run(main()).planner
    assert planner.dedup is None
    assert planner.counters.pins == planner.counters.next_use_hints == planner.counters.prefetches == 0


def test_a_program_waiting_on_a_tool_hints_when_the_tool_should_return():
    """Next-use hints carry the seconds until the program's tool is expected back (the tool's mean duration), so the
    cache evicts the program whose tool returns last among programs the same steps away; none once it returned."""
    from plait.runtime.planning.planner import Planner
    from plait.runtime.states import NodeRecord, NodeState

    engine = CommandRecorder()
    planner = Planner(engine, PlanConfig(tool_pins=False, dedup=False))  # type: ignore[arg-type]
    for seconds in (2.0, 2.0, 2.0):
        planner.durations.tools.record("lookup", seconds)
    workflow = tool_chain("p", "question")
    planner.program_started("p", workflow)
    planner.node_finished("p", workflow.nodes["think"], NodeRecord(node_id="think", kind="llm", state=NodeState.DONE))
    planner.node_started("p", workflow.nodes["search"])
    hint = next(c for c in reversed(engine.sent) if getattr(c, "program_id", None) == "p")
    assert isinstance(hint, HintNextUse) and hint.steps == 1.0
    expected = planner.durations.expected(workflow.nodes["search"])
    assert hint.seconds is not None and expected > 0.5 and expected - 0.5 <= hint.seconds <= expected
    record = NodeRecord(node_id="search", kind="tool", state=NodeState.DONE, started_at=0.0, finished_at=2.0)
    planner.node_finished("p", workflow.nodes["search"], record)
    hint = next(c for c in reversed(engine.sent) if getattr(c, "program_id", None) == "p")
    assert isinstance(hint, HintNextUse) and hint.steps == 0.0 and hint.seconds is None
    assert planner.counters.hook_errors == 0


def test_a_pin_weighs_only_the_programs_own_kv_and_the_room_evicted_before_it():
    """A prompt prefix other live programs read is not the program's to hold or to save; the horizon is the room
    evicted before the program's KV (free and cached slots less its own and other tool-waiting programs') over the
    allocation rate."""
    from plait.runtime.planning.planner import Planner
    from plait.runtime.states import NodeRecord, NodeState

    planner = Planner(PressuredEngine(), PlanConfig(dedup=False))  # type: ignore[arg-type]
    workflow = tool_chain("p", "question")
    think = workflow.nodes["think"]

    def finish_think(program_id: str) -> None:
        record = NodeRecord(node_id="think", kind="llm", state=NodeState.DONE, started_at=0.0, finished_at=1.0)
        record.prompt_tokens, record.completion_tokens = 150, 6
        planner.node_finished(program_id, think, record)

    planner.program_started("alone", workflow)
    finish_think("alone")
    assert planner._plans["alone"].private_tokens == 156  # nobody else reads its prefix: all of it is its own
    planner.program_started("other", tool_chain("other", "another question"))
    finish_think("alone")
    prefix_tokens = len(planner._prefix_token_ids(think.prompt.static_prefix))
    assert prefix_tokens > 64
    assert planner._plans["alone"].private_tokens == 156 - prefix_tokens
    planner.program_finished("other", "done", 0.0, 1.0)
    finish_think("alone")
    assert planner._plans["alone"].private_tokens == 156  # the other program is gone: the prefix is its own again

    stats = planner.engine.stats()
    plan = planner._plans["alone"]
    assert planner._eviction_horizon_s(plan, stats) == pytest.approx((800 - 156) / 200)
    planner.program_started("waiting", workflow)
    finish_think("waiting")
    waiting = planner._plans["waiting"]
    waiting.tools_running["search"] = 1.0  # waiting on its tool, unpinned: its KV is needed about as soon
    # Both programs read the prefix now: their own KV is what follows it.
    assert waiting.private_tokens == 156 - prefix_tokens
    assert planner._eviction_horizon_s(plan, stats) == pytest.approx((800 - 156 - waiting.private_tokens) / 200)
    waiting.pin_until = time.monotonic() + 5.0  # pinned KV is out of the room already (the engine's pinned slots)
    assert planner._eviction_horizon_s(plan, stats) == pytest.approx((800 - 156) / 200)
    waiting.pin_until = time.monotonic() - 1.0  # a pin that ran out: its KV is warm again, not pinned
    assert planner._eviction_horizon_s(plan, stats) == pytest.approx((800 - 156 - waiting.private_tokens) / 200)
    assert planner.counters.hook_errors == 0


def test_a_pin_carries_the_priority_of_the_programs_next_call(monkeypatch):
    """The engine lets a prompt take the pinned memory of pins it outranks, so the planner's pin hint names
    the priority the call after the tool will be submitted with."""
    from plait.runtime.planning.planner import Planner
    from plait.runtime.states import NodeRecord, NodeState

    monkeypatch.setattr(Planner, "_eviction_horizon_s", lambda self, plan, stats: 0.0)  # the KV would be lost
    engine = PressuredEngine()
    planner = Planner(engine, PlanConfig(dedup=False))  # type: ignore[arg-type]
    workflow = tool_chain("p", "question")
    planner.program_started("p", workflow)
    record = NodeRecord(node_id="think", kind="llm", state=NodeState.DONE, started_at=0.0, finished_at=1.0)
    record.prompt_tokens, record.completion_tokens = 150, 6
    planner.node_finished("p", workflow.nodes["think"], record)
    planner.node_started("p", workflow.nodes["search"])
    pins = engine.of(Pin)
    assert len(pins) == 1 and pins[0].program_id == "p" and pins[0].ttl_s > 0
    assert pins[0].priority == priority_key(planner.request_options("p", workflow.nodes["answer"]).priority)
    assert planner.counters.pins == 1 and planner.counters.hook_errors == 0


def test_a_refused_pin_brings_the_context_back_into_the_reservation(monkeypatch):
    """A pin beyond the engine's budget is refused, and the engine says so (a ``pin_refused`` cache event). The
    planner then stops counting the context as kept: the reservation, which left the context to the pin, takes it in
    again while the tool runs, and no unpin follows."""
    from plait.cache.radix_node import CacheEvent
    from plait.runtime.planning.planner import Planner
    from plait.runtime.states import NodeRecord, NodeState

    monkeypatch.setattr(Planner, "_eviction_horizon_s", lambda self, plan, stats: 0.0)  # the KV would be lost
    engine = PressuredEngine()
    planner = Planner(engine, PlanConfig(dedup=False))  # type: ignore[arg-type]
    for program in ("p", "q"):
        workflow = tool_chain(program, "question")
        planner.program_started(program, workflow)
        record = NodeRecord(node_id="think", kind="llm", state=NodeState.DONE, started_at=0.0, finished_at=1.0)
        record.prompt_tokens, record.completion_tokens = 150, 6
        planner.node_finished(program, workflow.nodes["think"], record)
    workflow = planner._plans["p"].workflow
    planner.node_started("p", workflow.nodes["search"])
    (reserve,) = engine.of(Reserve)
    context = planner._plans["p"].private_tokens
    assert planner.counters.pins == 1 and context > 0

    engine.events.append(CacheEvent(time.monotonic(), "pin_refused", ("p",), context))
    other = planner._plans["q"].workflow
    planner.node_started("q", other.nodes["search"])  # any later hook reads the engine's events
    planner.node_finished("q", other.nodes["search"], NodeRecord(node_id="search", kind="tool", state=NodeState.DONE))
    again = [c for c in engine.of(Reserve) if c.program_id == "p"]
    assert again[-1] == replace(reserve, slots=reserve.slots + context)
    assert planner._plans["p"].pin_until == 0.0 and planner.counters.pins_refused == 1

    before = len(engine.sent)
    tool = NodeRecord(node_id="search", kind="tool", state=NodeState.DONE, started_at=1.0, finished_at=2.0)
    planner.node_finished("p", workflow.nodes["search"], tool)
    assert Unpin("p") not in engine.sent[before:]  # nothing is pinned to take back
    assert planner.counters.hook_errors == 0


def test_the_eviction_horizon_is_learned_from_what_the_cache_loses_once_waits_are_seen():
    """Each tool wait exposes the program's own KV for its duration; the cache counts what such KV lost (or would
    have, but for a pin). Once enough waits are seen, their ratio replaces the snapshot of free room."""
    from plait.runtime.planning.planner import Planner
    from plait.runtime.states import NodeRecord, NodeState

    engine = PressuredEngine()
    planner = Planner(engine, PlanConfig(dedup=False))  # type: ignore[arg-type]
    planner.tool_wait_loss.min_waits = 0.5  # one wait is enough here (decay leaves a hair less than 1)
    workflow = tool_chain("p", "question")
    planner.program_started("p", workflow)
    record = NodeRecord(node_id="think", kind="llm", state=NodeState.DONE, started_at=0.0, finished_at=1.0)
    record.prompt_tokens, record.completion_tokens = 150, 6
    planner.node_finished("p", workflow.nodes["think"], record)
    plan = planner._plans["p"]
    stats = engine.stats()
    assert planner._eviction_horizon_s(plan, stats) == pytest.approx((800 - 156) / 200)  # no waits yet: snapshot

    planner.node_started("p", workflow.nodes["search"])
    plan.waiting_since -= 2.0  # the tool ran two seconds
    tool = NodeRecord(node_id="search", kind="tool", state=NodeState.DONE, started_at=0.0, finished_at=2.0)
    planner.node_finished("p", workflow.nodes["search"], tool)
    assert planner.tool_wait_loss.exposure_token_s == pytest.approx(156 * 2.0, rel=0.01)
    assert planner._eviction_horizon_s(plan, engine.stats()) == float("inf")  # nothing was lost: pins save nothing
    engine.lost = 78  # the cache lost (or kept only by pins) 78 tokens of tool-waiting KV since
    assert planner._eviction_horizon_s(plan, engine.stats()) == pytest.approx(156 * 2.0 / 78, rel=0.01)
    answer = NodeRecord(node_id="answer", kind="llm", state=NodeState.DONE, started_at=2.0, finished_at=3.0)
    answer.prompt_tokens, answer.completion_tokens = 170, 6
    planner.node_finished("p", workflow.nodes["answer"], answer)
    assert plan.own_kv == {"answer": 176}, "the answer continues the thought's conversation: its KV replaces it"
    assert planner.counters.hook_errors == 0


def test_without_next_use_hints_the_horizon_is_not_learned():
    """The cache tells tool-waiting KV by its next-use hint; without hints it counts no loss, and a learned horizon
    would say pins never pay. The snapshot stands in."""
    from plait.runtime.planning.planner import Planner
    from plait.runtime.states import NodeRecord, NodeState

    engine = PressuredEngine()
    planner = Planner(engine, PlanConfig(dedup=False).without("next_use_hints"))  # type: ignore[arg-type]
    planner.tool_wait_loss.min_waits = 0.0
    planner.tool_wait_loss.observe_wait(100, 1.0, now=time.monotonic())
    workflow = tool_chain("p", "question")
    planner.program_started("p", workflow)
    record = NodeRecord(node_id="think", kind="llm", state=NodeState.DONE, started_at=0.0, finished_at=1.0)
    record.prompt_tokens, record.completion_tokens = 150, 6
    planner.node_finished("p", workflow.nodes["think"], record)
    assert planner._eviction_horizon_s(planner._plans["p"], engine.stats()) == pytest.approx((800 - 156) / 200)
    assert planner.stats()["tool_wait_horizon_s"] is None


def test_own_kv_is_replaced_only_by_a_call_that_continues_it():
    """Two calls that share only fixed text (a preamble) hold separate KV; a revision continuing a draft (their
    templates share a leading text holding a slot) holds the draft's KV too."""
    from plait.runtime.planning.planner import Planner
    from plait.runtime.states import NodeRecord, NodeState

    forced = GenConstraints(max_tokens=4, ignore_eos=True)
    draft = Template(PREFIX + "Question: {{q}}\nDraft:")
    workflow = Workflow.build(
        [
            LLMCall("draft", draft, "d", constraints=forced),
            LLMCall("critic", Template(PREFIX + "Critique this draft: {{d}}"), "c", constraints=forced),
            LLMCall("revise", Template(PREFIX + "Question: {{q}}\nDraft:{{d}}\nCritique: {{c}}\nRevised:"), "r",
                    constraints=forced),
        ],
        inputs={"q": "?"},
        outputs=["r"],
    )  # fmt: skip
    planner = Planner(CommandRecorder(), PlanConfig(dedup=False))  # type: ignore[arg-type]
    planner.program_started("p", workflow)
    for node_id, tokens in (("draft", 40), ("critic", 30), ("revise", 60)):
        record = NodeRecord(node_id=node_id, kind="llm", state=NodeState.DONE, started_at=0.0, finished_at=1.0)
        record.prompt_tokens, record.completion_tokens = tokens, 4
        planner.node_finished("p", workflow.nodes[node_id], record)
    assert planner._plans["p"].own_kv == {"critic": 34, "revise": 64}


@pytest.mark.parametrize("switch", [True, False])
def test_a_pin_is_charged_the_engines_fixed_share_of_a_step_when_asked(monkeypatch, switch):
    """With ``pin_cost_fixed_share`` the planner weighs a pin's memory at the engine's fitted fixed share of a step;
    off, or before the engine can tell it, the whole step."""
    from plait.runtime.planning import planner as planner_module
    from plait.runtime.planning.planner import Planner
    from plait.runtime.states import NodeRecord, NodeState

    seen: list[float] = []
    real = planner_module.choose_pin_ttl

    def spy(*args, **kwargs):
        seen.append(kwargs["step_fixed_share"])
        return real(*args, **kwargs)

    monkeypatch.setattr(planner_module, "choose_pin_ttl", spy)
    engine = PressuredEngine()
    planner = Planner(engine, PlanConfig(dedup=False, pin_cost_fixed_share=switch))  # type: ignore[arg-type]
    workflow = tool_chain("p", "question")
    for fixed_share in (None, 0.3):
        engine.fixed_share = fixed_share
        program = f"p{fixed_share}"
        planner.program_started(program, workflow)
        record = NodeRecord(node_id="think", kind="llm", state=NodeState.DONE, started_at=0.0, finished_at=1.0)
        record.prompt_tokens, record.completion_tokens = 150, 6
        planner.node_finished(program, workflow.nodes["think"], record)
        planner.node_started(program, workflow.nodes["search"])
    assert seen == ([1.0, 0.3] if switch else [1.0, 1.0])
    assert planner.stats()["step_fixed_share"] == 0.3
    assert planner.counters.hook_errors == 0


def test_a_tool_reserves_what_the_next_call_will_add_learned_per_tool(monkeypatch):
    """At a tool's start the planner reserves, at the next call's priority, the slots that call will take: the
    prompt growth learned for that tool, its output (max_tokens: it ignores EOS) and, while no pin keeps it, the
    program's own context. The growth is learned from the call after the tool; baseline mode reserves nothing."""
    from plait.runtime.planning.planner import Planner
    from plait.runtime.states import NodeRecord, NodeState

    monkeypatch.setattr(Planner, "_eviction_horizon_s", lambda self, plan, stats: 0.0)  # the KV would be lost
    engine = PressuredEngine()
    planner = Planner(engine, PlanConfig(dedup=False, tool_pins=False))  # type: ignore[arg-type]

    def run(program: str, answer_prompt: int) -> tuple[list[dict], object]:
        workflow = tool_chain(program, "question")
        planner.program_started(program, workflow)
        record = NodeRecord(node_id="think", kind="llm", state=NodeState.DONE, started_at=0.0, finished_at=1.0)
        record.prompt_tokens, record.completion_tokens = 150, 6
        planner.node_finished(program, workflow.nodes["think"], record)
        planner.node_started(program, workflow.nodes["search"])
        priority = planner.request_options(program, workflow.nodes["answer"]).priority
        tool = NodeRecord(node_id="search", kind="tool", state=NodeState.DONE, started_at=1.0, finished_at=2.0)
        planner.node_finished(program, workflow.nodes["search"], tool)
        planner.node_started(program, workflow.nodes["answer"])
        record = NodeRecord(node_id="answer", kind="llm", state=NodeState.DONE, started_at=2.0, finished_at=3.0)
        record.prompt_tokens, record.completion_tokens = answer_prompt, 6
        planner.node_finished(program, workflow.nodes["answer"], record)
        planner.program_finished(program, "done", 0.0, 3.0)
        return engine.of(Reserve), priority

    first, priority = run("p", answer_prompt=156 + 40)  # nothing learned yet: its output and its unpinned context
    assert first[-1].slots == 6 + 156 and first[-1].program_id == "p"
    assert first[-1].priority == priority_key(priority) and priority != 0
    assert planner.next_call_growth.prompt_growth("lookup") == 40
    assert first[-1].call_id == "answer"
    # The answer's admission ended its reservation in the engine, so the program's end has nothing to take back.
    assert not engine.of(Unreserve)
    second, _ = run("q", answer_prompt=156 + 40)
    assert second[-1].slots == 40 + 6 + 156 and planner.counters.reservations == 2
    assert planner.counters.hook_errors == 0

    baseline = Planner(CommandRecorder(), PlanConfig.baseline())  # type: ignore[arg-type]
    workflow = tool_chain("b", "question")
    baseline.program_started("b", workflow)
    baseline.node_started("b", workflow.nodes["search"])
    assert not baseline.engine.of(Reserve)


def _planner_in_tool() -> tuple[CommandRecorder, Any, Workflow]:
    """A planner (no pins) whose program ``p`` has thought and started its tool: one reservation sent."""
    from plait.runtime.planning.planner import Planner
    from plait.runtime.states import NodeRecord, NodeState

    engine = CommandRecorder()
    planner = Planner(engine, PlanConfig(dedup=False, tool_pins=False))  # type: ignore[arg-type]
    workflow = tool_chain("p", "question")
    planner.program_started("p", workflow)
    planner.node_finished("p", workflow.nodes["think"], NodeRecord(node_id="think", kind="llm", state=NodeState.DONE))
    planner.node_started("p", workflow.nodes["search"])
    assert len(engine.of(Reserve)) == 1  # the answer's output, learned growth 0
    return engine, planner, workflow


def test_a_program_that_ends_in_its_tool_takes_its_reservation_back():
    engine, planner, _ = _planner_in_tool()
    planner.program_finished("p", "failed", 0.0, 1.0)
    assert Unreserve("p") in engine.sent


@pytest.mark.parametrize("how", ["skipped", "deduplicated"])
def test_a_reservation_is_taken_back_when_its_call_never_reaches_the_engine(how):
    """The engine ends a reservation when the program's call is admitted. A call skipped after a failed tool, or
    answered by deduplication, never is: the planner takes the reservation back itself, at once."""
    from plait.runtime.states import NodeRecord, NodeState

    engine, planner, workflow = _planner_in_tool()
    if how == "skipped":
        record = NodeRecord(node_id="answer", kind="llm", state=NodeState.SKIPPED)
    else:
        record = NodeRecord(node_id="answer", kind="llm", state=NodeState.DONE, started_at=1.0, finished_at=1.0)
        record.deduplicated = True
    planner.node_finished("p", workflow.nodes["answer"], record)
    assert Unreserve("p", call_id="answer") in engine.sent
    assert not planner._plans["p"].reserved and planner.counters.hook_errors == 0


def test_under_request_fcfs_a_reservation_carries_the_priority_its_call_will_be_submitted_with():
    """Without program FCFS a call's key is its submission time: the reservation made at the tool's start names the
    time the tool is expected back, so it does not hold against calls submitted before its own."""
    from plait.runtime.planning.planner import Planner
    from plait.runtime.states import NodeRecord, NodeState

    engine = CommandRecorder()
    planner = Planner(engine, PlanConfig(dedup=False, tool_pins=False, program_fcfs=False))  # type: ignore[arg-type]
    planner.durations.tools.record("lookup", 5.0)
    workflow = tool_chain("p", "question")
    planner.program_started("p", workflow)
    planner.node_finished("p", workflow.nodes["think"], NodeRecord(node_id="think", kind="llm", state=NodeState.DONE))
    started = time.monotonic()
    planner.node_started("p", workflow.nodes["search"])
    (reserve,) = engine.of(Reserve)
    expected_back = started + planner.durations.expected(workflow.nodes["search"])
    assert reserve.priority is not None and expected_back > started + 1.0
    assert reserve.priority[-1] == pytest.approx(expected_back, abs=0.5)


def _two_branches() -> Workflow:
    """think -> two tools in parallel -> a call after each (text2sql's candidates, each executed and revised)."""
    forced = GenConstraints(max_tokens=6, ignore_eos=True)
    nodes: list = [LLMCall("think", Template(PREFIX + "Question: {{q}}\nThought:"), "thought", constraints=forced)]
    for side in ("left", "right"):
        nodes.append(ToolCall(f"tool_{side}", "lookup", f"found_{side}", args={"query": var_ref("thought")}))
        found = "{{found_" + side + "}}"
        text = PREFIX + "Question: {{q}}\nThought:{{thought}}\nObservation: " + found + "\nAnswer:"
        nodes.append(LLMCall(f"call_{side}", Template(text), f"answer_{side}", constraints=forced))
    return Workflow.build(nodes, inputs={"q": "why"}, name="branches")


def test_parallel_tools_of_one_program_each_keep_their_calls_reservation():
    """Two tools of one program run at once: each reserves for the call after it under that call's id, so the
    second does not overwrite the first, and the engine holds both until each call is admitted. The context both
    calls continue is held once."""
    from plait.engine.reservations import Reservations
    from plait.runtime.planning.planner import Planner
    from plait.runtime.states import NodeRecord, NodeState

    engine = CommandRecorder()
    planner = Planner(engine, PlanConfig(dedup=False, tool_pins=False))  # type: ignore[arg-type]
    workflow = _two_branches()
    planner.program_started("p", workflow)
    record = NodeRecord(node_id="think", kind="llm", state=NodeState.DONE, started_at=0.0, finished_at=1.0)
    record.prompt_tokens, record.completion_tokens = 150, 6
    planner.node_finished("p", workflow.nodes["think"], record)
    planner.node_started("p", workflow.nodes["tool_left"])
    planner.node_started("p", workflow.nodes["tool_right"])
    held = Reservations()
    reserves = engine.of(Reserve)
    for reserve in reserves:
        held.reserve(reserve.program_id, reserve.slots, (0.0,), reserve.ttl_s, reserve.call_id)
    assert [r.call_id for r in reserves] == ["call_left", "call_right"]
    context = planner._plans["p"].private_tokens
    # Each call's output (6, nothing learned yet); the program's context is held once, with the first call.
    assert [r.slots for r in reserves] == [6 + context, 6] and context > 0
    assert held.total() == sum(r.slots for r in reserves) and len(held) == 2
    held.release("p", "call_left")  # the left call is admitted: the right one's memory stays held
    assert held.total() == reserves[1].slots
    assert planner._plans["p"].reserved == {"call_left", "call_right"} and planner.counters.hook_errors == 0


def test_an_engine_request_names_its_program_and_call():
    """The engine ends a call's reservation when the request naming that call is admitted."""
    from plait.runtime.llm_runner import build_request
    from plait.runtime.request_options import RequestOptions

    workflow = _two_branches()
    request = build_request(workflow.nodes["call_left"], {"q": "why", "thought": "t", "found_left": "f"},
                            RequestOptions("p"))  # fmt: skip
    assert (request.program_id, request.call_id) == ("p", "call_left")
