"""Acceptance: TTL pins through the engine. A pinned prefix survives memory pressure until its TTL, then becomes
evictable; active pins never exceed the budget; no request fails because memory is pinned."""

from __future__ import annotations

import random

import pytest

from plait.engine import EngineConfig, EngineCore, EnginePolicy, GenerateRequest, SamplingParams
from tests.conftest import FakeClock, patch_cache_clock, run_to_completion

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    return patch_cache_clock(monkeypatch, FakeClock())


def _core() -> EngineCore:
    return EngineCore(
        EngineConfig(
            model="tiny", weights="dummy", device="cpu", dtype="float32", kv_slots=512, max_context=512,
            policy=EnginePolicy(pin_budget_fraction=0.25),
        )
    )  # fmt: skip


def _request(prompt: list[int], request_id: str, max_tokens: int = 4, program: str | None = None) -> GenerateRequest:
    sampling = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    return GenerateRequest(prompt_token_ids=prompt, sampling=sampling, request_id=request_id, program_id=program)


def _pressure(core: EngineCore, rng: random.Random, tag: str, count: int = 12) -> None:
    """Unrelated 150-token prompts, one at a time: each needs the cache to give up older prefixes."""
    for i in range(count):
        run_to_completion(core, [_request([rng.randrange(256) for _ in range(150)], f"{tag}{i}")])
        assert core.stats().pinned_slots <= core.prefix_cache.pin_budget


def test_pinned_prefix_survives_until_ttl_then_is_evictable(clock):
    core = _core()
    rng = random.Random(3)
    agent = [rng.randrange(256) for _ in range(100)]
    run_to_completion(core, [_request(agent, "first", program="agent")])
    assert core.pin(ttl_s=30.0, program_id="agent")
    assert 0 < core.stats().pinned_slots <= core.prefix_cache.pin_budget

    _pressure(core, rng, "before")
    hits = core.stats().cached_prefix_tokens
    run_to_completion(core, [_request(agent, "again")])
    assert core.stats().cached_prefix_tokens - hits == len(agent) - 1, "the pinned prefix was evicted early"

    clock.advance(31.0)  # the TTL passes: the prefix is an ordinary cached prefix again
    assert core.stats().pinned_slots == 0
    _pressure(core, rng, "after")
    hits = core.stats().cached_prefix_tokens
    run_to_completion(core, [_request(agent, "late")])
    assert core.stats().cached_prefix_tokens - hits < len(agent) - 1, "the expired pin still protected it"
    core.check_invariants()


def test_pins_beyond_the_budget_are_refused(clock):
    core = _core()
    rng = random.Random(4)
    for name in ("a", "b", "c"):
        run_to_completion(core, [_request([rng.randrange(256) for _ in range(60)], name, program=name)])
    assert core.pin(ttl_s=10.0, program_id="a")
    assert core.pin(ttl_s=10.0, program_id="b")
    assert not core.pin(ttl_s=10.0, program_id="c"), "a third 64-token pin exceeds the 128-slot budget"
    assert core.stats().pins_refused == 1
    assert core.stats().pinned_slots <= core.prefix_cache.pin_budget
    assert not core.pin(ttl_s=10.0, program_id="unknown")
    assert core.stats().hints_ignored >= 1


def test_a_request_never_fails_because_memory_is_pinned(clock):
    core = _core()
    rng = random.Random(5)
    agent = [rng.randrange(256) for _ in range(120)]
    run_to_completion(core, [_request(agent, "agent", program="agent")])
    assert core.pin(ttl_s=600.0, program_id="agent")
    # Needs 300 + 200 = 500 of the 512 slots: only possible if the pinned prefix gives way.
    big = _request([rng.randrange(256) for _ in range(300)], "big", max_tokens=200)
    stats = core.stats()
    assert stats.pinned_tokens_evicted == 0
    assert stats.pinned_idle_slots == stats.pinned_slots > 0  # nothing running: the pin alone keeps the agent's KV
    tokens = run_to_completion(core, [big])
    assert len(tokens["big"][0]) == 200
    assert 0 < core.stats().pinned_tokens_evicted <= 120 + 4  # the pin gave way: at most the agent's whole KV
    core.check_invariants()
    assert core.kv_in_use() == 0


@pytest.mark.parametrize("pinned", [True, False])
def test_admission_stops_name_pins_that_keep_a_prompt_out(clock, pinned):
    """The step profile says why a waiting prompt did not start: with the agent's prefix pinned, the second prompt
    fits only if pinned slots counted as free ("pinned"); without the pin it starts beside the first."""
    core = _core()
    rng = random.Random(6)
    agent = [rng.randrange(256) for _ in range(120)]
    run_to_completion(core, [_request(agent, "agent", program="agent")])
    if pinned:
        assert core.pin(ttl_s=600.0, program_id="agent")
    big = _request([rng.randrange(256) for _ in range(300)], "big", max_tokens=8)
    second = _request([rng.randrange(256) for _ in range(150)], "second")
    before = core.stats()
    tokens = run_to_completion(core, [big, second])
    assert len(tokens["second"][0]) == 4
    stats = core.stats()
    stops = stats.admission_stops
    if pinned:
        assert stops.get("pinned", 0) >= 1 and stats.pinned_slot_steps > before.pinned_slot_steps
        assert stats.waiting_rows > before.waiting_rows
    else:
        assert "pinned" not in stops and stats.pinned_slot_steps == 0
    assert stats.decode_rows - before.decode_rows == 7 + 3  # decode steps after each prefill sampled a first token
    core.check_invariants()


def test_pins_that_do_not_hold_admissions_let_a_prompt_take_pinned_memory(clock):
    """With ``pins_hold_admissions`` off the second prompt of the pinned scenario starts at once: the pin only
    orders eviction."""
    core = _core()
    core.set_policy(core.policy.with_values(pins_hold_admissions=False))
    rng = random.Random(6)
    agent = [rng.randrange(256) for _ in range(120)]
    run_to_completion(core, [_request(agent, "agent", program="agent")])
    assert core.pin(ttl_s=600.0, program_id="agent")
    big = _request([rng.randrange(256) for _ in range(300)], "big", max_tokens=8)
    second = _request([rng.randrange(256) for _ in range(150)], "second")
    tokens = run_to_completion(core, [big, second])
    assert len(tokens["second"][0]) == 4
    assert "pinned" not in core.stats().admission_stops and core.stats().waiting_rows == 0
    core.check_invariants()


@pytest.mark.parametrize(("pin_priority", "held"), [((5.0,), False), ((-1.0,), True), (None, True)])
def test_a_pin_holds_back_only_prompts_it_outranks(clock, pin_priority, held):
    """A pin keeps memory for its program's next call, so it holds back only prompts that call would go after: the
    second prompt (priority 0) starts at once beside a pin of priority 5, and waits behind one of priority -1 or one
    given without a priority, as before priorities were passed."""
    core = _core()
    rng = random.Random(6)
    agent = [rng.randrange(256) for _ in range(120)]
    run_to_completion(core, [_request(agent, "agent", program="agent")])
    assert core.pin(ttl_s=600.0, program_id="agent", priority=pin_priority)
    cache = core.prefix_cache
    assert (cache.evictable_slots(priority=(0.0,)) == cache.evictable_slots(allow_pinned=True)) is not held
    big = _request([rng.randrange(256) for _ in range(300)], "big", max_tokens=8)
    second = _request([rng.randrange(256) for _ in range(150)], "second")
    tokens = run_to_completion(core, [big, second])
    assert len(tokens["second"][0]) == 4
    stats = core.stats()
    assert ("pinned" in stats.admission_stops) is held and (stats.waiting_rows > 0) is held
    core.check_invariants()


def test_a_prompt_takes_the_pins_it_outranks_while_a_more_important_pin_holds(clock):
    """Pins are weighed one by one: a call of priority 3 takes the memory pinned for a priority-5 program's next call
    (and only that) while a priority-1 program's pin keeps its KV. Counting pinned memory only when the prompt
    outranks every pin kept it waiting behind the less important program's pin."""
    core = EngineCore(
        EngineConfig(
            model="tiny", weights="dummy", device="cpu", dtype="float32", kv_slots=512, max_context=512,
            policy=EnginePolicy(pin_budget_fraction=0.5),
        )
    )  # fmt: skip
    rng = random.Random(8)
    older, younger = ([rng.randrange(256) for _ in range(n)] for n in (60, 120))
    run_to_completion(core, [_request(older, "older", program="older"), _request(younger, "younger", program="y")])
    assert core.pin(ttl_s=600.0, program_id="older", priority=1.0)
    assert core.pin(ttl_s=600.0, program_id="y", priority=5.0)
    big = _request([rng.randrange(256) for _ in range(300)], "big", max_tokens=8)  # priority 0: leaves both pins
    call = _request([rng.randrange(256) for _ in range(100)], "call")
    call.priority = 3.0
    tokens = run_to_completion(core, [big, call])
    assert len(tokens["call"][0]) == 4
    stats = core.stats()
    assert "pinned" not in stats.admission_stops and stats.waiting_rows == 0, "the call waited behind a pin"
    assert 0 < stats.pinned_tokens_evicted <= 124, "only the less important program's pinned KV gave way"
    assert all(node.on_device for node in core.prefix_cache._walk(older))
    core.check_invariants()


def test_shared_pinned_nodes_keep_the_most_important_running_pinners_priority(clock):
    """Two programs sharing a prefix pin their KV: the shared path holds the more important priority while both pins
    run, the remaining pin's once the other program unpins or once the other pin's TTL runs out. An admission counts
    as room exactly the pinned KV whose every running pinner it outranks."""
    core = _core()
    rng = random.Random(7)
    shared = [rng.randrange(256) for _ in range(64)]
    for name in ("a", "b"):
        run_to_completion(core, [_request(shared + [rng.randrange(256) for _ in range(16)], name, program=name)])
    cache = core.prefix_cache
    shared_node = cache._walk(shared[:32])[-1]
    nodes = cache._program_nodes
    own = {name: sum(len(n) for n in nodes[name] - nodes[other]) for name, other in (("a", "b"), ("b", "a"))}

    def room(priority: tuple[float, ...]) -> int:  # pinned slots an admission of ``priority`` may take
        return cache.evictable_slots(priority=priority) - cache.evictable_slots()

    assert core.pin(ttl_s=60.0, program_id="a", priority=(2.0, 1.0))
    assert core.pin(ttl_s=60.0, program_id="b", priority=1.0)
    assert shared_node.pin_priority(clock.now) == (1.0,)
    assert room((0.0,)) == cache.pinned_slots() and room((1.0,)) == own["a"] and room((3.0,)) == 0
    assert core.unpin(program_id="b")
    assert shared_node.pin_priority(clock.now) == (2.0, 1.0) and room((1.0,)) == cache.pinned_slots() > 0
    # A stronger pin that expires first stops holding back what only it outranked.
    assert core.pin(ttl_s=5.0, program_id="b", priority=0.0)
    assert room((1.0,)) == own["a"]
    clock.advance(10.0)
    assert shared_node.pin_priority(clock.now) == (2.0, 1.0) and room((1.0,)) == cache.pinned_slots()
    clock.advance(51.0)
    assert cache.pinned_slots() == 0 and room((3.0,)) == 0
    with pytest.raises(ValueError, match="priority"):
        core.pin(ttl_s=1.0, program_id="a", priority=(float("nan"),))
