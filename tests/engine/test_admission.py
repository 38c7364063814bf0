"""Admission keeps room for what running sequences will still take, and deltas say how much of a prompt was cached."""

from __future__ import annotations

from plait.engine import EnginePolicy, GenerateRequest, SamplingParams
from plait.engine.admission import Stop
from tests.conftest import tiny_core


def forced(prompt_len: int, max_tokens: int, offset: int, n: int = 1) -> GenerateRequest:
    ids = [(offset + 7 * i) % 300 + 100 for i in range(prompt_len)]
    return GenerateRequest(
        prompt_token_ids=ids, sampling=SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True, n=n)
    )


def run(core, requests):
    for request in requests:
        core.add_request(request)
    done: dict[str, int] = {}
    steps = 0
    while core.has_work():
        steps += 1
        assert steps < 10_000
        for delta in core.step():
            if delta.finish_reason is not None:
                done[delta.request_id] = delta.completion_tokens
    return done


def long_prompt_beside_decodes(reserve: bool):
    """Four short prompts decoding 120 tokens each; 80 tokens in, a 420-token prompt (60 to generate), prefilled 32
    tokens a step, in an 800-slot pool: its chunks would take the room the decodes need before they finish."""
    core = tiny_core(kv_slots=800, chunk_size=32, max_batch_tokens=64, prefix_cache="none")
    core.scheduler.config.reserve_decode = reserve
    requests = [forced(16, 120, i) for i in range(4)]
    for request in requests:
        core.add_request(request)
    for _ in range(80):  # the short ones are decoding
        core.step()
    late = forced(420, 60, 99)
    done = run(core, [late])
    return core, done, [*requests, late]


def test_a_long_prefill_beside_decodes_does_not_retract_them():
    over, _, _ = long_prompt_beside_decodes(reserve=False)
    assert over.scheduler.num_retractions > 0  # the scenario does run out of memory when admission over-admits
    core, done, requests = long_prompt_beside_decodes(reserve=True)
    assert core.scheduler.num_retractions == 0
    assert {r.request_id for r in requests} <= done.keys()
    assert core.kv_in_use() == 0


def test_deltas_report_the_cached_part_of_the_prompt():
    core = tiny_core()
    first = forced(200, 4, 5)
    again = GenerateRequest(prompt_token_ids=list(first.prompt_token_ids), sampling=first.sampling)
    cached: dict[str, int] = {}
    for request in (first, again):
        core.add_request(request)
        while core.has_work():
            for delta in core.step():
                cached[delta.request_id] = delta.cached_tokens
    assert cached[first.request_id] == 0
    assert 150 <= cached[again.request_id] <= 199  # all but the last token, down to the cache's granularity


def test_a_cached_prefix_the_new_prompt_locks_is_not_counted_as_room():
    """300 cached (evictable) tokens count as free until a prompt that shares them is admitted and locks them; the
    room check comes after the match, so the prompt waits instead of retracting the decodes later."""
    core = tiny_core(kv_slots=800, chunk_size=64, max_batch_tokens=128)
    shared = forced(300, 1, 7)
    run(core, [shared])  # now cached, unlocked
    decodes = [forced(16, 100, i) for i in range(4)]
    for request in decodes:
        core.add_request(request)
    core.step()
    extended = GenerateRequest(
        prompt_token_ids=list(shared.prompt_token_ids) + [150 + i % 100 for i in range(200)],
        sampling=SamplingParams(max_tokens=100, temperature=0.0, ignore_eos=True),
    )
    done = run(core, [extended])
    assert core.scheduler.num_retractions == 0
    assert {r.request_id for r in [*decodes, extended]} <= done.keys()


def test_a_running_prefill_takes_pinned_memory_instead_of_retracting_forever():
    """Two cached programs get pinned while a 300-token prompt is half prefilled, leaving it no unpinned room: pins
    yield to a running request (as they do for decodes), so it finishes; it used to be retracted, re-admitted on its
    own cached half and retracted again without end."""
    core = tiny_core(
        kv_slots=512, max_context=512, chunk_size=32, max_batch_tokens=64, policy=EnginePolicy(pin_budget_fraction=0.8)
    )
    a, c = forced(200, 1, 1), forced(150, 1, 2)
    a.program_id, c.program_id = "a", "c"
    run(core, [a])
    run(core, [c])
    late = forced(300, 4, 3)
    core.add_request(late)
    for _ in range(2):
        core.step()
    assert core.pin(ttl_s=60.0, program_id="a") and core.pin(ttl_s=60.0, program_id="c")
    done = run(core, [])
    assert done.get(late.request_id) == 4
    assert core.kv_in_use() == 0


def _sharing(shared: int, own: int, offset: int) -> GenerateRequest:
    """A prompt of ``shared`` common tokens and ``own`` tokens of its own (``offset`` picks which)."""
    common = forced(shared, 1, 0).prompt_token_ids
    return GenerateRequest(
        prompt_token_ids=common + forced(own, 1, offset).prompt_token_ids,
        sampling=SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True),
    )


def _first_step_prefill(shared: int) -> tuple[int, int]:
    """Two prompts sharing ``shared`` tokens arrive together: the tokens the first step prefills, and the admission
    stops it counted as holds."""
    core = tiny_core(kv_slots=4096, chunk_size=1024, max_batch_tokens=2048)
    core.set_policy(core.policy.with_values(prefix_hold_min_tokens=256))
    for request in (_sharing(shared, 40, 1), _sharing(shared, 40, 2)):
        core.add_request(request)
    core.step()
    prefilled = core.stats().prefill_tokens
    run(core, [])
    assert core.kv_in_use() == 0
    return prefilled, core.scheduler.admission_stops["held"]


def test_a_prompt_waits_for_a_long_shared_prefix_but_not_for_a_short_one():
    """Holding a prompt back until another computes their common prefix costs it a step; it pays only when the
    common part is long (prefix_hold_min_tokens), so a 100-token one is computed twice and a 600-token one once."""
    prefilled, held = _first_step_prefill(600)
    assert prefilled == 640 and held == 1  # the second prompt waited for the first's 600 tokens
    prefilled, held = _first_step_prefill(100)
    assert prefilled == 2 * 140 and held == 0  # both ran in the first step


# ---- single rules ----------------------------------------------------------------------------------------------------


def _waiting(core, request: GenerateRequest):
    core.add_request(request)
    return next(s for s in core.scheduler.waiting if s.request_id == request.request_id)


def test_stop_reasons_are_the_admission_stops_keys():
    """``plait bench`` and the stats read these names."""
    expected = {"token_budget", "memory", "decode_reserve", "prompt_fit", "rows", "pinned", "reserved", "retracted"}
    assert {stop.value for stop in Stop} == expected | {"held"}


def test_a_failed_rule_stops_admission_and_leaves_the_prompt_waiting():
    core = tiny_core()
    seq = _waiting(core, forced(40, 4, 1))
    admission = core.scheduler._admission(token_budget=0)
    assert not admission.within_token_budget() and admission.admit(seq) is Stop.TOKEN_BUDGET
    assert admission.stops() == ["token_budget"]
    assert core.scheduler._admission(64, excluded=[seq]).admit(seq) is Stop.RETRACTED
    assert seq in core.scheduler.waiting and core.kv_in_use() == 0
    admission = core.scheduler._admission(64)
    slots = admission.admit(seq)
    assert not isinstance(slots, Stop) and slots is not None and len(slots) == 40  # its whole prompt: one chunk
    assert seq in core.scheduler.running and admission.token_budget == 24 and admission.stop is None
    core.scheduler.release(seq)
    core.allocator.release(slots)
    assert core.kv_in_use() == 0


def test_a_group_about_to_fan_out_needs_a_row_per_sample():
    core = tiny_core(max_running=3)
    run(core, [])
    core.add_request(forced(16, 40, 1))
    core.step()  # one sequence running
    group = _waiting(core, forced(16, 4, 2, n=3))
    admission = core.scheduler._admission(64)
    assert admission.rows_free(2) and not admission.rows_free(3)
    assert admission.admit(group) is Stop.ROWS and group in core.scheduler.waiting
    run(core, [])


def test_the_decode_reserve_is_what_running_sequences_will_still_take():
    core = tiny_core(kv_slots=800, chunk_size=32, max_batch_tokens=64, prefix_cache="none")
    for i in range(2):
        core.add_request(forced(16, 50, i))
    for _ in range(5):
        core.step()  # both decoding
    late = _waiting(core, forced(100, 10, 9))
    admission = core.scheduler._admission(64)
    assert admission.candidates() == [late]
    running = core.scheduler.running
    assert admission.decode_reserve == sum(s.state.max_new_tokens - s.num_generated for s in running) > 0
    room, keep = admission.room_for(late), admission.decode_reserve + admission.future_decode(late)
    assert admission.keeps_decode_reserve(room - keep, room, keep)
    assert not admission.keeps_decode_reserve(room - keep + 1, room, keep)
    assert admission.fits(late, room - keep, keep) and not admission.fits(late, room - keep + 1, keep)
    run(core, [])


def test_reservations_hold_room_back_only_while_something_runs():
    core = tiny_core(kv_slots=800)
    seq = _waiting(core, forced(40, 4, 1))
    core.reserve("other", 100, priority=0.0, ttl_s=60.0)  # a call that ``seq`` (priority 0) does not outrank
    admission = core.scheduler._admission(64)
    assert admission.room_for(seq) == admission.room_for(seq, reserved=False)  # an idle engine waits for no one
    core.scheduler.waiting.remove(seq)
    core.add_request(forced(16, 40, 2))
    core.step()
    core.scheduler.add(seq)
    admission = core.scheduler._admission(64)
    assert admission.reserved_against(seq) == 100
    assert admission.room_for(seq) == admission.room_for(seq, reserved=False) - 100
    core.unreserve("other")
    run(core, [])
