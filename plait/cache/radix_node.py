"""A node of the radix tree (``radix.py``) and the cache's counters."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from plait.cache.eviction_policy import NextUse
from plait.cache.host_tier import LoadJob
from plait.cache.prefix_cache import Priority


@dataclass(frozen=True)
class CacheEvent:
    """Something the cache did to KV that programs own (read by the runtime's planner and timeline): ``evicted`` (off
    the device; ``to_host`` when a copy was written back), ``loaded`` (host to device: a prefetch or a hit) or
    ``pin_refused`` (a program's pin hint was beyond the pin budget; ``tokens``: what it would have added)."""

    at: float  # time.monotonic()
    kind: str
    programs: tuple[str, ...]
    tokens: int
    to_host: bool = False


@dataclass(eq=False)
class RadixNode:
    key: list[int]
    parent: RadixNode | None
    children: dict[int, RadixNode] = field(default_factory=dict)
    device_slots: torch.Tensor | None = None
    host_slots: torch.Tensor | None = None
    load: LoadJob | None = None  # host -> device copy in flight (device_slots allocated, not readable yet)
    lock_ref: int = 0
    last_access: float = 0.0
    programs: set[str] = field(default_factory=set)
    next_use: NextUse | None = None
    pin_until: float = 0.0
    # Who pins it: each pinner's priority (lower goes first, as for requests; () for a pin given without one, which
    # holds against every request) and until when. pin_until is the latest of them.
    pinners: dict[Priority, float] = field(default_factory=dict)
    from_host: bool = False  # loaded back and not matched since: the next match counts as a host hit
    # Counted in ``CacheCounters.tool_wait_tokens_lost`` under its current pin (reset when a pin starts on it afresh
    # or is taken off): a wait counts its KV once however often eviction passes over it or the pin is extended.
    loss_counted: bool = False

    def __len__(self) -> int:
        return len(self.key)

    def pin_priority(self, now: float) -> Priority | None:
        """The most important priority among its pinners whose pins still run at ``now``; None when none does."""
        return min((priority for priority, until in self.pinners.items() if until > now), default=None)

    @property
    def on_device(self) -> bool:
        return self.device_slots is not None and self.load is None

    def attached(self) -> bool:
        """Still in the tree (not deleted by an eviction since someone took a reference to it)."""
        if not self.key or self.parent is None:
            return False
        return self.parent.children.get(self.key[0]) is self

    def is_device_leaf(self) -> bool:
        return not any(c.device_slots is not None for c in self.children.values())


@dataclass(eq=False)
class ResidencyMark:
    """Where a ``RadixCache.resident_length`` walk of one token list left the tree: the deepest whole node it matched,
    and the position after it."""

    node: RadixNode | None = None
    end: int = 0


@dataclass
class CacheCounters:
    gpu_hit_tokens: int = 0
    host_hit_tokens: int = 0
    inserted_tokens: int = 0
    evictions: int = 0
    evicted_tokens: int = 0
    write_backs: int = 0
    loads: int = 0
    pins_refused: int = 0  # pin hints beyond the pin budget
    pinned_tokens_evicted: int = 0  # pinned KV evicted before its TTL (a running request or an outranking prompt)
    # KV of programs waiting on a tool that eviction took, or reached in its order but kept because it was pinned:
    # what such KV loses without a pin (the planner learns the chance of loss from it; see RadixCache.evict).
    tool_wait_tokens_lost: int = 0
    hints_ignored: int = 0


def common_prefix_length(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:  # the common case (a whole edge matches) at C speed
        return n
    # Bisect with slice comparisons (C speed) instead of a Python loop over thousands of tokens.
    low, high = 0, n  # invariant: a[:low] == b[:low] and a[:high] != b[:high]
    while high - low > 1:
        middle = (low + high) // 2
        if a[low:middle] == b[low:middle]:
            low = middle
        else:
            high = middle
    return low


def all_nodes(root: RadixNode) -> list[RadixNode]:
    """Every node below ``root`` (``root`` excluded)."""
    nodes, stack = [], list(root.children.values())
    while stack:
        node = stack.pop()
        nodes.append(node)
        stack.extend(node.children.values())
    return nodes


def evictable_device_leaves(root: RadixNode) -> list[RadixNode]:
    """Resident, unlocked nodes below ``root`` with no child holding device slots: what an eviction may take first.
    The device nodes form a subtree under the root (eviction takes device leaves first, a load brings back the whole
    path), so a node without device slots ends the walk down its branch: host-only branches, which grow with the host
    tier, are never visited. One walk finds the leaves (each node's children are looked at once)."""
    leaves, stack = [], [n for n in root.children.values() if n.device_slots is not None]
    while stack:
        node = stack.pop()
        below = [child for child in node.children.values() if child.device_slots is not None]
        if below:
            stack.extend(below)
        elif node.load is None and node.lock_ref == 0:
            leaves.append(node)
    return leaves
