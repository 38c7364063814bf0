"""A token-level radix tree whose nodes own KV slots: compute each shared prefix once, keep what is needed next.

Ownership rules:
- the tree holds one allocator reference on every device slot of every node; a request that matched a path holds
  its own references (retained at match) and a lock on the path's last node, so locked paths are never evicted;
- a device-resident node's ancestors are device-resident (KV is only usable from the root down), so eviction takes
  device leaves: nodes none of whose children hold device KV;
- ``evictable_size`` (tokens of unlocked device-resident nodes) is kept incrementally: ``free + evictable`` in O(1).

With a host tier, an evicted node keeps a copy in host memory (write-back) and stays in the tree; a later match
starts loading it back asynchronously and reports ``loading`` so the scheduler can run other work meanwhile.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import deque
from typing import Any

import torch

from plait.cache.eviction_policy import EvictionPolicy, LRUPolicy, NextUse
from plait.cache.host_tier import HostTier
from plait.cache.prefix_cache import PrefixMatch, Priority
from plait.cache.radix_host import HostTraffic
from plait.cache.radix_invariants import check_radix
from plait.cache.radix_node import (
    CacheCounters,
    CacheEvent,
    RadixNode,
    ResidencyMark,
    all_nodes,
    common_prefix_length,
    evictable_device_leaves,
)
from plait.cache.slot_allocator import SlotAllocator
from plait.cache.tool_wait_loss import count_evicted, count_held, count_passed

_EMPTY = torch.empty(0, dtype=torch.int64)
EVENT_LOG_SIZE = 8192
EVICTION_FLOOR_FRACTION = 1 / 64  # of the pool: the least one eviction frees (see RadixCache.min_eviction)
EVICTION_FLOOR_MIN = 1


class RadixCache(HostTraffic):
    shares_prefixes = True

    def __init__(
        self,
        allocator: SlotAllocator,
        policy: EvictionPolicy | None = None,
        host: HostTier | None = None,
        pin_budget_fraction: float = 0.25,
        program_hints: dict[str, NextUse] | None = None,
    ) -> None:
        self.allocator = allocator
        self.policy = policy or LRUPolicy()
        self.host = host
        self.pin_budget = int(pin_budget_fraction * allocator.num_slots)
        # An eviction frees at least this much (in policy order, never pinned KV beyond what was asked): each one
        # walks the tree, and a full pool would otherwise walk it on every step for a few decode slots.
        self.min_eviction = max(EVICTION_FLOOR_MIN, int(EVICTION_FLOOR_FRACTION * allocator.num_slots))
        self.program_hints: dict[str, NextUse] = program_hints if program_hints is not None else {}
        self.root = RadixNode(key=[], parent=None, device_slots=_EMPTY)
        self.root.lock_ref = 1  # never evicted
        self.evictable_size = 0
        self.counters = CacheCounters()
        self._clock = itertools.count(1)
        self._loading: list[RadixNode] = []
        self._pinned: set[RadixNode] = set()
        self._program_nodes: dict[str, set[RadixNode]] = {}
        self._write_back = True  # evicted device KV is copied to the host tier (off while flushing)
        self._protected: set[RadixNode] = set()  # nodes about to be loaded: host-room eviction must keep them
        # Evictions and loads of program-owned KV, newest last; bounded, read (and emptied) by the runtime's timeline.
        self.events: deque[CacheEvent] = deque(maxlen=EVENT_LOG_SIZE)

    # ---- matching ------------------------------------------------------------------------------------------------

    def match_prefix(self, token_ids: list[int], program_id: str | None = None) -> PrefixMatch:
        path = self._walk(token_ids)
        resident = list(itertools.takewhile(lambda n: n.on_device, path))
        pending = path[len(resident) :]
        if pending and self._start_loads(pending, resident[-1] if resident else self.root):
            return PrefixMatch(loading=True)
        if any(n.load is not None for n in pending[:1]):
            return PrefixMatch(loading=True)
        last = resident[-1] if resident else self.root
        self.lock(last)
        slots = torch.cat([n.device_slots for n in resident]) if resident else _EMPTY
        self.allocator.retain(slots)
        host_hit = sum(len(n) for n in resident if n.from_host)
        for node in resident:
            node.from_host = False
            self._touch(node, program_id)
        self.counters.gpu_hit_tokens += len(slots) - host_hit
        self.counters.host_hit_tokens += host_hit
        return PrefixMatch(slots=slots, handle=last, host_hit_tokens=host_hit)

    def unmatch(self, match: PrefixMatch) -> None:
        self.unlock(match.handle)
        self.allocator.release(match.slots)
        self.counters.gpu_hit_tokens -= match.length - match.host_hit_tokens
        self.counters.host_hit_tokens -= match.host_hit_tokens

    def resident_length(self, token_ids: list[int], mark: ResidencyMark | None = None) -> int:
        """How many leading tokens of ``token_ids`` have their KV on the device now (a read-only look: no split, no
        lock, no load, no access time).

        ``mark`` (kept by the caller for one token list, which may only grow at its end) resumes the walk where the
        last one left the tree. The device nodes form a subtree under the root (eviction takes device leaves first, a
        load brings back the whole path), so while the node matched last is still in the tree and resident, so is
        the whole path above it (a split keeps the lower node's end where it was). Asking for the same queue every
        step then costs a child lookup per sequence instead of a walk over thousands of tokens, also while other
        programs' KV is being evicted."""
        node, end = self.root, 0  # the deepest whole node matched, and the position after it
        last = mark.node if mark is not None else None
        if last is not None and last.attached() and last.on_device:  # not evicted since, nor deleted
            node, end = last, mark.end
        i = end
        while i < len(token_ids):
            child = node.children.get(token_ids[i])
            if child is None or not child.on_device:
                break
            n = common_prefix_length(child.key, token_ids[i : i + len(child.key)])
            if n < len(child):
                i += n
                break
            node, i = child, i + n
            end = i
        if mark is not None:
            mark.node, mark.end = node, end
        return i

    def _walk(self, token_ids: list[int]) -> list[RadixNode]:
        """The nodes along ``token_ids`` (splitting the last one at the match boundary)."""
        node, i, path = self.root, 0, []
        while i < len(token_ids):
            child = node.children.get(token_ids[i])
            if child is None:
                break
            n = common_prefix_length(child.key, token_ids[i : i + len(child.key)])
            if n < len(child):
                child = self._split(child, n)
            path.append(child)
            node, i = child, i + n
        return path

    def _split(self, node: RadixNode, n: int) -> RadixNode:
        """Cut ``node`` after ``n`` tokens; returns the new upper part (same locks, hints and programs)."""
        parent = node.parent
        assert parent is not None
        upper = RadixNode(
            key=node.key[:n],
            parent=parent,
            device_slots=None if node.device_slots is None else node.device_slots[:n],
            host_slots=None if node.host_slots is None else node.host_slots[:n],
            load=node.load,
            lock_ref=node.lock_ref,
            last_access=node.last_access,
            programs=set(node.programs),
            next_use=node.next_use,
            pin_until=node.pin_until,
            pinners=dict(node.pinners),
            from_host=node.from_host,
            loss_counted=node.loss_counted,
        )
        node.key = node.key[n:]
        node.device_slots = None if node.device_slots is None else node.device_slots[n:]
        node.host_slots = None if node.host_slots is None else node.host_slots[n:]
        node.parent = upper
        upper.children[node.key[0]] = node
        parent.children[upper.key[0]] = upper
        for program in upper.programs:
            self._program_nodes[program].add(upper)
        if node in self._pinned:
            self._pinned.add(upper)
        if node.load is not None:
            self._loading.append(upper)
        return upper

    def _touch(self, node: RadixNode, program_id: str | None) -> None:
        node.last_access = next(self._clock)
        if program_id is not None and program_id not in node.programs:
            node.programs.add(program_id)
            self._program_nodes.setdefault(program_id, set()).add(node)

    # ---- locks ---------------------------------------------------------------------------------------------------

    def lock(self, handle: Any) -> None:
        node: RadixNode | None = handle
        while node is not None and node is not self.root:
            if node.lock_ref == 0 and node.on_device:
                self.evictable_size -= len(node)
            node.lock_ref += 1
            node = node.parent

    def unlock(self, handle: Any) -> None:
        node: RadixNode | None = handle
        while node is not None and node is not self.root:
            node.lock_ref -= 1
            assert node.lock_ref >= 0, "unlock without lock"
            if node.lock_ref == 0 and node.on_device:
                self.evictable_size += len(node)
            node = node.parent

    # ---- insertion -----------------------------------------------------------------------------------------------

    def insert(self, token_ids: list[int], slots: torch.Tensor, program_id: str | None = None) -> None:
        """Add ``token_ids`` with their KV; takes over the caller's references on ``slots`` (one per token)."""
        assert len(token_ids) == slots.numel()
        duplicates: list[torch.Tensor] = []  # released together at the end: one allocator call per insert
        node, i = self.root, 0
        while i < len(token_ids):
            child = node.children.get(token_ids[i])
            if child is None:
                new = RadixNode(key=list(token_ids[i:]), parent=node, device_slots=slots[i:])
                node.children[token_ids[i]] = new
                self.evictable_size += len(new)
                self.counters.inserted_tokens += len(new)
                self._touch(new, program_id)
                break
            n = common_prefix_length(child.key, token_ids[i : i + len(child.key)])
            if n < len(child):
                child = self._split(child, n)
            segment = slots[i : i + n]
            if child.load is not None:
                child.load.wait()  # rare: the caller recomputed a prefix that is being loaded
                self.poll()
            if child.device_slots is None:  # host-only: adopt the caller's freshly computed KV
                child.device_slots = segment
                if child.lock_ref == 0:
                    self.evictable_size += n
            else:
                duplicates.append(segment)  # the tree already has this KV (the same slots or a duplicate)
            self._touch(child, program_id)
            node, i = child, i + n
        if duplicates:
            self.allocator.release(torch.cat(duplicates) if len(duplicates) > 1 else duplicates[0])

    def cache_unfinished(
        self, token_ids: list[int], slots: torch.Tensor, handle: Any, program_id: str | None = None
    ) -> tuple[torch.Tensor, Any]:
        self.insert(token_ids, slots, program_id)
        path = self._walk(token_ids)
        last = path[-1] if path else self.root
        self.lock(last)
        self.unlock(handle)
        tree_slots = torch.cat([n.device_slots for n in path]) if path else _EMPTY
        self.allocator.retain(tree_slots)
        return tree_slots, last

    def cache_finished(
        self, token_ids: list[int], slots: torch.Tensor, handle: Any, program_id: str | None = None
    ) -> None:
        self.insert(token_ids, slots, program_id)
        self.unlock(handle)

    # ---- eviction ------------------------------------------------------------------------------------------------

    def _pin_active(self, node: RadixNode, now: float) -> bool:
        return node.pin_until > now

    def pinned_slots(self, now: float | None = None) -> int:
        """Device slots that running pins hold now."""
        return self.pinned_slot_counts(now)[0]

    def pin_budget_used(self, now: float | None = None) -> int:
        """Slots of the pin budget in use: every running pin, also one loading or on host (it comes back pinned)."""
        return sum(len(n) for n in self._active_pins(now))

    def pinned_nodes(self, now: float | None = None) -> set[RadixNode]:
        """Nodes whose pins run at ``now`` (resident, loading or on the host)."""
        return self._active_pins(now)

    def _active_pins(self, now: float | None) -> set[RadixNode]:
        now = time.monotonic() if now is None else now
        expired = [n for n in self._pinned if n.pin_until <= now]  # (``_pin_active``, inlined: a per-step path)
        if expired:
            self._pinned.difference_update(expired)
        return self._pinned

    def evictable_slots(self, allow_pinned: bool = False, priority: Priority | None = None) -> int:
        """What ``evict`` may free: for a new admission pinned prefixes are excluded, except those whose every running
        pinner the admission's ``priority`` outranks (KV kept for a less important program's next call does not hold
        back a more important call); ``allow_pinned`` counts them all (a running request takes pinned memory before it
        would be retracted)."""
        if allow_pinned:
            return self.evictable_size
        return self.evictable_size - self.pinned_slot_counts(against=priority)[1]

    def pinned_slot_counts(self, now: float | None = None, against: Priority | None = None) -> tuple[int, int]:
        """Device slots that running pins hold, and of those the ones no request holds (what the pins alone keep
        resident), in one pass: engine stats read both every step. With ``against`` (a request's priority) the second
        counts only pins that hold against it: pins with a pinner it does not outrank."""
        now = time.monotonic() if now is None else now
        held = idle = 0
        for node in self._active_pins(now):  # the scheduler asks several times per step: attributes read directly
            if node.device_slots is not None and node.load is None:  # on_device
                n = len(node.key)
                held += n
                if node.lock_ref == 0 and (against is None or not self._pin_yields(node, against, now)):
                    idle += n
        return held, idle

    @staticmethod
    def _pin_yields(node: RadixNode, priority: Priority, now: float) -> bool:
        """True if a request of ``priority`` outranks every running pinner of ``node`` (a pin given without a priority,
        (), holds against every request). A node's pinners include its pinned descendants', so what yields is closed
        under descendants and eviction can reach it leaf first."""
        strongest = node.pin_priority(now)
        return strongest is not None and priority < strongest

    def evict(self, num_slots: int, allow_pinned: bool = False, priority: Priority | None = None) -> int:
        """Free at least ``num_slots`` device slots if possible, in policy order; pinned nodes go last and only
        with ``allow_pinned`` (when a running request would otherwise be retracted), or those whose pinners all
        yield to ``priority`` (an admission's; see ``evictable_slots``)."""
        freed = self._evict_once(num_slots, allow_pinned, priority)
        if freed < num_slots and self._loading:
            # Loads in flight sit below evictable nodes and keep them from being leaves: let them land, retry.
            self.wait_for_loads()
            freed += self._evict_once(num_slots - freed, allow_pinned, priority)
        if self.host is not None:
            self.host.flush_writes()  # one gather for every node written back, before its slots are reused
        return freed

    def _evict_once(self, num_slots: int, allow_pinned: bool, priority: Priority | None) -> int:
        self.poll()
        target = max(num_slots, self.min_eviction)
        now = time.monotonic()
        order = itertools.count()

        def entry(node: RadixNode) -> tuple[Any, int, RadixNode]:
            return (self._pin_active(node, now), self.policy.key(node, now)), next(order), node

        # Every evictable leaf at once, ordered in O(n) (the same order as pushing them one by one: keys are unique).
        heap = [entry(node) for node in evictable_device_leaves(self.root)]
        heapq.heapify(heap)

        def push(node: RadixNode) -> None:  # a parent whose last device child went: a leaf now
            if node is not self.root and node.on_device and node.lock_ref == 0 and node.is_device_leaf():
                heapq.heappush(heap, entry(node))

        freed, released = 0, [_EMPTY]  # one allocator call for the whole eviction (each call costs host tensor ops)
        frontier = None  # the policy key of the last unpinned node evicted
        while freed < target and heap:
            (pinned, key), _, node = heapq.heappop(heap)
            if pinned and not allow_pinned:
                if priority is None or freed >= num_slots:
                    break  # pinned entries come after every unpinned one: nothing else may go
                if not self._pin_yields(node, priority, now):
                    continue  # holds against this admission (and so do its ancestors: they are not pushed)
            elif pinned and freed >= num_slots:
                break
            if not pinned:  # (a parent pushed after its child may order before it: the frontier only advances)
                frontier = key if frontier is None else max(frontier, key)
            parent = node.parent
            released.append(node.device_slots)
            freed += self._evict_device(node)
            if parent is not None:
                push(parent)
        self.allocator.release(torch.cat(released))
        if frontier is not None and self._pinned:
            count_passed(self, frontier, now)
        return freed

    def note_pins_held(self, num_slots: int) -> None:
        """Admission needed ``num_slots`` more that only pinned KV could give (``tool_wait_loss.count_held``)."""
        count_held(self, num_slots, time.monotonic())

    def _evict_device(self, node: RadixNode) -> int:
        n = len(node)
        count_evicted(self, node)
        if node in self._pinned:  # only a forced eviction reaches a pinned node: the pin gives way for good
            if self._pin_active(node, time.monotonic()):  # (the set may still hold a pin that just expired)
                self.counters.pinned_tokens_evicted += n
            node.pin_until = 0.0
            node.pinners.clear()
            self._pinned.discard(node)
        if self._write_back and self.host is not None and node.host_slots is None and self._make_host_room(n, node):
            node.host_slots = self.host.write_back(node.device_slots)
            self.counters.write_backs += 1
        if node.programs:
            self.events.append(
                CacheEvent(time.monotonic(), "evicted", tuple(node.programs), n, node.host_slots is not None)
            )
        node.device_slots = None  # the caller releases the slots
        self.evictable_size -= n
        self.counters.evictions += 1
        self.counters.evicted_tokens += n
        if node.host_slots is None:
            self._delete_subtree(node)
        return n

    def _delete_subtree(self, node: RadixNode) -> None:
        assert node.lock_ref == 0 and node.load is None
        for child in list(node.children.values()):
            self._delete_subtree(child)
        if node.device_slots is not None:  # only descendants of a fully evicted node get here with device KV
            self.allocator.release(node.device_slots)
            self.evictable_size -= len(node)
        if node.host_slots is not None and self.host is not None:
            self.host.free(node.host_slots)
        node.device_slots = node.host_slots = None  # stale references to a deleted node fail fast
        if node.parent is not None and node.parent.children.get(node.key[0]) is node:
            del node.parent.children[node.key[0]]
        for program in node.programs:
            nodes = self._program_nodes.get(program)
            if nodes is not None:
                nodes.discard(node)
                if not nodes:
                    del self._program_nodes[program]
        self._pinned.discard(node)

    def flush(self) -> int:
        """Drop every unlocked prefix, pinned ones too, from the device and from the host tier (between benchmark
        runs: a run must not inherit the last one's host copies, whose walk would also slow every eviction).
        Returns the device slots freed. Locked prefixes (in use by running requests) and their paths stay."""
        self.wait_for_loads()
        self._write_back = False  # no copy to the host of what is being dropped
        try:
            freed = self.evict(self.evictable_size, allow_pinned=True)
        finally:
            self._write_back = True
        host = self.host
        if host is not None:
            stack = list(self.root.children.values())
            while stack:
                node = stack.pop()
                if node.device_slots is None and node.lock_ref == 0 and node.load is None:
                    self._delete_subtree(node)  # host-only: its whole branch is host-only
                else:
                    if node.host_slots is not None:
                        host.free(node.host_slots)
                        node.host_slots = None
                    stack.extend(node.children.values())
        return freed

    def _all_nodes(self) -> list[RadixNode]:
        return all_nodes(self.root)

    def check(self) -> None:
        """Assert the tree's invariants (tests call this after every operation)."""
        check_radix(self)
