"""Program-level planning, the ordering side: priorities (program-FCFS, deadline urgency, attained service), engine
aging and cache affinity, deduplicated calls, and deadlines through the planner."""

from __future__ import annotations

import asyncio

import pytest

import plait
from plait.dag import LLMCall, Workflow
from plait.engine import GenerateRequest, InvalidRequestError, SamplingParams
from plait.runtime import Executor
from plait.runtime.planning import FEATURES, PlanConfig
from plait.runtime.planning.call_dedup import dedup_key
from plait.runtime.planning.ordering import call_priority, latest_start, remaining_paths, service_level
from plait.semantic_vars import GenConstraints, Template
from tests.runtime.conftest import wait_kv_free
from tests.runtime.planning_fixtures import PREFIX, HintRecorder, lookup, tool_chain

# ---- ordering --------------------------------------------------------------------------------------------------------


def test_service_levels_are_geometric():
    assert [service_level(s, 0.5) for s in (0.0, 0.49, 0.5, 1.9, 2.0, 7.9, 8.0)] == [0, 0, 1, 1, 2, 2, 3]


def test_latest_start_is_the_deadline_less_the_expected_path():
    assert latest_start(110.0, 4.0) == 106.0


def test_priorities_compose():
    common = {"user_priority": 0.0, "attained_service_s": 3.0, "remaining_s": 4.0, "now": 100.0}
    fcfs = PlanConfig(deadline=False, shortest_remaining=False)
    assert call_priority(fcfs, program_started_at=50.0, deadline_at=None, latest_start_at=None, **common) == (
        0.0,
        0.0,
        50.0,
    )
    # The default: program FCFS, deadlines off; with them on, a generous deadline leaves the order alone.
    plait = PlanConfig(deadline=True)
    assert call_priority(plait, program_started_at=50.0, deadline_at=110.0, latest_start_at=60.0, **common)[2] == 50.0
    assert call_priority(plait, program_started_at=50.0, deadline_at=None, latest_start_at=None, **common)[2] == 50.0
    # Shortest remaining: the expected finish had it run alone from its start (start + the remaining path); a tight
    # deadline moves the program up to its latest start, a generous one leaves that key.
    sr = PlanConfig(shortest_remaining=True, deadline=True)
    assert call_priority(sr, program_started_at=50.0, deadline_at=None, latest_start_at=None, **common)[2] == 54.0
    assert call_priority(sr, program_started_at=50.0, deadline_at=110.0, latest_start_at=60.0, **common)[2] == 54.0
    assert call_priority(sr, program_started_at=50.0, deadline_at=105.0, latest_start_at=52.0, **common)[2] == 52.0
    atlas = PlanConfig(attained_service=True, deadline=False)
    assert call_priority(atlas, program_started_at=50.0, deadline_at=None, latest_start_at=None, **common)[1] == 2.0
    baseline = PlanConfig.baseline()
    assert call_priority(baseline, program_started_at=50.0, deadline_at=110.0, latest_start_at=60.0, **common) == (
        0.0,
        0.0,
        100.0,
    )


def test_shortest_remaining_puts_near_done_and_short_programs_first_without_interleaving():
    """Without deadlines the key is start + remaining expected path: a short program that started a little later
    goes ahead of a long one, a program near its end ahead of a newer one, and a program's key only falls as it
    advances, so a program that went ahead stays ahead."""
    config = PlanConfig(shortest_remaining=True, deadline=True)
    common = {"user_priority": 0.0, "attained_service_s": 0.0, "deadline_at": None, "latest_start_at": None}

    def key(started: float, remaining: float, now: float) -> tuple[float, float, float]:
        return call_priority(config, program_started_at=started, remaining_s=remaining, now=now, **common)

    long_early, short_later = key(100.0, 8.0, 101.0), key(101.0, 3.0, 101.0)
    assert short_later < long_early
    assert key(101.0, 1.0, 104.0) < key(101.0, 3.0, 101.0)  # its key falls as it advances
    assert key(100.0, 1.0, 107.0) < key(106.0, 3.0, 107.0)  # the long one near its end beats a newer short one
    assert key(90.0, 8.0, 100.0) < key(99.0, 3.0, 100.0)  # waited about its own length: ahead of later arrivals
    fcfs = config.without("shortest_remaining")
    assert call_priority(fcfs, program_started_at=100.0, remaining_s=8.0, now=101.0, **common)[2] == 100.0


def test_a_new_program_does_not_cut_in_front_of_an_older_one_on_schedule():
    """Least slack first would put a fresh program's first stage (small share of its deadline) ahead of an older
    program's later stage; programs would interleave and all finish late. The key comes from the program's start."""
    common = {"user_priority": 0.0, "attained_service_s": 0.0, "now": 100.0}
    # Both had 3x their expected time: the older started at 94 with 6 s of work, the newer at 100 with 6 s.
    older = call_priority(
        PlanConfig(deadline=True),
        program_started_at=94.0,
        deadline_at=112.0,
        latest_start_at=106.0,
        remaining_s=2.0,
        **common,
    )
    newer = call_priority(
        PlanConfig(deadline=True),
        program_started_at=100.0,
        deadline_at=118.0,
        latest_start_at=112.0,
        remaining_s=6.0,
        **common,
    )
    assert older < newer


def test_a_program_that_can_no_longer_make_its_deadline_goes_behind_those_that_can():
    """Under overload, serving the most urgent first would serve the hopeless first and make everyone late."""
    common = {"user_priority": 0.0, "attained_service_s": 0.0, "now": 100.0, "remaining_s": 4.0}
    feasible = call_priority(
        PlanConfig(deadline=True), program_started_at=90.0, deadline_at=110.0, latest_start_at=100.0, **common
    )
    late = call_priority(
        PlanConfig(deadline=True), program_started_at=80.0, deadline_at=103.0, latest_start_at=95.0, **common
    )
    assert late > feasible  # the late one is due sooner, yet waits
    assert late == (0.0, 1.0, 80.0)  # among the late: program order
    later_start = call_priority(
        PlanConfig(deadline=True), program_started_at=85.0, deadline_at=102.0, latest_start_at=96.0, **common
    )
    assert late < later_start


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
    cold = GenerateRequest(prompt_token_ids=_ids(64, 200), sampling=sampling, priority=(0.0, 0.0, 10.0))
    warm = GenerateRequest(prompt_token_ids=[*shared, 9, 9], sampling=sampling, priority=(0.0, 0.0, 10.5))
    far = GenerateRequest(prompt_token_ids=[*shared, 8, 8], sampling=sampling, priority=(0.0, 0.0, 13.0))
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


# ---- deadlines through the planner -----------------------------------------------------------------------------------


def test_deadline_programs_submit_urgent_priorities(tiny_engine):
    async def main():
        # Shortest remaining on: with program FCFS alone a feasible deadline never lies before the program's start.
        executor = Executor(tiny_engine, [lookup], plan=PlanConfig(dedup=False, shortest_remaining=True, deadline=True))
        relaxed = executor.start(tool_chain("relaxed", "q1"), deadline_s=1000.0)
        path_s = remaining_paths(tool_chain("tight", "q2"), set(), executor.planner.durations)["think"]
        tight = executor.start(tool_chain("tight", "q2"), deadline_s=1.5 * path_s)
        hopeless = executor.start(tool_chain("hopeless", "q3"), deadline_s=1e-3)
        plain = executor.start(tool_chain("plain", "q4"))
        node = relaxed.workflow.nodes["think"]
        programs = (relaxed, tight, hopeless, plain)
        options = {p.record.name: executor.planner.request_options(p.program_id, node) for p in programs}
        for program in programs:
            await program.wait()
        return options

    options = asyncio.run(main())
    priority = {name: option.priority for name, option in options.items()}
    assert priority["tight"] < priority["relaxed"]  # a tight deadline goes ahead of a program that started earlier
    # A generous deadline changes nothing (program order); one that cannot be met drops a level.
    assert priority["relaxed"] < priority["plain"]
    assert priority["hopeless"][1] == 1.0 and priority["hopeless"] > priority["relaxed"]


def test_a_tight_deadline_fixes_the_programs_order_at_its_latest_start():
    """With a deadline tighter than the order without it, the key is the program's latest start (deadline minus its
    expected path at the start). It never rises as the program advances (near its end the shortest-remaining key may
    be lower still), so a program on schedule never falls behind programs that arrived after it."""
    from plait.runtime.planning.planner import Planner
    from plait.runtime.states import NodeRecord, NodeState

    config = PlanConfig(tool_pins=False, dedup=False, shortest_remaining=True, deadline=True).without("next_use_hints")
    planner = Planner(HintRecorder(), config)  # type: ignore[arg-type]
    workflow = tool_chain("p", "question")
    path_s = remaining_paths(workflow, set(), planner.durations)["think"]
    planner.program_started("p", workflow, deadline_s=1.2 * path_s)
    plan = planner._plans["p"]
    assert plan.latest_start_at == pytest.approx(plan.started_at + 0.2 * path_s)
    first = planner.request_options("p", workflow.nodes["think"]).priority
    assert first == (0.0, 0.0, plan.latest_start_at)
    planner.node_finished("p", workflow.nodes["think"], NodeRecord(node_id="think", kind="llm", state=NodeState.DONE))
    last_llm = [n for n in workflow.llm_calls() if n.id != "think"][-1]
    assert planner.request_options("p", last_llm).priority <= first
    # A generous deadline: the shortest-remaining key, below the latest start.
    planner.program_started("q", workflow, deadline_s=100.0)
    relaxed = planner.request_options("q", workflow.nodes["think"]).priority
    assert relaxed[2] == pytest.approx(planner._plans["q"].started_at + path_s)
