"""The seam where a prefix cache plugs into the scheduler.

The scheduler asks ``match_prefix`` before prefilling a request and calls ``cache_finished`` when it is done with
a request's slots. ``NoPrefixCache`` shares nothing and frees slots at once; the radix tree implements the same
protocol and keeps finished prefixes for later hits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch

from plait.cache.slot_allocator import SlotAllocator


@dataclass
class PrefixMatch:
    """The cached part of a prompt: KV slots for its first ``len(slots)`` tokens (already retained for the caller)."""

    slots: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.int64))

    @property
    def length(self) -> int:
        return int(self.slots.numel())


class PrefixCache(Protocol):
    """What the scheduler needs from a prefix cache."""

    def match_prefix(self, token_ids: list[int]) -> PrefixMatch:
        """The longest cached prefix of ``token_ids``; its slots are retained on behalf of the caller."""
        ...

    def cache_finished(self, token_ids: list[int], slots: torch.Tensor) -> None:
        """The caller is done with ``slots`` (the KV of ``token_ids``): keep what is worth keeping, release the rest."""
        ...

    def evictable_slots(self) -> int:
        """Slots the cache could free right now if asked."""
        ...

    def evict(self, num_slots: int) -> int:
        """Free at least ``num_slots`` slots if possible; returns how many were freed."""
        ...


class NoPrefixCache:
    """Caches nothing: every match is empty and finished slots go straight back to the allocator."""

    def __init__(self, allocator: SlotAllocator) -> None:
        self.allocator = allocator

    def match_prefix(self, token_ids: list[int]) -> PrefixMatch:
        return PrefixMatch()

    def cache_finished(self, token_ids: list[int], slots: torch.Tensor) -> None:
        self.allocator.release(slots)

    def evictable_slots(self) -> int:
        return 0

    def evict(self, num_slots: int) -> int:
        return 0
