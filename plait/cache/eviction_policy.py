"""Eviction order for the radix cache: a function ``node -> sortable key``; the smallest key goes first.

``LRUPolicy`` is the request-level default. ``NextUsePolicy`` acts on hints from the runtime (KVFlow-style):
the node whose nearest next use, over the programs and prefixes sharing it, is farthest away goes first; nodes with
no known next use count as farthest; recency breaks ties. Pins are handled by the cache itself (a pinned node is
not evicted until its TTL expires, unless a running request would otherwise be retracted).
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from plait.cache.radix import RadixNode


@dataclass
class NextUse:
    """A hint: this prefix (or program) is needed again in ``steps`` program steps and/or ``seconds``."""

    steps: float | None = None
    seconds: float | None = None
    given_at: float = field(default_factory=time.monotonic)

    def remaining_seconds(self, now: float) -> float | None:
        return None if self.seconds is None else self.seconds - (now - self.given_at)


class EvictionPolicy(Protocol):
    name: str

    def key(self, node: RadixNode, now: float) -> tuple[float, ...]: ...


class LRUPolicy:
    name = "lru"

    def key(self, node: RadixNode, now: float) -> tuple[float, ...]:
        return (node.last_access,)


class NextUsePolicy:
    """Farthest next use first. ``program_hints`` is shared with the cache, which updates it."""

    name = "next-use"

    def __init__(self, program_hints: dict[str, NextUse]) -> None:
        self.program_hints = program_hints

    def nearest(self, node: RadixNode, now: float) -> tuple[float, float]:
        """(steps, seconds) to the nearest next use over the node's programs and its own hint; inf where unknown.
        Called for every evictable leaf on every eviction: one pass, no intermediate lists."""
        steps = seconds = math.inf
        program_hints = self.program_hints
        own = node.next_use
        for hint in itertools.chain((program_hints.get(p) for p in node.programs), (own,)):
            if hint is None:
                continue
            if hint.steps is not None and hint.steps < steps:
                steps = hint.steps
            if hint.seconds is not None:
                left = hint.seconds - (now - hint.given_at)
                if left < seconds:
                    seconds = left
        return steps, seconds

    def key(self, node: RadixNode, now: float) -> tuple[float, ...]:
        steps, seconds = self.nearest(node, now)
        return (-steps, -seconds, node.last_access)
