"""Deterministic tests of the radix cache's eviction order, TTL pins, next-use hints and host tier.

Every test drives the cache the way the scheduler does (match, compute the rest into fresh slots, cache_finished)
and writes "true" KV rows (a pure function of the token prefix), so a row served from anywhere can be checked
bit for bit. Time is a fake clock standing in for ``time`` in plait.cache.radix and plait.cache.hints.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from typing import Any

import pytest
import torch

from plait.cache import (
    CacheHints,
    HostTier,
    KVPool,
    LRUPolicy,
    NextUse,
    NextUsePolicy,
    PrefixMatch,
    RadixCache,
    RadixNode,
    SlotAllocator,
)
from tests.conftest import FakeClock, patch_cache_clock

NUM_LAYERS, NUM_KV_HEADS, HEAD_DIM = 2, 1, 4


@pytest.fixture(autouse=True)
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    return patch_cache_clock(monkeypatch, FakeClock())


# --- the true KV of a token prefix ---------------------------------------------------------------------------------


@cache
def true_row(prefix: tuple[int, ...]) -> torch.Tensor:
    seed = int.from_bytes(hashlib.blake2b(bytes(prefix), digest_size=8).digest(), "little") & (2**63 - 1)
    return torch.randn(NUM_LAYERS, 2, NUM_KV_HEADS, HEAD_DIM, generator=torch.Generator().manual_seed(seed))


def true_rows(tokens: list[int], start: int, stop: int) -> torch.Tensor:
    if stop <= start:
        return torch.empty(0, NUM_LAYERS, 2, NUM_KV_HEADS, HEAD_DIM)
    return torch.stack([true_row(tuple(tokens[: i + 1])) for i in range(start, stop)])


def pool_rows(pool: KVPool, slots: torch.Tensor) -> torch.Tensor:
    return torch.stack(
        [torch.stack([pool.k[layer][slots], pool.v[layer][slots]], 1) for layer in range(pool.num_layers)], 1
    )


# --- an environment and a scheduler-like client ---------------------------------------------------------------------


@dataclass
class Env:
    pool: KVPool
    allocator: SlotAllocator
    cache: RadixCache
    hints: CacheHints
    host: HostTier | None
    program_hints: dict[str, NextUse]

    def serve(self, tokens: list[int], program: str | None = None, allow_pinned: bool = False) -> PrefixMatch:
        """One request start to finish: match (waiting out host loads), compute the rest, hand it to the cache."""
        match = self.match(tokens, program)
        need = len(tokens) - match.length
        if self.allocator.num_free < need:
            self.cache.evict(need - self.allocator.num_free, allow_pinned=allow_pinned)
        new = self.allocator.alloc(need)
        self.write(tokens, match.length, new)
        self.cache.cache_finished(tokens, torch.cat([match.slots, new]), match.handle, program)
        self.check()
        return match

    def match(self, tokens: list[int], program: str | None = None) -> PrefixMatch:
        for _ in range(len(tokens) + 1):
            match = self.cache.match_prefix(tokens, program)
            if not match.loading:
                self.assert_true_kv(tokens, match.slots)
                return match
            self.cache.wait_for_loads()
        raise AssertionError("match_prefix kept reporting loading")

    def write(self, tokens: list[int], start: int, slots: torch.Tensor) -> None:
        rows = true_rows(tokens, start, start + slots.numel())
        for layer in range(NUM_LAYERS):
            self.pool.write(layer, slots, rows[:, layer, 0], rows[:, layer, 1])

    def assert_true_kv(self, tokens: list[int], slots: torch.Tensor) -> None:
        assert torch.equal(pool_rows(self.pool, slots), true_rows(tokens, 0, slots.numel())), "served KV is wrong"

    def resident(self, tokens: list[int]) -> int:
        """How many leading tokens of ``tokens`` the cache holds on the device (read-only: no split, no touch)."""
        return self._held(tokens, lambda node: node.on_device)

    def known(self, tokens: list[int]) -> int:
        """How many leading tokens the tree holds anywhere (device, host, or loading)."""
        return self._held(tokens, lambda node: True)

    def _held(self, tokens: list[int], ok: Any) -> int:
        node, i = self.cache.root, 0
        while i < len(tokens):
            child = node.children.get(tokens[i])
            if child is None or not ok(child):
                break
            n = 0
            while n < len(child.key) and i + n < len(tokens) and child.key[n] == tokens[i + n]:
                n += 1
            i += n
            if n < len(child.key):
                break
            node = child
        return i

    def node(self, tokens: list[int]) -> RadixNode:
        """The node that ends exactly at ``tokens``."""
        node, i = self.cache.root, 0
        while i < len(tokens):
            node = node.children[tokens[i]]
            i += len(node)
        assert i == len(tokens)
        return node

    def check(self) -> None:
        self.cache.check()
        self.allocator.check()


def make_env(num_slots: int = 32, host_slots: int = 0, policy: str = "lru", pin_budget_fraction: float = 0.25) -> Env:
    pool = KVPool(NUM_LAYERS, num_slots, NUM_KV_HEADS, HEAD_DIM, torch.float32, "cpu")
    allocator = SlotAllocator(num_slots)
    host = HostTier(pool, host_slots) if host_slots else None
    program_hints: dict[str, NextUse] = {}
    chosen = NextUsePolicy(program_hints) if policy == "next-use" else LRUPolicy()
    cache = RadixCache(allocator, chosen, host, pin_budget_fraction, program_hints)
    return Env(pool, allocator, cache, CacheHints(cache), host, program_hints)


A, B, C, D, E, F, G, H = ([t] * 8 for t in range(8))  # eight disjoint 8-token prompts


# --- pins ----------------------------------------------------------------------------------------------------------


def test_pinned_prefix_survives_pressure_until_its_ttl_then_goes_in_lru_order(clock: FakeClock) -> None:
    env = make_env(num_slots=32, pin_budget_fraction=0.25)  # budget: 8 slots
    for prompt in (A, B, C, D):
        env.serve(prompt)
    assert env.hints.pin(10.0, prefix=A)
    assert env.allocator.num_free == 0
    for prompt, displaced in ((E, B), (F, C), (G, D)):  # A is the least recently used, yet it stays
        env.serve(prompt)
        assert env.resident(A) == 8, "a pinned prefix was evicted"
        assert env.resident(displaced) == 0, "eviction skipped the least recently used unpinned prefix"
    assert env.cache.evictable_slots() == 24
    assert env.cache.evict(32) == 24, "evict stops at the pin"
    assert env.resident(A) == 8 and env.allocator.num_free == 24

    for prompt in (E, F, G):
        env.serve(prompt)
    clock.advance(10.001)  # the TTL runs out: A is an ordinary (and the least recently used) prefix again
    assert env.cache.pinned_slots() == 0
    assert env.cache.evictable_slots() == 32
    env.serve(H)
    assert env.resident(A) == 0, "the expired pin still protected the least recently used prefix"
    assert all(env.resident(prompt) == 8 for prompt in (E, F, G, H))


def test_evict_without_allow_pinned_stops_at_pins(clock: FakeClock) -> None:
    env = make_env(num_slots=32, pin_budget_fraction=0.25)
    env.serve(A)
    env.serve(B)
    assert env.hints.pin(5.0, prefix=A)
    assert env.cache.evict(16) == 8
    assert env.resident(A) == 8 and env.resident(B) == 0
    assert env.cache.evict(16) == 0
    clock.advance(5.0)  # pin_until == now: no longer active
    assert env.cache.evict(16) == 8
    env.check()


def test_allow_pinned_evicts_pins_but_only_after_every_unpinned_candidate() -> None:
    env = make_env(num_slots=32, pin_budget_fraction=0.5)  # budget: 16 slots
    small = [[t] * 4 for t in range(4)]  # oldest first: the two pinned ones are the least recently used
    for prompt in small:
        env.serve(prompt)
    assert env.hints.pin(60.0, prefix=small[0])
    assert env.hints.pin(60.0, prefix=small[1])
    order = []
    for _ in small:
        assert env.cache.evict(1, allow_pinned=True) == 4
        order.append(next(i for i, prompt in enumerate(small) if env.resident(prompt) == 0 and i not in order))
    assert order == [2, 3, 0, 1], "pinned prefixes must go after every unpinned one, then in policy order"
    assert env.allocator.num_free == 32
    env.check()


def test_an_eviction_frees_at_least_the_floor_but_never_pins_beyond_the_request(clock: FakeClock) -> None:
    """One tree walk per eviction: each frees at least ``min_eviction`` slots (in policy order) so a full pool is not
    walked on every step for a few decode slots; pinned KV still goes only as far as the caller asked."""
    env = make_env(num_slots=64, pin_budget_fraction=0.25)
    env.cache.min_eviction = 16
    for prompt in (A, B, C, D):
        env.serve(prompt)
    assert env.cache.resident_length([*A, 99]) == 8 and env.cache.resident_length([99, *A]) == 0
    assert env.cache.evict(1) == 16  # asked for 1, freed the floor: the two least recently used prompts
    assert env.resident(A) == 0 and env.resident(B) == 0 and env.resident(C) == 8
    assert env.hints.pin(30.0, prefix=C)
    assert env.cache.evict(1, allow_pinned=True) == 8  # D (unpinned) fills the floor's first half; the pin stays
    assert env.resident(C) == 8 and env.resident(D) == 0
    assert env.cache.evict(1, allow_pinned=True) == 8  # only the pin is left: taken, as asked, but no further
    env.check()


def test_a_running_request_never_fails_because_memory_is_pinned() -> None:
    env = make_env(num_slots=16, pin_budget_fraction=0.5)
    env.serve(A)
    assert env.hints.pin(60.0, prefix=A)
    match = env.match(B)  # a running request holding the other half
    slots = torch.cat([match.slots, env.allocator.alloc(8)])
    env.write(B, 0, slots)
    assert env.allocator.num_free == 0
    assert env.cache.evict(4) == 0, "pinned memory must not go for a new admission"
    assert env.cache.evict(4, allow_pinned=True) == 8, "pinned memory must yield to a running request"
    more = env.allocator.alloc(4)
    tokens = B + [9] * 4
    env.write(tokens, 8, more)
    env.cache.cache_finished(tokens, torch.cat([slots, more]), match.handle)
    env.check()
    assert env.resident(tokens) == 12


def test_pins_beyond_the_budget_are_refused(clock: FakeClock) -> None:
    env = make_env(num_slots=32, pin_budget_fraction=0.25)  # budget: 8 slots
    first, second = [1] * 6, [2] * 6
    env.serve(first)
    env.serve(second)
    assert env.cache.pin_budget == 8
    assert env.hints.pin(30.0, prefix=first)
    assert env.cache.pinned_slots() == 6
    assert not env.hints.pin(30.0, prefix=second), "6 + 6 > 8: the pin must be refused"
    assert env.cache.counters.pins_refused == 1
    assert env.node(second).pin_until == 0.0 and env.cache.pinned_slots() == 6
    assert env.hints.pin(30.0, prefix=first), "re-pinning what is pinned costs nothing"
    longer = [*first, 3, 3]
    env.serve(longer)
    assert env.hints.pin(30.0, prefix=longer), "the 2 extra tokens fit exactly"
    assert env.cache.pinned_slots() == 8
    assert not [e for e in env.cache.events if e.kind == "pin_refused"]  # a prefix pin names no program
    env.serve([4] * 1, program="p")
    assert not env.hints.pin(30.0, program_id="p")
    assert env.cache.counters.pins_refused == 2
    (refused,) = [e for e in env.cache.events if e.kind == "pin_refused"]  # the runtime learns that p is not kept
    assert refused.programs == ("p",) and refused.tokens == 1
    assert env.cache.counters.hints_ignored == 0
    assert env.cache.pinned_slots() <= env.cache.pin_budget
    clock.advance(31.0)
    assert env.cache.pinned_slots() == 0
    assert env.hints.pin(30.0, prefix=second)
    assert env.cache.pinned_slots() == 6


def test_a_pin_covers_the_whole_path_from_the_root() -> None:
    env = make_env(num_slots=32, pin_budget_fraction=0.5)
    env.serve([1] * 4)
    env.serve([1] * 4 + [2] * 4)  # two nodes: [1]*4 and [2]*4 below it
    assert env.hints.pin(30.0, prefix=[1] * 4 + [2] * 4)
    assert env.cache.pinned_slots() == 8
    assert env.node([1] * 4).pin_until > 0 and env.node([1] * 4 + [2] * 4).pin_until > 0


def test_evictable_slots_excludes_active_pins(clock: FakeClock) -> None:
    env = make_env(num_slots=32, pin_budget_fraction=0.25)
    env.serve(A)
    env.serve(B)
    assert env.cache.evictable_slots() == 16
    assert env.hints.pin(10.0, prefix=A)
    assert env.cache.evictable_slots() == 8
    match = env.cache.match_prefix(B)  # locked by a request: not evictable either
    assert env.cache.evictable_slots() == 0
    env.cache.unmatch(match)
    assert env.cache.evictable_slots() == 8
    assert env.hints.unpin(prefix=A)
    assert env.cache.evictable_slots() == 16
    assert env.hints.pin(10.0, prefix=A)
    clock.advance(10.5)
    assert env.cache.evictable_slots() == 16
    assert env.cache.evict(16) == 16


def test_evictable_slots_never_promises_more_than_evict_frees() -> None:
    env = make_env(num_slots=16, pin_budget_fraction=0.5)
    system = [1, 1, 1, 1]
    env.serve([*system, 2, 2], program="a")
    env.serve([*system, 3, 3], program="b")
    assert env.hints.pin(60.0, program_id="a")
    assert env.hints.pin(60.0, program_id="b")
    assert env.hints.unpin(program_id="a")  # program b's pin still needs the shared system prompt
    promised = env.cache.evictable_slots()
    freed = env.cache.evict(promised)
    assert freed >= promised, f"evictable_slots() promised {promised}, evict() freed {freed}"


def test_pin_budget_holds_after_a_pinned_prefix_is_forced_out_and_loaded_back() -> None:
    env = make_env(num_slots=16, host_slots=16, pin_budget_fraction=0.25)  # budget: 4 slots
    first, second = [1, 1, 1], [2, 2, 2]
    env.serve(first)
    assert env.hints.pin(60.0, prefix=first)
    env.cache.evict(16, allow_pinned=True)  # a running request needed the memory
    env.serve(second)
    pinned_second = env.hints.pin(60.0, prefix=second)
    env.match(first)  # loads `first` back from the host tier (and locks it)
    assert env.cache.pinned_slots() <= env.cache.pin_budget, (
        f"{env.cache.pinned_slots()} slots pinned, budget {env.cache.pin_budget} (second pin granted: {pinned_second})"
    )


# --- next-use hints ------------------------------------------------------------------------------------------------


def _evict_one_prompt(env: Env, prompts: dict[str, list[int]]) -> str:
    """Evict one prompt's worth and say which prompt went."""
    before = {name for name, tokens in prompts.items() if env.resident(tokens) == len(tokens)}
    assert env.cache.evict(1) == 4
    after = {name for name, tokens in prompts.items() if env.resident(tokens) == len(tokens)}
    (gone,) = before - after
    return gone


def test_next_use_evicts_the_farthest_next_use_first() -> None:
    env = make_env(num_slots=32, policy="next-use")
    prompts = {"in1": [1] * 4, "in5": [2] * 4, "in10": [3] * 4}
    for name in ("in5", "in10", "in1"):  # recency alone would evict in5 first
        env.serve(prompts[name])
    for name, steps in (("in1", 1), ("in5", 5), ("in10", 10)):
        assert env.hints.next_use(prefix=prompts[name], steps=steps)
    assert _evict_one_prompt(env, prompts) == "in10"
    assert _evict_one_prompt(env, prompts) == "in5"
    assert env.resident(prompts["in1"]) == 4


def test_unhinted_prefixes_go_before_hinted_ones() -> None:
    env = make_env(num_slots=32, policy="next-use")
    prompts = {"in10": [3] * 4, "in50": [4] * 4, "unhinted": [5] * 4}
    for name in ("in10", "in50", "unhinted"):  # the unhinted one is the most recently used
        env.serve(prompts[name])
    assert env.hints.next_use(prefix=prompts["in10"], steps=10)
    assert env.hints.next_use(prefix=prompts["in50"], steps=50)
    assert _evict_one_prompt(env, prompts) == "unhinted"
    assert _evict_one_prompt(env, prompts) == "in50"


def test_seconds_hints_order_eviction_too() -> None:
    env = make_env(num_slots=32, policy="next-use")
    prompts = {"soon": [1] * 4, "later": [2] * 4}
    env.serve(prompts["later"])
    env.serve(prompts["soon"])
    assert env.hints.next_use(prefix=prompts["soon"], seconds=10.0)
    assert env.hints.next_use(prefix=prompts["later"], seconds=1000.0)
    assert _evict_one_prompt(env, prompts) == "later"


def _serve_programs(env: Env) -> dict[str, list[int]]:
    prompts = {"a": [1] * 4, "b": [2] * 4, "c": [3] * 4}
    env.serve(prompts["c"])  # untagged at insertion ...
    env.cache.unmatch(env.cache.match_prefix(prompts["c"], program_id="c"))  # ... tagged by a match
    env.serve(prompts["b"], program="b")  # tagged at insertion
    env.serve(prompts["a"], program="a")
    for name, steps in (("a", 1), ("b", 5), ("c", 10)):
        assert env.hints.next_use(program_id=name, steps=steps)
    return prompts


def test_program_hints_order_eviction_like_prefix_hints() -> None:
    env = make_env(num_slots=32, policy="next-use")
    prompts = _serve_programs(env)
    assert _evict_one_prompt(env, prompts) == "c"
    assert _evict_one_prompt(env, prompts) == "b"
    assert env.resident(prompts["a"]) == 4


def test_forget_program_drops_its_hints_and_tags() -> None:
    env = make_env(num_slots=32, policy="next-use")
    prompts = _serve_programs(env)
    env.hints.forget_program("a")
    assert "a" not in env.program_hints
    assert not any("a" in node.programs for node in env.cache._all_nodes())
    assert _evict_one_prompt(env, prompts) == "a", "a forgotten program's prefix is unhinted: it goes first"
    ignored = env.cache.counters.hints_ignored
    assert not env.hints.next_use(program_id="a", steps=1)
    assert env.cache.counters.hints_ignored == ignored + 1
    assert _evict_one_prompt(env, prompts) == "c"


# --- hints about things the cache does not hold -------------------------------------------------------------------

IGNORED_HINTS = {
    "next_use unknown program": lambda h: h.next_use(program_id="nope", steps=1),
    "next_use unknown prefix": lambda h: h.next_use(prefix=[9, 9], steps=1),
    "next_use empty prefix": lambda h: h.next_use(prefix=[], steps=1),
    "next_use no subject": lambda h: h.next_use(steps=1),
    "pin unknown program": lambda h: h.pin(5.0, program_id="nope"),
    "pin unknown prefix": lambda h: h.pin(5.0, prefix=[9]),
    "pin no subject": lambda h: h.pin(5.0),
    "pin zero ttl": lambda h: h.pin(0.0, prefix=[1, 1]),
    "pin negative ttl": lambda h: h.pin(-1.0, program_id="p"),
    "pin host-only prefix": lambda h: h.pin(5.0, prefix=[2, 2]),
    "unpin unknown program": lambda h: h.unpin(program_id="nope"),
    "unpin unknown prefix": lambda h: h.unpin(prefix=[9]),
    "unpin no subject": lambda h: h.unpin(),
    "prefetch unknown program": lambda h: h.prefetch(program_id="nope"),
    "prefetch unknown prefix": lambda h: h.prefetch(prefix=[9]),
    "prefetch no subject": lambda h: h.prefetch(),
}


@pytest.mark.parametrize("hint", IGNORED_HINTS.values(), ids=IGNORED_HINTS.keys())
def test_hints_about_unknown_things_are_ignored_and_counted(hint: Any) -> None:
    env = make_env(num_slots=16, host_slots=16)
    env.serve([2, 2])
    env.serve([1, 1], program="p")
    env.cache.evict(2)  # [2, 2] is now host-only (the least recently used)
    assert env.resident([2, 2]) == 0 and env.known([2, 2]) == 2
    before = env.cache.counters.hints_ignored
    assert hint(env.hints) is False
    assert env.cache.counters.hints_ignored == before + 1
    assert env.cache.counters.pins_refused == 0
    assert env.cache.pinned_slots() == 0
    env.check()


def test_next_use_for_a_program_whose_prefixes_are_all_gone_is_ignored() -> None:
    env = make_env()  # no host tier: evicted prefixes leave the tree
    env.serve([1, 1], program="p")
    assert env.cache.evict(32) == 2
    assert env.known([1, 1]) == 0
    before = env.cache.counters.hints_ignored
    assert not env.hints.pin(5.0, program_id="p")  # pin and prefetch already ignore it
    assert env.hints.next_use(program_id="p", steps=1) is False
    assert env.cache.counters.hints_ignored == before + 2


def test_forgetting_an_unknown_program_is_harmless() -> None:
    env = make_env()
    env.hints.forget_program("nope")
    env.serve([1, 1], program="p")
    env.hints.forget_program("nope")
    assert env.hints.next_use(program_id="p", steps=1)


def test_prefetch_without_a_host_tier_is_ignored() -> None:
    env = make_env()
    env.serve([1, 1], program="p")
    assert not env.hints.prefetch(program_id="p")
    assert not env.hints.prefetch(prefix=[1, 1])
    assert env.cache.counters.hints_ignored == 2


# --- host tier -----------------------------------------------------------------------------------------------------


def test_evicted_prefix_is_written_back_then_loaded_on_match() -> None:
    env = make_env(num_slots=16, host_slots=32)
    env.serve(A)
    assert env.cache.evict(8) == 8
    assert env.cache.counters.write_backs == 1 and env.allocator.num_free == 16
    assert env.resident(A) == 0 and env.known(A) == 8
    env.check()

    match = env.cache.match_prefix(A)
    assert match.loading and match.length == 0 and match.handle is None
    assert env.cache.counters.loads == 1
    env.check()
    env.cache.wait_for_loads()
    match = env.cache.match_prefix(A)
    assert not match.loading and match.length == 8 and match.host_hit_tokens == 8
    env.assert_true_kv(A, match.slots)
    assert env.cache.counters.host_hit_tokens == 8
    env.cache.unmatch(match)
    assert env.cache.counters.host_hit_tokens == 0, "unmatch gives the hit back"

    again = env.cache.match_prefix(A)
    assert again.length == 8 and again.host_hit_tokens == 0, "once matched, the prefix is an ordinary GPU hit"
    env.cache.unmatch(again)
    env.check()


def test_only_the_evicted_part_of_a_path_is_loaded() -> None:
    env = make_env(num_slots=16, host_slots=32)
    env.serve([1] * 4)
    env.serve([1] * 4 + [2] * 4)
    assert env.cache.evict(1) == 4  # the leaf [2]*4
    assert env.resident([1] * 8) == 4
    env.cache.wait_for_loads()
    match = env.match([1] * 4 + [2] * 4)
    assert match.length == 8 and match.host_hit_tokens == 4
    env.cache.unmatch(match)
    assert env.cache.counters.loads == 1
    env.check()


def test_a_reused_evicted_prefix_is_written_back_only_once() -> None:
    env = make_env(num_slots=16, host_slots=32)
    env.serve(A)
    env.cache.evict(8)
    env.serve(A)  # loaded back: the host copy stays
    env.cache.evict(8)
    assert env.cache.counters.write_backs == 1 and env.cache.counters.evictions == 2
    env.serve(A)
    env.check()


@pytest.mark.parametrize("by_program", [False, True], ids=["prefix", "program"])
def test_prefetch_loads_ahead_so_the_next_match_is_an_immediate_hit(by_program: bool) -> None:
    env = make_env(num_slots=16, host_slots=32)
    env.serve(A, program="p")
    env.cache.evict(8)
    started = env.hints.prefetch(program_id="p") if by_program else env.hints.prefetch(prefix=A)
    assert started and env.cache.counters.loads == 1
    env.cache.wait_for_loads()
    match = env.cache.match_prefix(A)
    assert not match.loading and match.length == 8 and match.host_hit_tokens == 8
    env.assert_true_kv(A, match.slots)
    env.cache.unmatch(match)
    ignored = env.cache.counters.hints_ignored
    assert not env.hints.prefetch(prefix=A), "nothing left to load"
    assert env.cache.counters.hints_ignored == ignored and env.cache.counters.loads == 1
    env.check()


def test_a_full_host_tier_drops_the_oldest_host_copies() -> None:
    env = make_env(num_slots=16, host_slots=8)
    first, second, third = [1] * 4, [2] * 4, [3] * 4
    env.serve(first)
    env.serve(second)
    assert env.cache.evict(8) == 8  # both written back: the host tier is full
    assert env.host is not None and env.host.num_free == 0
    env.serve(third)
    assert env.cache.evict(4) == 4  # needs host room: the least recently used host-only prefix goes
    env.check()
    assert env.known(first) == 0, "the oldest host copy should have been dropped"
    assert env.known(second) == 4 and env.known(third) == 4
    assert env.cache.counters.write_backs == 3
    match = env.match(first)
    assert match.length == 0 and not match.loading
    env.cache.unmatch(match)
    env.serve(second)  # still loadable, and correct
    env.check()


def test_host_room_comes_from_copies_of_device_resident_prefixes_first() -> None:
    env = make_env(num_slots=16, host_slots=8)
    first, second, third = [1] * 4, [2] * 4, [3] * 4
    env.serve(first)
    env.serve(second)
    env.cache.evict(8)
    env.serve(first)  # loaded back: on the device and still on the host
    env.serve(third)
    env.cache.unmatch(env.cache.match_prefix(first))  # `third` is now the least recently used
    assert env.resident(first) == 4 and env.known(second) == 4
    assert env.cache.evict(4) == 4  # `third` goes to the host tier, which is full
    env.check()
    assert env.known(second) == 4, "a host-only prefix was dropped while a redundant copy could go"
    assert env.node(first).host_slots is None and env.resident(first) == 4
    assert env.node(third).host_slots is not None


def test_prefetch_of_a_path_survives_host_room_eviction() -> None:
    env = make_env(num_slots=8, host_slots=4)
    env.serve([1, 1, 2, 2])
    env.cache.unmatch(env.cache.match_prefix([1, 1]))  # split: [1, 1] -> [2, 2]
    assert env.cache.evict(4) == 4  # both written back: the host tier is full
    env.serve([7] * 8)  # the device is full of KV with no host copy
    env.hints.prefetch(prefix=[1, 1, 2, 2])
    env.cache.wait_for_loads()
    env.check()
    env.cache.evict(8, allow_pinned=True)
    assert env.allocator.num_free == env.allocator.num_slots, "device slots leaked"


# --- LRU -----------------------------------------------------------------------------------------------------------


def test_lru_cyclic_access_over_more_prefixes_than_fit_evicts_the_least_recently_used() -> None:
    env = make_env(num_slots=16)  # four 4-token prefixes fit, five are cycled through
    prompts = [[t] * 4 for t in range(5)]
    for step in range(15):
        current = prompts[step % 5]
        match = env.serve(current)
        assert match.length == 0, "cyclic access over more than fits always misses under LRU"
        expected = {(step - back) % 5 for back in range(min(step + 1, 4))}  # the four most recently used
        held = {i for i, prompt in enumerate(prompts) if env.resident(prompt) == 4}
        assert held == expected, f"step {step}: holds {sorted(held)}, LRU holds {sorted(expected)}"


def test_lru_a_match_refreshes_recency() -> None:
    env = make_env(num_slots=16)
    prompts = [[t] * 4 for t in range(5)]
    for prompt in prompts[:4]:
        env.serve(prompt)
    env.cache.unmatch(env.cache.match_prefix(prompts[0]))  # prompt 0 becomes the most recently used
    env.serve(prompts[4])
    assert env.resident(prompts[0]) == 4 and env.resident(prompts[1]) == 0


def test_a_locked_prefix_is_never_evicted() -> None:
    env = make_env(num_slots=16, pin_budget_fraction=0.5)
    env.serve(A)
    env.serve(B)
    match = env.cache.match_prefix(A)
    assert env.cache.evict(16, allow_pinned=True) == 8
    assert env.resident(A) == 8 and env.resident(B) == 0
    env.cache.unmatch(match)
    assert env.cache.evict(16) == 8
    assert env.allocator.num_free == 16
    env.check()


def test_flush_drops_device_kv_and_host_copies_but_keeps_what_is_in_use() -> None:
    env = make_env(num_slots=32, host_slots=16)
    first, second, in_use = [1] * 4, [2] * 4, [3, 3, 3, 3, 4]
    env.serve(first)
    env.serve(second)
    assert env.cache.evict(8) == 8  # both now host-only copies
    env.serve(first)  # loaded back: on the device and on the host
    match = env.match(in_use)  # nothing cached for it yet
    held = env.allocator.alloc(5)
    env.write(in_use, 0, held)
    env.cache.cache_finished(in_use, held, match.handle)
    locked = env.match(in_use)  # a running request holds it
    assert locked.length == 5
    writes_before = env.cache.counters.write_backs
    env.cache.flush()
    env.check()
    assert env.cache.counters.write_backs == writes_before, "a flush copies nothing to the host"
    assert env.known(first) == 0 and env.known(second) == 0
    assert env.host is not None and env.host.num_free == 16, "host copies survived the flush"
    assert env.resident(in_use) == 5, "a prefix in use was dropped"
    env.cache.unmatch(locked)
    env.cache.flush()
    assert env.allocator.num_free == 32 and env.known(in_use) == 0


def test_a_residency_walk_resumes_after_other_prompts_are_evicted(clock: FakeClock, monkeypatch) -> None:
    """Cache affinity asks every waiting prompt's residency every step. A walk resumes at the node it matched last
    while that node is still resident, also after an eviction of other KV; once its own KV goes, it walks again and
    sees the shorter residency."""
    from plait.cache import radix as radix_module
    from plait.cache.radix_node import ResidencyMark

    env = make_env(num_slots=32)
    env.cache.min_eviction = 8
    for prompt in (A, B, C):
        env.serve(prompt)
    mark = ResidencyMark()
    prompt = [*C, 99]
    assert env.cache.resident_length(prompt, mark) == 8
    compares: list[int] = []
    real = radix_module.common_prefix_length
    monkeypatch.setattr(radix_module, "common_prefix_length", lambda a, b: compares.append(1) or real(a, b))
    assert env.cache.evict(1) == 8 and env.resident(A) == 0  # the least recently used prompt, not this one
    assert env.cache.resident_length(prompt, mark) == 8
    assert compares == []  # resumed at C's node: one child lookup, no token comparison
    env.cache.evict(16)  # B, then C
    assert env.resident(C) == 0
    assert env.cache.resident_length(prompt, mark) == 0 == env.cache.resident_length(prompt)
    env.check()


def test_a_loaded_node_becomes_usable_only_after_its_parent(clock: FakeClock) -> None:
    """Loads finish one by one; a node whose copy landed while its parent's has not stays loading, so a resident
    node's whole path is resident (residency walks resume on that)."""

    class Job:
        def __init__(self, done: bool) -> None:
            self.finished = done

        def done(self) -> bool:
            return self.finished

        def wait(self) -> None:
            self.finished = True

    env = make_env(num_slots=32)
    env.serve([*A, *B])
    env.serve([*A, *C])  # splits [A, B] at A: A is the parent of B and of C
    parent = env.node([*A])
    child = env.node([*A, *B])
    assert child.parent is parent
    parent_job, child_job = Job(done=False), Job(done=True)
    for node, job in ((child, child_job), (parent, parent_job)):
        node.load = job  # as a load starts: loading KV is not evictable
        env.cache.evictable_size -= len(node)
        env.cache._loading.append(node)
    env.cache.poll()
    assert child.load is child_job and not child.on_device  # its copy landed, its parent's has not
    parent_job.finished = True
    env.cache.poll()
    assert parent.on_device and child.on_device and env.cache._loading == []
    env.check()
