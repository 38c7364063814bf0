"""The seam where a prefix cache plugs into the scheduler.

Protocol (ownership rules):
- ``match_prefix`` returns the cached prefix's slots, already retained for the caller (one reference each), and a
  ``handle`` the cache locked so it will not evict that path while the caller runs.
- ``cache_unfinished`` (after a prefill chunk) and ``cache_finished`` (at the end) take over the caller's references
  to the slots it passes: the cache keeps the KV worth keeping and releases the rest. ``cache_unfinished`` returns
  the slots the caller should use from now on (retained) and a new handle; the old handle is unlocked.
- ``evictable_slots`` counts what ``evict`` could free right now for a new admission.

``NoPrefixCache`` shares nothing and frees slots at once; ``RadixCache`` keeps prefixes for later hits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from plait.cache.slot_allocator import SlotAllocator

# A request's or a pin's priority: lower goes first (``plait.engine.request.priority_key``). Pinned KV holds back an
# admission only for pinners the admission does not outrank.
Priority = tuple[float, ...]


@dataclass
class PrefixMatch:
    """The cached part of a prompt: KV slots for its first ``len(slots)`` tokens (already retained for the caller).

    ``loading``: part of the prefix is on its way back from host memory; the caller should try again later.
    """

    slots: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.int64))
    handle: Any = None
    loading: bool = False
    host_hit_tokens: int = 0  # of ``length``, how many came back from the host tier

    @property
    def length(self) -> int:
        return int(self.slots.numel())


class PrefixCache(Protocol):
    """What the scheduler needs from a prefix cache."""

    shares_prefixes: bool  # False: holding a request back for another's prefix would gain nothing

    def match_prefix(self, token_ids: list[int], program_id: str | None = None) -> PrefixMatch: ...

    def cache_unfinished(
        self, token_ids: list[int], slots: torch.Tensor, handle: Any, program_id: str | None = None
    ) -> tuple[torch.Tensor, Any]: ...

    def cache_finished(
        self, token_ids: list[int], slots: torch.Tensor, handle: Any, program_id: str | None = None
    ) -> None: ...

    def lock(self, handle: Any) -> None:
        """One more user of ``handle``'s path (a sibling sample sharing its parent's prompt)."""
        ...

    def unlock(self, handle: Any) -> None:
        """Undo a ``lock`` without inserting anything."""
        ...

    def unmatch(self, match: PrefixMatch) -> None:
        """Give back a match that will not be used (unlock, release its slots, uncount its hit)."""
        ...

    def evictable_slots(self, allow_pinned: bool = False, priority: Priority | None = None) -> int:
        """Device slots ``evict`` could free (pinned prefixes only with ``allow_pinned``, or those whose pinners an
        admission of ``priority`` outranks)."""
        ...

    def resident_length(self, token_ids: list[int], mark: Any = None) -> int:
        """Leading tokens of ``token_ids`` whose KV is on the device now (read-only). ``mark``: state the caller keeps
        per token list so that asking again resumes the walk (``RadixCache``; ignored where there is no tree)."""
        ...

    def evict(self, num_slots: int, allow_pinned: bool = False, priority: Priority | None = None) -> int: ...

    def note_pins_held(self, num_slots: int) -> None:
        """Admission needed ``num_slots`` more that only pinned KV could give (``RadixCache``: the pinned KV of
        tool-waiting programs it would have taken counts as saved by its pins)."""
        ...

    def poll(self) -> None:
        """Finish background work (host-to-device loads) that has completed."""
        ...


class NoPrefixCache:
    """Caches nothing: every match is empty and finished slots go straight back to the allocator."""

    shares_prefixes = False

    def __init__(self, allocator: SlotAllocator) -> None:
        self.allocator = allocator

    def resident_length(self, token_ids: list[int], mark: Any = None) -> int:
        return 0

    def match_prefix(self, token_ids: list[int], program_id: str | None = None) -> PrefixMatch:
        return PrefixMatch()

    def cache_unfinished(
        self, token_ids: list[int], slots: torch.Tensor, handle: Any, program_id: str | None = None
    ) -> tuple[torch.Tensor, Any]:
        return slots, handle

    def cache_finished(
        self, token_ids: list[int], slots: torch.Tensor, handle: Any, program_id: str | None = None
    ) -> None:
        self.allocator.release(slots)

    def lock(self, handle: Any) -> None:
        return None

    def unlock(self, handle: Any) -> None:
        return None

    def unmatch(self, match: PrefixMatch) -> None:
        self.allocator.release(match.slots)

    def evictable_slots(self, allow_pinned: bool = False, priority: Priority | None = None) -> int:
        return 0

    def evict(self, num_slots: int, allow_pinned: bool = False, priority: Priority | None = None) -> int:
        return 0

    def note_pins_held(self, num_slots: int) -> None:
        return None

    def poll(self) -> None:
        return None
