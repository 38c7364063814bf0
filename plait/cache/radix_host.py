"""The radix cache's traffic with its host tier: room for write-backs, loads back to the device, their completion.

A mixin of ``RadixCache`` (it reads the tree, the allocator and the counters through ``self``): an evicted node keeps
a copy in host memory while room lasts; a match that reaches host-only nodes starts loading them back, and ``poll``
makes them usable once the copy has landed.
"""

from __future__ import annotations

import itertools
import time
from typing import TYPE_CHECKING

import torch

from plait.cache.prefix_cache import Priority
from plait.cache.radix_node import CacheEvent, RadixNode, all_nodes

if TYPE_CHECKING:
    from collections import deque

    from plait.cache.eviction_policy import EvictionPolicy
    from plait.cache.host_tier import HostTier
    from plait.cache.radix_node import CacheCounters
    from plait.cache.slot_allocator import SlotAllocator


class HostTraffic:
    # Provided by RadixCache.
    root: RadixNode
    host: HostTier | None
    allocator: SlotAllocator
    policy: EvictionPolicy
    counters: CacheCounters
    events: deque[CacheEvent]
    min_eviction: int
    evictable_size: int
    _loading: list[RadixNode]
    _protected: set[RadixNode]

    if TYPE_CHECKING:

        def lock(self, handle: object) -> None: ...
        def unlock(self, handle: object) -> None: ...
        def evict(self, num_slots: int, allow_pinned: bool = False, priority: Priority | None = None) -> int: ...
        def _delete_subtree(self, node: RadixNode) -> None: ...

    def _make_host_room(self, n: int, keep: RadixNode) -> bool:
        """Free host slots (drop copies of device-resident nodes, then host-only leaves) until ``n`` fit; at least
        ``min_eviction`` at a time, since each call walks and sorts the whole tree."""
        assert self.host is not None
        if self.host.num_free >= n:
            return True
        wanted = max(n, self.min_eviction)
        now = time.monotonic()
        candidates = [
            node
            for node in all_nodes(self.root)
            if node.host_slots is not None
            and node is not keep
            and node not in self._protected
            and node.load is None
            and (node.device_slots is not None or not node.children)
        ]
        candidates.sort(key=lambda node: (node.device_slots is None, self.policy.key(node, now)))
        for node in candidates:
            if self.host.num_free >= wanted:
                break
            if node.device_slots is not None:
                self.host.free(node.host_slots)
                node.host_slots = None
            else:
                self._delete_subtree(node)
        return self.host.num_free >= n

    def _start_loads(self, pending: list[RadixNode], anchor: RadixNode) -> bool:
        """Start loading the host-only nodes at the head of ``pending`` back to the device. True if any started."""
        todo = list(itertools.takewhile(lambda n: n.device_slots is None and n.host_slots is not None, pending))
        if self.host is None or not todo:
            return False
        needed = sum(len(n) for n in todo)
        self.lock(anchor)  # the resident part of the path must survive the eviction below
        self._protected.update(todo)
        try:
            if self.allocator.num_free < needed:
                self.evict(needed - self.allocator.num_free)
            if self.allocator.num_free < needed:
                return False
        finally:
            self.unlock(anchor)
            self._protected.difference_update(todo)
        slots = self.allocator.alloc(needed)
        job = self.host.load(torch.cat([n.host_slots for n in todo]), slots)
        for node, node_slots in zip(todo, torch.split(slots, [len(n) for n in todo]), strict=True):
            node.device_slots, node.load = node_slots, job  # one copy for the path: usable together
            self._loading.append(node)
            self.counters.loads += 1
            if node.programs:
                self.events.append(CacheEvent(time.monotonic(), "loaded", tuple(node.programs), len(node)))
        return True

    def poll(self) -> None:
        """Make nodes whose host-to-device load finished usable again, each only once its parent is: a resident
        node's path is resident (``resident_length`` resumes its walks on that)."""
        pending, changed = self._loading, True
        while changed:  # a parent finished in this pass frees its children in the next one
            changed, still = False, []
            for node in pending:
                parent_loading = node.parent is not None and node.parent.load is not None
                if node.load is not None and (parent_loading or not node.load.done()):
                    still.append(node)
                    continue
                if node.load is not None:
                    node.load = None
                    node.from_host = True
                    changed = True
                    if node.lock_ref == 0 and node.device_slots is not None:
                        self.evictable_size += len(node)
            pending = still
        self._loading = pending

    def wait_for_loads(self) -> None:
        for node in self._loading:
            if node.load is not None:
                node.load.wait()
        self.poll()
