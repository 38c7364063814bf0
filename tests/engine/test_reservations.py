"""Memory reserved for a tool-waiting program's next call: it keeps out exactly the admissions that call would go
before, and ends when the program's call is admitted, when it is taken back, or when it lapses."""

from __future__ import annotations

import random

import pytest

from plait.engine import EngineConfig, EngineCore, GenerateRequest, SamplingParams
from plait.engine.reservations import Reservations
from tests.conftest import run_to_completion

pytestmark = pytest.mark.usefixtures("one_thread")


def _core() -> EngineCore:
    return EngineCore(
        EngineConfig(model="tiny", weights="dummy", device="cpu", dtype="float32", kv_slots=512, max_context=512)
    )


def _request(n: int, request_id: str, rng: random.Random, priority: float = 0.0, program: str | None = None):
    sampling = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
    prompt = [rng.randrange(256) for _ in range(n)]
    return GenerateRequest(
        prompt_token_ids=prompt, sampling=sampling, request_id=request_id, priority=priority, program_id=program
    )


def test_a_reservation_holds_against_what_it_outranks_only(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("plait.engine.reservations.time.monotonic", lambda: clock[0])
    reservations = Reservations()
    reservations.reserve("a", 100, (1.0,), ttl_s=10.0)
    reservations.reserve("b", 40, (5.0,), ttl_s=2.0)
    assert reservations.held_against((0.0,), "x") == 0  # outranks both
    assert reservations.held_against((3.0,), "x") == 100  # outranks b only
    assert reservations.held_against((5.0,), "x") == 140  # an equal priority does not outrank
    assert reservations.held_against((9.0,), "a") == 40  # a program's own reservation never holds it back
    clock[0] += 3.0  # b lapses
    assert reservations.held_against((9.0,), "x") == 100 and len(reservations) == 1
    reservations.reserve("a", 0, (1.0,), ttl_s=10.0)  # nothing to hold: dropped
    assert reservations.held_against((9.0,), "x") == 0 and reservations.total() == 0
    reservations.reserve("c", 10, (), ttl_s=5.0)  # no priority: holds against every admission
    assert reservations.held_against((-1e9,), "x") == 10
    reservations.release("c")
    reservations.release(None)
    assert len(reservations) == 0


@pytest.mark.parametrize(("call_priority", "held"), [(3.0, True), (0.5, False)])
def test_a_reserved_next_call_keeps_a_later_prompt_out_until_it_is_admitted(call_priority, held):
    """A big running prompt leaves 212 of 512 slots; the agent's next call (priority 1) has 150 of them reserved.
    A 150-token prompt that would go after it waits until the agent's call is admitted; one that outranks the
    reservation starts at once."""
    core = _core()
    rng = random.Random(11)
    assert core.reserve("agent", 150, priority=1.0, ttl_s=60.0)
    big = _request(296, "big", rng)  # priority 0: outranks the reservation
    late = _request(150, "late", rng, priority=call_priority)
    core.add_request(big)
    core.step()  # big is admitted beside the reservation
    core.add_request(late)
    core.step()
    stats = core.stats()
    assert ("reserved" in stats.admission_stops) is held
    assert any(s.request_id == "late" for s in core.scheduler.running) is not held
    # The agent's call arrives and is admitted: its reservation ends with it.
    agent = _request(100, "agent-call", rng, priority=1.0, program="agent")
    tokens = run_to_completion(core, [agent])
    assert len(tokens["agent-call"][0]) == 4 and len(core.scheduler.reservations) == 0
    core.check_invariants()


def test_reservations_hold_back_at_most_the_pin_budget():
    """Reservations of 400 of 512 slots (programs waiting on tools) hold back at most the pin budget's 25% (128) from
    a later prompt: new work keeps the rest of the pool instead of waiting for the anti-starvation bound."""
    core = _core()
    rng = random.Random(12)
    assert core.reserve("agent", 400, priority=1.0, ttl_s=60.0)
    core.add_request(_request(296, "big", rng))  # leaves 212 of 512 slots
    core.step()
    core.add_request(_request(60, "late", rng, priority=3.0))
    core.step()
    assert any(s.request_id == "late" for s in core.scheduler.running)
    assert "reserved" not in core.stats().admission_stops
    core.check_invariants()


def test_reserve_rejects_a_bad_size_or_priority():
    core = _core()
    with pytest.raises(ValueError, match="slots"):
        core.reserve("p", -1)
    with pytest.raises(ValueError, match="priority"):
        core.reserve("p", 10, priority=(float("nan"),))
    assert core.unreserve("unknown")


@pytest.mark.parametrize("pins_hold", [True, False])
def test_reservations_never_keep_an_idle_engine_idle(pins_hold):
    """With nothing running, a waiting prompt starts whatever is reserved (the reserved-for call is not there yet),
    and its chunks are a running request's: a cached prefix that takes the room left does not retract it each step."""
    core = _core()
    core.set_policy(core.policy.with_values(pins_hold_admissions=pins_hold))
    rng = random.Random(12)
    sampling = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
    prefix = [rng.randrange(256) for _ in range(100)]
    run_to_completion(core, [GenerateRequest(prompt_token_ids=prefix, sampling=sampling, request_id="warm")])
    assert core.reserve("agent", core.scheduler.free_slots() - 50, priority=0.0, ttl_s=60.0)
    late = GenerateRequest(
        prompt_token_ids=prefix + [rng.randrange(256) for _ in range(20)], sampling=sampling, request_id="late",
        priority=1.0,
    )  # fmt: skip
    tokens = run_to_completion(core, [late])
    assert len(tokens["late"][0]) == 4
    assert core.scheduler.num_retractions == 0 and "reserved" not in core.scheduler.admission_stops
    assert core.reserve("agent", 10_000, priority=0.0, ttl_s=60.0)  # more than the pool: clamped, still not idle
    tokens = run_to_completion(core, [_request(50, "later", rng, priority=1.0)])
    assert len(tokens["later"][0]) == 4
    core.check_invariants()


def test_flushing_the_cache_drops_reservations():
    """Benchmarks flush between modes: a reservation of one run must not hold memory in the next."""
    core = _core()
    assert core.reserve("agent", 100, priority=0.0, ttl_s=60.0)
    core.flush_prefix_cache()
    assert len(core.scheduler.reservations) == 0


def test_reservations_of_one_program_stand_side_by_side_per_call():
    """A program waiting on two tools at once reserves for each branch's call: admitting one branch's call ends that
    reservation only. A reservation without a call id is the program's and any admission ends it."""
    reservations = Reservations()
    reservations.reserve("a", 100, (1.0,), ttl_s=60.0, call_id="left")
    reservations.reserve("a", 30, (1.0,), ttl_s=60.0, call_id="right")
    reservations.reserve("a", 5, (1.0,), ttl_s=60.0, call_id="right")  # the same call again replaces it
    assert reservations.held_against((9.0,), "x") == 105 and len(reservations) == 2
    reservations.release("a", "left")  # the left call was admitted
    assert reservations.held_against((9.0,), "x") == 5
    reservations.reserve("a", 40, (1.0,), ttl_s=60.0)  # the program's own, for whichever call comes
    reservations.release("a", "unknown")  # any call of the program ends the program's reservation
    assert reservations.total() == 5
    reservations.cancel("a", "right")
    assert len(reservations) == 0
    reservations.reserve("a", 10, (1.0,), ttl_s=60.0, call_id="left")
    reservations.reserve("a", 10, (1.0,), ttl_s=60.0, call_id="right")
    reservations.release("a")  # a request with no call id ends every reservation of its program
    assert len(reservations) == 0


def test_an_admitted_call_ends_its_own_reservation_and_leaves_its_siblings():
    """Through the engine: the request's ``call_id`` names the reservation its admission ends; ``unreserve`` with a
    call id takes one back, without one every reservation of the program."""
    core = _core()
    rng = random.Random(13)
    assert core.reserve("agent", 60, priority=1.0, ttl_s=60.0, call_id="left")
    assert core.reserve("agent", 40, priority=1.0, ttl_s=60.0, call_id="right")
    request = _request(20, "left-call", rng, priority=1.0, program="agent")
    request.call_id = "left"
    tokens = run_to_completion(core, [request])
    assert len(tokens["left-call"][0]) == 4
    assert core.scheduler.reservations.total() == 40  # the right branch's call is still to come
    assert core.reserve("agent", 10, priority=1.0, ttl_s=60.0, call_id="more")
    assert core.unreserve("agent", call_id="right") and core.scheduler.reservations.total() == 10
    assert core.unreserve("agent") and len(core.scheduler.reservations) == 0
    core.check_invariants()
