"""Program-level planning, the ordering side: program-FCFS priorities, engine aging and cache affinity, and
deduplicated calls."""

from __future__ import annotations

import asyncio

import pytest

import plait
from plait.dag import LLMCall, Workflow
from plait.engine import GenerateRequest, InvalidRequestError, SamplingParams
from plait.runtime import Executor
from plait.runtime.planning import FEATURES, PlanConfig
from plait.runtime.planning.call_dedup import dedup_key
from plait.runtime.planning.ordering import call_priority
from plait.semantic_vars import GenConstraints, Template
from tests.runtime.conftest import wait_kv_free
from tests.runtime.planning_fixtures import PREFIX, CommandRecorder, lookup, tool_chain

# ---- ordering --------------------------------------------------------------------------------------------------------


def test_program_fcfs_keys_a_call_by_its_programs_start():
    fcfs, baseline = PlanConfig(), PlanConfig.baseline()
    assert call_priority(fcfs, user_priority=0.0, program_started_at=50.0, now=100.0) == (0.0, 50.0)
    assert call_priority(baseline, user_priority=0.0, program_started_at=50.0, now=100.0) == (0.0, 100.0)
    # The user's priority comes first, lower first, whatever the programs' starts.
    assert call_priority(fcfs, user_priority=-1.0, program_started_at=90.0, now=100.0) < call_priority(
        fcfs, user_priority=0.0, program_started_at=10.0, now=100.0
    )


def test_an_older_programs_later_call_goes_before_a_newer_programs_first():
    """Programs finish one after another instead of interleaving: the key comes from the program's start."""
    from plait.runtime.planning.planner import Planner
    from plait.runtime.states import NodeRecord, NodeState

    planner = Planner(CommandRecorder(), PlanConfig(tool_pins=False, dedup=False))  # type: ignore[arg-type]
    workflow = tool_chain("p", "question")
    planner.program_started("old", workflow)
    planner.node_finished("old", workflow.nodes["think"], NodeRecord(node_id="think", kind="llm", state=NodeState.DONE))
    planner.program_started("new", tool_chain("n", "question"))
    last = [n for n in workflow.llm_calls() if n.id != "think"][-1]
    older = planner.request_options("old", last).priority
    newer = planner.request_options("new", workflow.nodes["think"]).priority
    assert older < newer and len(older) == 2


def test_plan_config_switches():
    baseline = PlanConfig.baseline()
    assert baseline.enabled == [] and baseline.engine.eviction == "lru" and not baseline.next_use_hints
    assert PlanConfig.only("tool_pins").enabled == ["tool_pins"]
    assert "dedup" not in PlanConfig().without("dedup").enabled
    assert set(FEATURES) >= set(PlanConfig().enabled)
    with pytest.raises(ValueError, match="unknown feature"):
        PlanConfig.only("telepathy")
    with pytest.raises(ValueError, match="max_queue_wait_s"):
        PlanConfig().with_overrides(["max_queue_wait_s=-1"])
    with pytest.raises(ValueError, match="eviction"):
        PlanConfig().with_overrides(["eviction=fifo"])
    assert PlanConfig().engine.affinity_window_s == 2.0 and PlanConfig().uses("cache_affinity")
    assert PlanConfig.baseline().engine.affinity_window_s == 0.0
    # Engine-side features switch their policy field; fields of both are overridable by name.
    assert PlanConfig().without("next_use_hints").engine.eviction == "lru"
    assert PlanConfig.only("prefix_first").engine.prefix_first and not PlanConfig.baseline().engine.prefix_first
    plan = PlanConfig().with_overrides(
        ["cache_affinity=off", "max_queue_wait_s=5", "dedup=off", "pin_budget_fraction=0.5"]
    )
    assert plan.engine.affinity_window_s == 0.0 and plan.engine.max_queue_wait_s == 5.0 and not plan.dedup
    assert plan.engine.pin_budget_fraction == 0.5 and "cache_affinity" not in plan.enabled


# ---- the engine side: tuple priorities and aging --------------------------------------------------------------------


def _ids(n: int, start: int) -> list[int]:
    return [start + i for i in range(n)]


def test_engine_orders_tuple_priorities_and_rejects_bad_ones(tiny_core):
    core = tiny_core
    sampling = SamplingParams(max_tokens=1, ignore_eos=True)
    for priority in ("high", (1.0, float("nan")), ()):
        with pytest.raises(InvalidRequestError, match="priority"):
            core.prepare(GenerateRequest(prompt_token_ids=[5, 6], sampling=sampling, priority=priority))
    core.add_request(GenerateRequest(prompt_token_ids=_ids(8, 10), sampling=sampling, priority=(0.0, 1.0, 5.0)))
    core.add_request(GenerateRequest(prompt_token_ids=_ids(8, 30), sampling=sampling, priority=(0.0, 0.0, 9.0)))
    core.add_request(GenerateRequest(prompt_token_ids=_ids(8, 50), sampling=sampling, priority=(0.0, 1.0, 1.0)))
    order = [seq.token_ids[0] for seq in core.scheduler.waiting]
    assert order == [30, 50, 10]
    while core.has_work():
        core.step()


def test_engine_promotes_a_starving_request(tiny_core):
    core = tiny_core
    scheduler = core.scheduler
    core.set_policy(core.policy.with_values(max_queue_wait_s=0.5))
    try:
        sampling = SamplingParams(max_tokens=1, ignore_eos=True)
        core.add_request(GenerateRequest(prompt_token_ids=_ids(8, 10), sampling=sampling, priority=5))
        core.add_request(GenerateRequest(prompt_token_ids=_ids(8, 30), sampling=sampling, priority=1))
        starving = next(s for s in scheduler.waiting if s.token_ids[0] == 10)
        starving.state.submitted_at -= 10.0  # it has waited 10 s
        scheduler._next_starvation_check = 0.0
        promotions = scheduler.num_promotions
        batch = scheduler.schedule()
        assert scheduler.num_promotions == promotions + 1 and starving.promoted
        assert batch.extends[0].seq is starving
        assert scheduler.longest_queue_wait_s >= 10.0
        core.scheduler.running.clear()
    finally:
        core.set_policy(core.policy.with_values(max_queue_wait_s=0.0))


def test_cache_affinity_admits_a_resident_prefix_first_within_a_window(tiny_core):
    core = tiny_core
    scheduler = core.scheduler
    sampling = SamplingParams(max_tokens=1, ignore_eos=True)
    shared = _ids(96, 40)
    core.add_request(GenerateRequest(prompt_token_ids=[*shared, 7], sampling=sampling))
    while core.has_work():
        core.step()  # the shared prefix is on the device now
    cold = GenerateRequest(prompt_token_ids=_ids(64, 200), sampling=sampling, priority=(0.0, 10.0))
    warm = GenerateRequest(prompt_token_ids=[*shared, 9, 9], sampling=sampling, priority=(0.0, 10.5))
    far = GenerateRequest(prompt_token_ids=[*shared, 8, 8], sampling=sampling, priority=(0.0, 13.0))
    plain = GenerateRequest(prompt_token_ids=_ids(64, 300), sampling=sampling, priority=0)  # not the planner's
    for request in (cold, warm, far, plain):
        core.add_request(request)

    def order(window: float) -> list[str]:
        core.set_policy(core.policy.with_values(affinity_window_s=window))
        return [seq.request_id for seq in scheduler._admission_order(budget=64)]

    try:
        strict = [plain.request_id, cold.request_id, warm.request_id, far.request_id]
        assert order(0.0) == strict
        # 10.0 and 10.5 share a 2 s window: the resident prefix goes first; 13.0 is in a later window and waits; a
        # plain priority keeps its place.
        assert order(2.0) == [plain.request_id, warm.request_id, cold.request_id, far.request_id]
        assert core.prefix_cache.resident_length(warm.prompt_token_ids) >= 64
        assert core.prefix_cache.resident_length(cold.prompt_token_ids) == 0
    finally:
        core.set_policy(core.policy.with_values(affinity_window_s=0.0))
    while core.has_work():
        core.step()


@pytest.fixture
def tiny_core(tiny_engine):
    """A fresh core on the tiny shape, driven step by step."""
    from plait.engine import EngineConfig, EngineCore
    from tests.conftest import TINY

    return EngineCore(EngineConfig(**TINY))


# ---- deduplication ---------------------------------------------------------------------------------------------------


def test_dedup_key_covers_only_deterministic_requests():
    def request(**sampling) -> GenerateRequest:
        return GenerateRequest(prompt="hi", sampling=SamplingParams(**{"temperature": 0.0, **sampling}))

    greedy = request(max_tokens=4)
    assert dedup_key(greedy) is not None and dedup_key(greedy) == dedup_key(request(max_tokens=4, seed=3))
    assert dedup_key(greedy) != dedup_key(request(max_tokens=5))
    assert dedup_key(request(temperature=0.7)) is None
    assert dedup_key(request(logprobs=True)) is None


def test_identical_calls_across_programs_run_once(tiny_engine):
    async def main():
        executor = Executor(tiny_engine, [lookup], plan=PlanConfig())
        before = tiny_engine.stats().prefill_tokens + tiny_engine.stats().cached_prefix_tokens
        programs = [executor.start(tool_chain(f"dup{i}", "same question", 0.01)) for i in range(3)]
        results = [await program.wait() for program in programs]
        await wait_kv_free(tiny_engine)
        after = tiny_engine.stats().prefill_tokens + tiny_engine.stats().cached_prefix_tokens
        return executor, programs, results, after - before

    executor, programs, results, prompt_tokens = asyncio.run(main())
    assert all(result == results[0] for result in results)
    planner = executor.planner
    # 2 calls per program; the first program's calls ran, the other 4 were answered by them.
    assert planner.dedup.calls == 6 and planner.dedup.deduplicated == 4
    assert any(program.nodes["think"].deduplicated for program in programs)
    single = sum(programs[0].nodes[n].prompt_tokens for n in ("think", "answer"))
    assert prompt_tokens <= single + 2  # the engine saw one program's prompts, not three


def test_a_cancelled_program_does_not_fail_a_shared_call(tiny_engine):
    slow = GenConstraints(max_tokens=300, ignore_eos=True)

    def one_call(name: str) -> Workflow:
        return Workflow.build([LLMCall("only", Template(PREFIX + "Long answer:"), "out", constraints=slow)], name=name)

    async def main():
        executor = Executor(tiny_engine, plan=PlanConfig())
        leader = executor.start(one_call("leader"))
        await asyncio.sleep(0.02)
        follower = executor.start(one_call("follower"))
        await asyncio.sleep(0.01)
        leader.cancel()
        with pytest.raises(plait.ProgramCancelledError):
            await leader.wait()
        result = await follower.wait()
        await wait_kv_free(tiny_engine)
        return result

    result = asyncio.run(main())
    assert isinstance(result["out"], str) and result["out"]
