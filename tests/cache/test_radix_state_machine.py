"""Property-based tests of the radix prefix cache: random request / hint / eviction sequences against a model.

A request matches a token sequence, computes the unmatched suffix into fresh slots (writing the "true" KV rows: a
pure function of the token prefix ending at each position), may publish chunks with ``cache_unfinished`` and hands
everything back with ``cache_finished``. Around the requests the machine evicts, polls host loads, gives next-use
hints, pins with TTLs on a fake clock, unpins, prefetches and forgets programs. After every step it checks the tree,
the allocator's exact reference counts, the lock counts, the free + evictable + held accounting, the pin budget and
that every KV row the cache holds or serves (device or host copy) is bit-identical to the true row.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from functools import cache
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

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
    ResidencyMark,
    SlotAllocator,
)
from plait.cache.radix_node import all_nodes
from tests.conftest import FakeClock, patch_cache_clock

# Known plait bugs, each reproduced by a strict xfail test in test_radix_pins_and_hints.py. While a flag is True the
# machine steers around (or tolerates exactly) that bug so it keeps checking everything else; flip it once fixed.
PREFETCH_DETACHES_NODES = False  # CacheHints.prefetch over >= 2 host-only nodes can load a node it just deleted
FORCED_EVICTION_KEEPS_PIN = False  # evict(allow_pinned=True) keeps the pin of a node sent to host: budget overrun
EVICTABLE_SLOTS_OVERCOUNTS = False  # after a partial unpin, evictable_slots() counts ancestors of pinned nodes

# Pin priorities (lower goes first); () is a pin given without one, which holds against every admission.
PRIORITIES: tuple[tuple[float, ...], ...] = ((), (1.0,), (2.0,), (3.0,))
NUM_LAYERS, NUM_KV_HEADS, HEAD_DIM = 2, 1, 4
ALPHABET = 6
MAX_PROMPT = 20
MAX_CONTEXT = 32
MAX_RUNNING = 4
PIN_BUDGET_FRACTION = 0.25
PROGRAMS = ("p0", "p1", "p2")

TOKENS = st.integers(0, ALPHABET - 1)


CLOCK = FakeClock()


@pytest.fixture
def fake_clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    return patch_cache_clock(monkeypatch, CLOCK)


# --- the true KV of a token prefix ---------------------------------------------------------------------------------


@cache
def true_row(prefix: tuple[int, ...]) -> torch.Tensor:
    """``[layers, 2 (K, V), kv_heads, head_dim]``: what the model would compute at the last position of ``prefix``."""
    seed = int.from_bytes(hashlib.blake2b(bytes(prefix), digest_size=8).digest(), "little") & (2**63 - 1)
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(NUM_LAYERS, 2, NUM_KV_HEADS, HEAD_DIM, generator=generator)


def true_rows(tokens: list[int], start: int, stop: int) -> torch.Tensor:
    """``[stop - start, layers, 2, kv_heads, head_dim]``: true rows of positions ``start .. stop - 1``."""
    if stop <= start:
        return torch.empty(0, NUM_LAYERS, 2, NUM_KV_HEADS, HEAD_DIM)
    return torch.stack([true_row(tuple(tokens[: i + 1])) for i in range(start, stop)])


def pool_rows(pool: KVPool, slots: torch.Tensor) -> torch.Tensor:
    """The rows stored at ``slots`` in the same layout as ``true_rows``."""
    per_layer = [torch.stack([pool.k[layer][slots], pool.v[layer][slots]], 1) for layer in range(pool.num_layers)]
    return torch.stack(per_layer, 1)


def write_true_kv(pool: KVPool, tokens: list[int], start: int, slots: torch.Tensor) -> None:
    rows = true_rows(tokens, start, start + slots.numel())
    for layer in range(pool.num_layers):
        pool.write(layer, slots, rows[:, layer, 0], rows[:, layer, 1])


def assert_true_kv(pool: KVPool, tokens: list[int], start: int, slots: torch.Tensor, what: str) -> None:
    expected = true_rows(tokens, start, start + slots.numel())
    assert torch.equal(pool_rows(pool, slots), expected), f"{what}: KV rows differ from the true rows of {tokens}"


# --- read-only views of the tree (no splits) ------------------------------------------------------------------------


def nodes_with_prefix(cache: RadixCache) -> list[tuple[RadixNode, list[int]]]:
    """Every node with the tokens from the root up to and including its own key."""
    out: list[tuple[RadixNode, list[int]]] = []
    stack = [(child, list(child.key)) for child in cache.root.children.values()]
    while stack:
        node, tokens = stack.pop()
        out.append((node, tokens))
        stack.extend((child, tokens + child.key) for child in node.children.values())
    return out


def path_nodes(cache: RadixCache, tokens: list[int]) -> list[RadixNode]:
    """The nodes ``cache._walk(tokens)`` would return, without splitting the last one."""
    node, i, path = cache.root, 0, []
    while i < len(tokens):
        child = node.children.get(tokens[i])
        if child is None:
            break
        path.append(child)
        n = 0
        while n < len(child.key) and i + n < len(tokens) and child.key[n] == tokens[i + n]:
            n += 1
        if n < len(child.key):
            break
        node, i = child, i + n
    return path


@dataclass
class Request:
    tokens: list[int]
    slots: torch.Tensor  # one allocator reference held per entry
    handle: Any  # the locked node (the root for an empty match)
    program: str | None


class RadixCacheMachine(RuleBasedStateMachine):
    POLICY = "lru"
    DEVICE_SLOTS = 64
    HOST_SLOTS = 32  # 0: no host tier

    def __init__(self) -> None:
        super().__init__()
        CLOCK.now = time.monotonic()  # NextUse.given_at reads the real clock: start the fake one next to it
        self.pool = KVPool(NUM_LAYERS, self.DEVICE_SLOTS, NUM_KV_HEADS, HEAD_DIM, torch.float32, "cpu")
        self.allocator = SlotAllocator(self.DEVICE_SLOTS)
        self.host = HostTier(self.pool, self.HOST_SLOTS) if self.HOST_SLOTS else None
        self.program_hints: dict[str, NextUse] = {}
        policy = NextUsePolicy(self.program_hints) if self.POLICY == "next-use" else LRUPolicy()
        self.cache = RadixCache(self.allocator, policy, self.host, PIN_BUDGET_FRACTION, self.program_hints)
        self.hints = CacheHints(self.cache)
        self.running: list[Request] = []
        self.seen: list[list[int]] = []  # token sequences used so far: reused so that prefixes collide
        self.marks: dict[tuple[int, ...], ResidencyMark] = {}  # kept across steps, as the scheduler keeps them

    # ---- helpers -----------------------------------------------------------------------------------------------

    def _remember(self, tokens: list[int]) -> None:
        if tokens not in self.seen:
            self.seen.append(list(tokens))
            del self.seen[:-16]

    def _draw_tokens(self, data: st.DataObject) -> list[int]:
        """Mostly a prefix of a sequence seen before plus a short new tail, so that prefixes collide and split."""
        if self.seen and data.draw(st.integers(0, 4), label="fresh") > 0:
            base = data.draw(st.sampled_from(self.seen), label="base")
            cut = data.draw(st.integers(1, min(len(base), MAX_PROMPT)), label="cut")
            tail = data.draw(st.lists(TOKENS, max_size=min(6, MAX_PROMPT - cut)), label="tail")
            tokens = base[:cut] + tail
        else:
            tokens = data.draw(st.lists(TOKENS, min_size=1, max_size=MAX_PROMPT), label="tokens")
        self._remember(tokens)
        return tokens

    def _draw_target(self, data: st.DataObject) -> tuple[str | None, list[int] | None]:
        """A hint's subject: a program, or a prefix (usually one the cache has seen)."""
        if data.draw(st.integers(0, 2), label="by_program") == 0:
            return data.draw(st.sampled_from((*PROGRAMS, "unknown")), label="program"), None
        return None, self._draw_tokens(data)

    def _match(self, tokens: list[int], program: str | None) -> PrefixMatch:
        """Match like the scheduler: while part of the prefix is on its way back from host memory, wait and retry.
        Each retry makes progress (a prefetch may have started only the head of the path, so a retry can start
        loading the rest), hence at most one retry per node of the path."""
        loaded = False
        for _ in range(len(tokens) + 1):
            match = self.cache.match_prefix(tokens, program)
            if not match.loading:
                if loaded:
                    assert match.host_hit_tokens > 0, "the prefix that was loading back did not count as a host hit"
                return match
            assert match.length == 0 and match.handle is None, "a loading match must hold nothing"
            self.cache.wait_for_loads()
            loaded = True
        raise AssertionError(f"match_prefix({tokens}) kept reporting loading")

    def _alloc(self, n: int, allow_pinned: bool) -> torch.Tensor | None:
        for pinned in (False, True) if allow_pinned else (False,):
            if self.allocator.num_free < n:
                self._evict_and_check(n - self.allocator.num_free, pinned)
        if self.allocator.num_free < n:
            return None
        return self.allocator.alloc(n)

    def _evictable_bounds(self, allow_pinned: bool) -> tuple[int, int, int]:
        """``(lower, upper, pin_blocked)``: ``evict`` must be able to free ``lower`` tokens (unlocked device nodes
        with no pinned or loading node below), may free up to ``upper`` (also loading nodes and their ancestors:
        evict may let loads land first); ``pin_blocked``: unpinned unlocked device tokens a pinned descendant keeps."""
        now = CLOCK.now
        lower = upper = pin_blocked = 0
        for node, _ in nodes_with_prefix(self.cache):
            if node.device_slots is None or node.lock_ref > 0:
                continue
            pinned = node.pin_until > now
            below = all_nodes(node)
            pinned_below = any(d.device_slots is not None and d.pin_until > now for d in below)
            if node.on_device and not pinned and pinned_below:
                pin_blocked += len(node)
            if not allow_pinned and (pinned or pinned_below):
                continue
            upper += len(node)
            if node.on_device and not any(d.load is not None for d in below):
                lower += len(node)
        return lower, upper, pin_blocked

    def _evict_and_check(self, n: int, allow_pinned: bool) -> int:
        lower, upper, pin_blocked = self._evictable_bounds(allow_pinned)
        promised = self.cache.evictable_slots() - (pin_blocked if EVICTABLE_SLOTS_OVERCOUNTS else 0)
        pinned_before = [node for node in self.cache._pinned if node.on_device and node.pin_until > CLOCK.now]
        free_before = self.allocator.num_free
        freed = self.cache.evict(n, allow_pinned=allow_pinned)
        assert self.allocator.num_free - free_before == freed, "evict() misreported what it freed"
        assert freed <= upper, "evict() freed a locked node, or a pinned one without allow_pinned"
        assert freed >= min(n, lower), f"evict({n}) freed {freed} with {lower} evictable"
        if not allow_pinned:
            assert freed >= min(n, promised), f"evict({n}) freed {freed}, evictable_slots() promised {promised}"
            assert all(node.on_device for node in pinned_before), "a pinned node was evicted without allow_pinned"
        elif FORCED_EVICTION_KEEPS_PIN:
            # Emulates the suggested fix (a pin yields for good when a running request needs its memory).
            for node in list(self.cache._pinned):
                if node.device_slots is None:
                    node.pin_until = 0.0
                    self.cache._pinned.discard(node)
        return freed

    # ---- requests ----------------------------------------------------------------------------------------------

    @initialize(documents=st.lists(st.lists(TOKENS, min_size=4, max_size=MAX_PROMPT), min_size=1, max_size=3))
    def warm_cache(self, documents: list[list[int]]) -> None:
        """Long prefixes (system prompts, shared context) that the run's requests build on, already computed once
        by a request of each program."""
        for document, program in zip(documents, PROGRAMS, strict=False):
            self._remember(document)
            match = self._match(document, program)
            new = self._alloc(len(document) - match.length, allow_pinned=False)
            assert new is not None
            write_true_kv(self.pool, document, match.length, new)
            self.cache.cache_finished(document, torch.cat([match.slots, new]), match.handle, program)

    @precondition(lambda self: len(self.running) < MAX_RUNNING)
    @rule(data=st.data(), program=st.sampled_from((None, *PROGRAMS)), give_back=st.integers(0, 7))
    def start_request(self, data: st.DataObject, program: str | None, give_back: int) -> None:
        tokens = self._draw_tokens(data)
        match = self._match(tokens, program)
        assert match.length <= len(tokens) and match.host_hit_tokens <= match.length
        assert_true_kv(self.pool, tokens, 0, match.slots, "match_prefix served")
        if give_back == 0:  # sometimes the scheduler matches, then cannot admit: unmatch gives it all back
            hits = (self.cache.counters.gpu_hit_tokens, self.cache.counters.host_hit_tokens)
            self.cache.unmatch(match)
            assert hits[0] - self.cache.counters.gpu_hit_tokens == match.length - match.host_hit_tokens
            assert hits[1] - self.cache.counters.host_hit_tokens == match.host_hit_tokens
            return
        new = self._alloc(len(tokens) - match.length, allow_pinned=False)
        if new is None:  # no room: a scheduler would leave it waiting
            self.cache.unmatch(match)
            return
        write_true_kv(self.pool, tokens, match.length, new)
        handle = match.handle if match.handle is not None else self.cache.root
        self.running.append(Request(tokens, torch.cat([match.slots, new]), handle, program))

    @precondition(lambda self: bool(self.running))
    @rule(data=st.data(), k=st.integers(1, 6), publish=st.booleans())
    def extend_request(self, data: st.DataObject, k: int, publish: bool) -> None:
        """A prefill chunk or decode steps: new KV; published with ``cache_unfinished`` or kept private."""
        request = data.draw(st.sampled_from(self.running), label="request")
        k = min(k, MAX_CONTEXT - len(request.tokens))
        if k <= 0:
            return
        new = self._alloc(k, allow_pinned=True)  # a running request: pins yield rather than retract it
        if new is None:
            return
        tokens = request.tokens + data.draw(st.lists(TOKENS, min_size=k, max_size=k), label="more")
        write_true_kv(self.pool, tokens, len(request.tokens), new)
        slots = torch.cat([request.slots, new])
        if publish:
            self._remember(tokens)
            slots, request.handle = self.cache.cache_unfinished(tokens, slots, request.handle, request.program)
            assert slots.numel() == len(tokens)
            assert_true_kv(self.pool, tokens, 0, slots, "cache_unfinished returned")
            assert path_nodes(self.cache, tokens)[-1] is request.handle, "the new handle is not the path's end"
        request.tokens, request.slots = tokens, slots

    @precondition(lambda self: bool(self.running))
    @rule(data=st.data())
    def finish_request(self, data: st.DataObject) -> None:
        request = self.running.pop(data.draw(st.integers(0, len(self.running) - 1), label="index"))
        self._remember(request.tokens)
        self.cache.cache_finished(request.tokens, request.slots, request.handle, request.program)
        held = path_nodes(self.cache, request.tokens)
        assert sum(len(node) for node in held) == len(request.tokens), "cache_finished did not keep the sequence"
        assert all(node.on_device for node in held), "a finished sequence is not on the device"

    @precondition(lambda self: bool(self.running) and len(self.running) < MAX_RUNNING)
    @rule(data=st.data())
    def fork_request(self, data: st.DataObject) -> None:
        """A sibling sample sharing its parent's KV: one more reference per slot and one more lock."""
        parent = data.draw(st.sampled_from(self.running), label="parent")
        # Siblings share the prompt once it is in the tree under the locked handle (the scheduler publishes every
        # prefill chunk before the fan-out): private slots shared without a lock would be evictable yet held.
        parent.slots, parent.handle = self.cache.cache_unfinished(
            parent.tokens, parent.slots, parent.handle, parent.program
        )
        self.allocator.retain(parent.slots)
        self.cache.lock(parent.handle)
        self.running.append(Request(list(parent.tokens), parent.slots.clone(), parent.handle, parent.program))

    # ---- memory ------------------------------------------------------------------------------------------------

    @rule(n=st.one_of(st.integers(1, 16), st.just(1000)), allow_pinned=st.booleans())
    def evict(self, n: int, allow_pinned: bool) -> None:
        """Make room (a few slots), or flush everything evictable."""
        self._evict_and_check(min(n, self.DEVICE_SLOTS), allow_pinned)

    @rule(dt=st.sampled_from((0.0, 0.25, 1.0, 3.0, 10.0)), wait=st.booleans())
    def time_passes(self, dt: float, wait: bool) -> None:
        """The fake clock moves (pins expire); the scheduler polls host loads, or waits for all of them."""
        CLOCK.now += dt
        if wait:
            self.cache.wait_for_loads()
            assert not self.cache._loading
            assert all(node.load is None for node in self.cache._all_nodes())
        else:
            self.cache.poll()

    # ---- hints -------------------------------------------------------------------------------------------------

    def _hint_result(self, before: tuple[int, int], accepted: bool, refusable: bool = False) -> None:
        counters = self.cache.counters
        ignored, refused = counters.hints_ignored - before[0], counters.pins_refused - before[1]
        if accepted:
            assert (ignored, refused) == (0, 0)
        elif refusable:
            assert (ignored, refused) in ((1, 0), (0, 1)), "a declined hint must be counted exactly once"
        else:
            assert (ignored, refused) == (1, 0), "a declined hint must be counted as ignored"

    def _counts(self) -> tuple[int, int]:
        return self.cache.counters.hints_ignored, self.cache.counters.pins_refused

    @rule(data=st.data(), ttl=st.sampled_from((0.0, 1.0, 5.0, 30.0, 120.0)), priority=st.sampled_from(PRIORITIES))
    def pin(self, data: st.DataObject, ttl: float, priority: tuple[float, ...]) -> None:
        program, prefix = self._draw_target(data)
        self._pin(program, prefix, ttl, priority)

    @rule(n=st.one_of(st.integers(1, 16), st.just(1000)), priority=st.sampled_from(PRIORITIES[1:]))
    def evict_for_admission(self, n: int, priority: tuple[float, ...]) -> None:
        """An admission of ``priority`` makes room: it may take exactly the pinned KV whose every running pinner it
        outranks, and gets at least what ``evictable_slots(priority=...)`` promised."""
        n = min(n, self.DEVICE_SLOTS)
        now = CLOCK.now
        promised = self.cache.evictable_slots(priority=priority)
        assert self.cache.evictable_slots() <= promised <= self.cache.evictable_slots(allow_pinned=True)
        holding = [
            node
            for node in self.cache._pinned
            if node.on_device and node.pin_until > now and not priority < (node.pin_priority(now) or ())
        ]
        freed = self.cache.evict(n, priority=priority)
        assert freed >= min(n, promised), (
            f"evict({n}) for {priority} freed {freed}, evictable_slots promised {promised}"
        )
        assert all(node.on_device for node in holding), "a pin the admission does not outrank was evicted"

    @rule(data=st.data(), kind=st.sampled_from(("next_use", "unpin", "prefetch", "forget_program")))
    def hint(self, data: st.DataObject, kind: str) -> None:
        """Any other hint from the runtime, about a program or a prefix."""
        if kind == "forget_program":
            self._forget_program(data.draw(st.sampled_from((*PROGRAMS, "unknown")), label="program"))
            return
        program, prefix = self._draw_target(data)
        if kind == "next_use":
            steps = data.draw(st.sampled_from((1.0, 3.0, 10.0, None)), label="steps")
            seconds = data.draw(st.sampled_from((None, 5.0, 60.0)), label="seconds")
            self._next_use(program, prefix, steps, seconds)
        elif kind == "unpin":
            self._unpin(program, prefix)
        else:
            self._prefetch(program, prefix)

    def _next_use(
        self, program: str | None, prefix: list[int] | None, steps: float | None, seconds: float | None
    ) -> None:
        before = self._counts()
        known = bool(prefix) and prefix[0] in self.cache.root.children
        accepted = self.hints.next_use(program_id=program, prefix=prefix, steps=steps, seconds=seconds)
        self._hint_result(before, accepted)
        if prefix is not None:
            assert accepted == known, "a prefix hint is accepted exactly when the cache holds part of it"
        elif program == "unknown":
            assert not accepted

    def _pin(self, program: str | None, prefix: list[int] | None, ttl: float, priority: tuple[float, ...] = ()) -> None:
        before = self._counts()
        accepted = self.hints.pin(ttl, program_id=program, prefix=prefix, priority=priority)
        self._hint_result(before, accepted, refusable=True)
        if accepted and prefix is not None:
            for node in path_nodes(self.cache, prefix):
                if node.device_slots is not None:
                    assert node.pin_until >= CLOCK.now + ttl and node in self.cache._pinned
        if ttl <= 0 or program == "unknown":
            assert not accepted

    def _unpin(self, program: str | None, prefix: list[int] | None) -> None:
        before = self._counts()
        accepted = self.hints.unpin(program_id=program, prefix=prefix)
        self._hint_result(before, accepted)
        # Unpinned nodes lose their pin, except ancestors of pins that remain (a pin needs its path to the root).
        still_needed = set()
        for node in self.cache._pinned:
            ancestor = node.parent
            while ancestor is not None:
                still_needed.add(ancestor)
                ancestor = ancestor.parent
        if accepted and prefix is not None:
            named = path_nodes(self.cache, prefix)
            assert not any(
                n.pin_until > CLOCK.now for n in named if n not in still_needed and n not in self.cache._pinned
            )
        if accepted and program is not None:
            named = list(self.cache._program_nodes.get(program, ()))
            assert not any(
                n.pin_until > CLOCK.now for n in named if n not in still_needed and n not in self.cache._pinned
            )

    def _prefetch(self, program: str | None, prefix: list[int] | None) -> None:
        if PREFETCH_DETACHES_NODES:
            listed = (
                path_nodes(self.cache, prefix) if prefix is not None else self.cache._program_nodes.get(program, ())
            )
            if sum(node.device_slots is None for node in listed) >= 2:
                return
        before = self._counts()
        loads = self.cache.counters.loads
        accepted = self.hints.prefetch(program_id=program, prefix=prefix)
        if accepted:
            assert self.cache.counters.loads > loads
        else:
            assert self.cache.counters.loads == loads
            ignored = self.cache.counters.hints_ignored - before[0]
            assert ignored in (0, 1)  # nothing to load (all on device) is declined without counting

    def _forget_program(self, program: str) -> None:
        self.hints.forget_program(program)
        assert program not in self.program_hints and program not in self.cache._program_nodes
        assert not any(program in node.programs for node in self.cache._all_nodes())

    # ---- invariants --------------------------------------------------------------------------------------------

    @invariant()
    def consistent(self) -> None:
        cache, allocator = self.cache, self.allocator
        cache.check()
        allocator.check()
        nodes = nodes_with_prefix(cache)

        # Exact reference counts: one per running request entry plus one per tree node owning the slot.
        held = [r.slots for r in self.running] + [n.device_slots for n, _ in nodes if n.device_slots is not None]
        holders = torch.zeros(allocator.num_slots + 1, dtype=torch.int32)
        for slots in held:
            holders.index_add_(0, slots, torch.ones(slots.numel(), dtype=torch.int32))
        assert torch.equal(holders, allocator.refcount(torch.arange(allocator.num_slots + 1))), "refcounts != holders"
        for request in self.running:
            assert request.slots.numel() == len(request.tokens)
            assert request.slots.unique().numel() == request.slots.numel()

        # Locks: a node is locked once per running request whose handle is the node or below it.
        locks: dict[int, int] = {}
        for request in self.running:
            node = request.handle
            while node is not cache.root:
                assert node.parent is not None and node.parent.children.get(node.key[0]) is node, "detached handle"
                locks[id(node)] = locks.get(id(node), 0) + 1
                node = node.parent
        for node, _ in nodes:
            assert node.lock_ref == locks.get(id(node), 0), "lock_ref != requests holding the path"
            if node.lock_ref:
                assert node.on_device or node.load is not None, "a locked node without device KV"

        # free + evictable + held == pool: held = running requests' slots and locked or loading nodes' slots.
        busy = [r.slots for r in self.running] + [
            n.device_slots for n, _ in nodes if n.device_slots is not None and (n.lock_ref or n.load is not None)
        ]
        num_busy = torch.cat(busy).unique().numel() if busy else 0
        assert allocator.num_free + cache.evictable_size + num_busy == allocator.num_slots

        # Every KV row the cache holds is the true one: requests' rows, device nodes and host copies.
        for request in self.running:
            assert_true_kv(self.pool, request.tokens, 0, request.slots, "a running request's KV")
        for node, tokens in nodes:
            start = len(tokens) - len(node)
            if node.on_device:
                assert_true_kv(self.pool, tokens, start, node.device_slots, "a device node")
            if node.host_slots is not None and self.host is not None:
                assert_true_kv(self.host.pool, tokens, start, node.host_slots, "a host copy")

        # Pins: within budget, also counting pins that would come back with a node loaded from host memory, and
        # exactly the nodes whose TTL runs.
        assert cache.pinned_slots() <= cache.pin_budget, f"{cache.pinned_slots()} pinned > {cache.pin_budget}"
        pinned = {n for n, _ in nodes if n.pin_until > CLOCK.now}
        assert cache._pinned == pinned
        assert sum(len(n) for n in pinned) <= cache.pin_budget, "pins on host-only nodes overrun the budget"

        # A residency walk resumed from where the last one stopped (splits, inserts, loads and evictions since)
        # finds what a fresh walk finds.
        for tokens in self.seen:
            mark = self.marks.setdefault(tuple(tokens), ResidencyMark())
            assert cache.resident_length(tokens, mark) == cache.resident_length(tokens), "a resumed walk is stale"

        # evictable_slots() is what evict() can free without touching pins: never more (the scheduler admits on
        # it), nor less than what nothing holds.
        lower, upper, pin_blocked = self._evictable_bounds(allow_pinned=False)
        if EVICTABLE_SLOTS_OVERCOUNTS:
            upper += pin_blocked
        assert lower <= cache.evictable_slots() <= upper, f"evictable_slots {cache.evictable_slots()} not in bounds"

    # ---- teardown ----------------------------------------------------------------------------------------------

    def teardown(self) -> None:
        try:
            while self.running:
                request = self.running.pop()
                self.cache.cache_finished(request.tokens, request.slots, request.handle, request.program)
            self.cache.wait_for_loads()
            self.cache.evict(self.DEVICE_SLOTS, allow_pinned=True)
            self.cache.check()
            self.allocator.check()
            assert self.cache.evictable_size == 0
            assert self.allocator.num_free == self.allocator.num_slots, "device slots leaked"
            assert not any(n.device_slots is not None for n in self.cache._all_nodes())
        finally:
            if self.host is not None and self.host._worker is not None:
                self.host._worker.shutdown(wait=True)


class LRUMachine(RadixCacheMachine):
    POLICY = "lru"


class NextUseMachine(RadixCacheMachine):
    POLICY = "next-use"


class TightNextUseMachine(RadixCacheMachine):
    """Little memory on both tiers: admissions, loads and prefetches run into full pools all the time."""

    POLICY = "next-use"
    DEVICE_SLOTS = 32
    HOST_SLOTS = 12


class NoHostMachine(RadixCacheMachine):
    POLICY = "lru"
    HOST_SLOTS = 0


SETTINGS = settings(
    max_examples=120, stateful_step_count=50, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@pytest.mark.parametrize(
    ("machine", "max_examples"),
    [(LRUMachine, 120), (NextUseMachine, 120), (TightNextUseMachine, 80), (NoHostMachine, 40)],
    ids=["lru", "next-use", "tight-next-use", "lru-no-host"],
)
def test_radix_cache_state_machine(fake_clock: FakeClock, machine: type[RadixCacheMachine], max_examples: int) -> None:
    run_state_machine_as_test(machine, settings=settings(SETTINGS, max_examples=max_examples))


def test_true_rows_depend_on_the_whole_prefix() -> None:
    """The oracle itself: the same token after different prefixes has different KV, the same prefix the same."""
    assert torch.equal(true_row((1, 2, 3)), true_row((1, 2, 3)))
    assert not torch.equal(true_row((1, 2, 3)), true_row((0, 2, 3)))
    assert not torch.equal(true_row((3,)), true_row((1, 3)))
    assert math.isfinite(float(true_rows([1, 2, 3], 0, 3).abs().sum()))
