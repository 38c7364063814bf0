"""The cache counts what tool-waiting programs' KV loses to eviction, or would lose but for a pin
(``CacheCounters.tool_wait_tokens_lost``): evicted unpinned, passed over in eviction order because pinned, or
pinned memory that kept a prompt out. Each pin's KV counts once."""

from __future__ import annotations

import pytest

from plait.cache import NextUse
from tests.cache.test_radix_pins_and_hints import A, B, C, make_env
from tests.conftest import FakeClock, patch_cache_clock


@pytest.fixture(autouse=True)
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    return patch_cache_clock(monkeypatch, FakeClock())


def _lost(env) -> int:
    return env.cache.counters.tool_wait_tokens_lost


def test_evicting_a_tool_waiting_programs_kv_counts_only_that_kv():
    env = make_env(num_slots=32, policy="next-use")
    env.serve(A, program="waits")
    env.serve(B, program="runs")
    assert env.hints.next_use(program_id="waits", steps=1, seconds=5.0)  # its tool is expected back in 5 s
    assert env.hints.next_use(program_id="runs", steps=1)  # no tool running
    env.cache.evict(16)
    assert env.resident(A) == env.resident(B) == 0
    assert _lost(env) == len(A)


def test_pinned_kv_that_eviction_passes_over_counts_once_per_pin(clock: FakeClock):
    env = make_env(num_slots=32, policy="next-use", pin_budget_fraction=0.5)
    env.serve(A, program="pinned")
    env.serve(B, program="unpinned")
    env.serve(C, program="idle")
    # The pinned program's tool returns last: without its pin, its KV would be the first of the two to go.
    assert env.hints.next_use(program_id="pinned", steps=1, seconds=50.0)
    assert env.hints.next_use(program_id="unpinned", steps=1, seconds=5.0)
    assert env.hints.next_use(program_id="idle", steps=1)
    assert env.hints.pin(30.0, program_id="pinned")
    env.cache.evict(8)  # takes C (no tool): nothing a tool wait holds is reached
    assert env.resident(C) == 0 and _lost(env) == 0
    env.cache.evict(8)  # takes B, whose tool returns before A's: A was spared by its pin
    assert env.resident(B) == 0 and env.resident(A) == len(A)
    assert _lost(env) == len(B) + len(A)
    env.serve(C, program="idle")
    env.cache.evict(8)
    assert _lost(env) == len(B) + len(A), "the same pin is counted once"
    clock.advance(31.0)  # the pin ran out and A is evicted in this same wait: it was counted already
    env.cache.evict(8)
    assert env.resident(A) == 0 and _lost(env) == len(B) + len(A)


def test_pinned_memory_that_keeps_a_prompt_out_counts_the_kv_it_would_give(clock: FakeClock):
    env = make_env(num_slots=32, policy="next-use", pin_budget_fraction=0.5)
    env.serve(A, program="far")
    env.serve(B, program="near")
    assert env.hints.next_use(program_id="far", steps=1, seconds=50.0)
    assert env.hints.next_use(program_id="near", steps=1, seconds=1.0)
    assert env.hints.pin(30.0, program_id="far")
    assert env.hints.pin(30.0, program_id="near")
    env.cache.note_pins_held(4)  # the pinned KV evicted first, in policy order, would have made the room
    assert _lost(env) == len(A)
    env.cache.note_pins_held(4)
    assert _lost(env) == len(A), "counted once per pin"
    env.cache.note_pins_held(12)
    assert _lost(env) == len(A) + len(B)


def test_kv_of_programs_not_waiting_on_a_tool_is_never_counted():
    env = make_env(num_slots=32, policy="next-use")
    env.serve(A, program="done")
    env.serve(B)  # no program at all
    assert env.hints.next_use(program_id="done", steps=1)
    env.cache.evict(16)
    assert env.resident(A) == env.resident(B) == 0
    assert _lost(env) == 0


def _held_pin():
    """A program waiting on a tool with its KV (A) pinned, counted once as holding a prompt out."""
    env = make_env(num_slots=32, policy="next-use", pin_budget_fraction=0.5)
    env.serve(A, program="far")
    assert env.hints.next_use(program_id="far", steps=1, seconds=50.0)
    assert env.hints.pin(30.0, program_id="far")
    env.cache.note_pins_held(4)
    assert _lost(env) == len(A)
    return env


def test_a_new_pin_after_an_unpin_counts_again_and_an_extended_pin_does_not():
    env = _held_pin()
    assert env.hints.pin(40.0, program_id="far")  # a second tool of the same wait extends the pin
    env.cache.note_pins_held(4)
    assert _lost(env) == len(A), "an extended pin is the same wait"
    assert env.hints.unpin(program_id="far")  # the tools returned; the next wait pins for less time than before
    assert env.hints.pin(5.0, program_id="far")
    env.cache.note_pins_held(4)
    assert _lost(env) == 2 * len(A), "a new wait counts its KV again"


def test_a_split_node_keeps_its_counted_mark():
    env = _held_pin()
    env.cache.unmatch(env.cache.match_prefix([*A[:4], 99]))  # splits A's node in two
    env.cache.note_pins_held(8)
    assert _lost(env) == len(A)


def test_evicting_unpinned_kv_under_lru_counts_it_too():
    env = make_env(num_slots=32, policy="lru")
    env.serve(A, program="waits")
    env.program_hints["waits"] = NextUse(steps=1, seconds=5.0)  # LRU ignores hints; the count still reads them
    env.cache.evict(8)
    assert _lost(env) == len(A)
