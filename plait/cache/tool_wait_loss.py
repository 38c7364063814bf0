"""What the KV of tool-waiting programs loses to eviction, or would lose but for its pins (``RadixCache`` counts it
in ``CacheCounters.tool_wait_tokens_lost``; the planner learns from it whether a pin pays).

A program waits on a tool while its next-use hint says when the tool is expected back (``NextUse.seconds``). Its KV
counts as lost when:
- eviction takes it (``count_evicted``);
- eviction takes an unpinned node that its policy puts after this pinned KV: without the pin this KV would have gone
  first (``count_passed``);
- a prompt stays out because only pinned memory was left, and evicting this pinned KV, in policy order, would have
  made that room (``count_held``).
A pinned node is counted at most once per pin (``RadixNode.loss_counted``, reset when a pin starts afresh or is
taken off), so each wait counts its KV once however often eviction passes over it or its pin is extended.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from plait.cache.radix import RadixCache
    from plait.cache.radix_node import RadixNode


def waits_on_tool(cache: RadixCache, node: RadixNode) -> bool:
    """Whether every program reading ``node`` waits on a tool."""
    if not node.programs:
        return False
    for program in node.programs:  # stops at the first that does not: a shared prefix ends the loop at once
        hint = cache.program_hints.get(program)
        if hint is None or hint.seconds is None:
            return False
    return True


def _count_once(cache: RadixCache, node: RadixNode, mark: bool = True) -> None:
    if not node.loss_counted and waits_on_tool(cache, node):
        cache.counters.tool_wait_tokens_lost += len(node)
        node.loss_counted = mark


def count_evicted(cache: RadixCache, node: RadixNode) -> None:
    """``node`` is being evicted (before its pin state is cleared); counted already if passed or held under its
    current (or last, expired) pin in this wait. The flag is not set here: the node leaves the device, and a copy
    loaded back from the host tier may be lost again in a later wait."""
    _count_once(cache, node, mark=False)


def count_passed(cache: RadixCache, frontier: tuple[float, ...], now: float) -> None:
    """An eviction took unpinned nodes up to policy key ``frontier``: pinned KV ordered before it was spared."""
    for node in cache.pinned_nodes(now):
        if node.loss_counted or not node.on_device or node.lock_ref:
            continue
        if cache.policy.key(node, now) < frontier:
            _count_once(cache, node)


def count_held(cache: RadixCache, num_slots: int, now: float) -> None:
    """Admission needed ``num_slots`` more that only pinned KV could give."""
    candidates = [n for n in cache.pinned_nodes(now) if n.on_device and not n.lock_ref]
    if all(n.loss_counted for n in candidates):
        return
    taken = 0
    for node in sorted(candidates, key=lambda n: cache.policy.key(n, now)):
        if taken >= num_slots:
            break
        taken += len(node)
        _count_once(cache, node)
