"""Hints from the runtime, applied to the radix cache: next use, TTL pins, prefetch. Plain data in, never an error.

A hint names a program (every node that program inserted or matched) or a prefix (token ids, the path from the
root). A hint about something the cache does not hold is ignored and counted: hints are advice, and a stale one
must never break serving.
"""

from __future__ import annotations

import time

from plait.cache.eviction_policy import NextUse
from plait.cache.radix import RadixCache, RadixNode
from plait.cache.radix_node import CacheEvent


class CacheHints:
    def __init__(self, cache: RadixCache) -> None:
        self.cache = cache

    def _nodes(self, program_id: str | None, prefix: list[int] | None) -> list[RadixNode]:
        if prefix is not None:
            return self.cache._walk(prefix)
        if program_id is not None:
            return list(self.cache._program_nodes.get(program_id, ()))
        return []

    def _ignored(self) -> bool:
        self.cache.counters.hints_ignored += 1
        return False

    def next_use(
        self,
        program_id: str | None = None,
        prefix: list[int] | None = None,
        steps: float | None = None,
        seconds: float | None = None,
    ) -> bool:
        """The program / prefix is needed again in ``steps`` steps and/or ``seconds``."""
        hint = NextUse(steps=steps, seconds=seconds)
        if prefix is not None:
            nodes = self._nodes(None, prefix)
            if not nodes:
                return self._ignored()
            for node in nodes:
                node.next_use = hint
            return True
        if program_id is None or not self.cache._program_nodes.get(program_id):
            return self._ignored()
        self.cache.program_hints[program_id] = hint
        return True

    def pin(
        self,
        ttl_s: float,
        program_id: str | None = None,
        prefix: list[int] | None = None,
        priority: tuple[float, ...] = (),
    ) -> bool:
        """Keep the nodes resident for ``ttl_s`` seconds, within the pin budget (refused, and counted, beyond it).
        ``priority``: that of the program the KV is kept for (as ``priority_key`` gives it). Pinned KV holds back a
        waiting request unless the request's priority is lower (more important) than that of every running pinner
        of that KV (``RadixCache.evictable_slots``): a pin yields to calls its program's next call would go after.
        The default, (), holds against every request."""
        nodes = [n for n in self._nodes(program_id, prefix) if n.device_slots is not None]
        if not nodes or ttl_s <= 0:
            return self._ignored()
        now = time.monotonic()
        # A pinned node is useless without its ancestors: pin the whole path up to the root.
        closure: set[RadixNode] = set()
        for node in nodes:
            while node is not None and node is not self.cache.root and node not in closure:
                closure.add(node)
                node = node.parent
        extra = sum(len(n) for n in closure if not self.cache._pin_active(n, now))
        if self.cache.pin_budget_used(now) + extra > self.cache.pin_budget:
            self.cache.counters.pins_refused += 1
            if program_id is not None:  # the runtime learns its program's KV is not kept (``CacheEvent``)
                self.cache.events.append(CacheEvent(now, "pin_refused", (program_id,), extra))
            return False
        for node in closure:
            if not self.cache._pin_active(node, now):
                node.loss_counted = False  # a new pin, not an extension: its KV has not been counted as lost
            # Each pinner keeps its own priority and expiry: a node shared by programs holds back what the most
            # important of the pins still running outranks.
            node.pinners = {p: until for p, until in node.pinners.items() if until > now}
            node.pinners[priority] = max(node.pinners.get(priority, 0.0), now + ttl_s)
            node.pin_until = max(node.pin_until, now + ttl_s)
            self.cache._pinned.add(node)
        return True

    def unpin(self, program_id: str | None = None, prefix: list[int] | None = None) -> bool:
        nodes = self._nodes(program_id, prefix)
        if not nodes:
            return self._ignored()
        for node in nodes:
            node.pin_until = 0.0
            node.pinners.clear()
            node.loss_counted = False
            self.cache._pinned.discard(node)
        # Ancestors of pins that remain stay pinned, for those pins' pinners: a pinned node is useless without its
        # path to the root.
        now = time.monotonic()
        for node in list(self.cache._active_pins(now)):
            ancestor = node.parent
            while ancestor is not None and ancestor is not self.cache.root:
                if ancestor not in self.cache._pinned:
                    ancestor.pinners = {}
                    self.cache._pinned.add(ancestor)
                for priority, until in node.pinners.items():
                    if until > now:
                        ancestor.pinners[priority] = max(ancestor.pinners.get(priority, 0.0), until)
                ancestor.pin_until = max(ancestor.pin_until, node.pin_until)
                ancestor = ancestor.parent
        return True

    def prefetch(self, program_id: str | None = None, prefix: list[int] | None = None) -> bool:
        """Start loading host-only nodes of the program / prefix back to the device ahead of their use."""
        if self.cache.host is None:
            return self._ignored()
        nodes = self._nodes(program_id, prefix)
        if not nodes:
            return self._ignored()
        started = False
        for node in sorted(nodes, key=_depth):
            if not node.attached():  # an earlier load's eviction may have deleted it
                continue
            if node.device_slots is None and node.host_slots is not None and node.parent is not None:
                parent = node.parent
                if parent is self.cache.root or parent.device_slots is not None:
                    started |= self.cache._start_loads([node], parent)
        return started

    def forget_program(self, program_id: str) -> None:
        """The program finished: drop its hints and tags."""
        self.cache.program_hints.pop(program_id, None)
        for node in self.cache._program_nodes.pop(program_id, set()):
            node.programs.discard(program_id)


def _depth(node: RadixNode) -> int:
    depth = 0
    while node.parent is not None:
        node, depth = node.parent, depth + 1
    return depth
