"""What the runtime may do to a running engine besides submitting requests: KV hints (next use, pins, prefetch),
memory reserved for a program's next call, flushing the prefix cache, and the run-time policy (``set_policy``).
Engine thread only: ``Engine._apply`` calls them for the commands of ``commands.py``, which were validated when they
were constructed; tests call them directly.

``EngineCore`` inherits these; they touch only its prefix cache, allocator, scheduler and config.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from plait.cache import RadixCache
from plait.engine.engine_setup import eviction_policy
from plait.engine.request import priority_key

if TYPE_CHECKING:
    from plait.cache import CacheHints, PrefixCache, SlotAllocator
    from plait.engine.engine_config import EngineConfig
    from plait.engine.engine_policy import EnginePolicy
    from plait.engine.scheduler import Scheduler


class RuntimeControls:
    config: EngineConfig
    prefix_cache: PrefixCache
    cache_hints: CacheHints | None
    allocator: SlotAllocator
    scheduler: Scheduler
    kv_slots: int
    _hints_ignored: int

    def _hint(self, method: str, **kwargs: object) -> bool:
        if self.cache_hints is None:
            self._hints_ignored += 1
            return False
        return bool(getattr(self.cache_hints, method)(**kwargs))

    def hint_next_use(
        self,
        program_id: str | None = None,
        prefix_token_ids: list[int] | None = None,
        steps: float | None = None,
        seconds: float | None = None,
    ) -> bool:
        """The program's (or prefix's) KV is needed again in ``steps`` steps and/or ``seconds``."""
        return self._hint("next_use", program_id=program_id, prefix=prefix_token_ids, steps=steps, seconds=seconds)

    def pin(
        self,
        ttl_s: float,
        program_id: str | None = None,
        prefix_token_ids: list[int] | None = None,
        priority: float | tuple[float, ...] | None = None,
    ) -> bool:
        """Keep the program's (or prefix's) KV resident for ``ttl_s`` seconds, within the pin budget. ``priority``:
        that of the program's next request. A waiting request may take the pinned KV whose every running pinner's
        priority is higher (less important) than its own; a pin without one holds against every request. A malformed
        priority raises ``ValueError`` here (a ``Pin`` command raises it where it is constructed)."""
        key = () if priority is None else priority_key(priority)
        return self._hint("pin", ttl_s=ttl_s, program_id=program_id, prefix=prefix_token_ids, priority=key)

    def unpin(self, program_id: str | None = None, prefix_token_ids: list[int] | None = None) -> bool:
        return self._hint("unpin", program_id=program_id, prefix=prefix_token_ids)

    def prefetch(self, program_id: str | None = None, prefix_token_ids: list[int] | None = None) -> bool:
        """Start loading the program's (or prefix's) KV back from the host tier before it is needed."""
        return self._hint("prefetch", program_id=program_id, prefix=prefix_token_ids)

    def reserve(
        self,
        program_id: str,
        slots: int,
        priority: float | tuple[float, ...] | None = None,
        ttl_s: float = 60.0,
        call_id: str | None = None,
    ) -> bool:
        """Hold ``slots`` of KV memory for ``program_id``'s next call (its program waits on a tool) out of every
        admission that call would go before, until that call is admitted (the request whose ``call_id`` it names;
        None: any request of the program), ``unreserve``, or ``ttl_s``. ``priority``: that of the next call (None:
        it holds against every admission). A malformed priority or a negative size raises ``ValueError``."""
        if slots < 0 or not ttl_s >= 0:
            raise ValueError(f"reserve needs slots >= 0 and ttl_s >= 0, got {slots} and {ttl_s}")
        key = () if priority is None else priority_key(priority)
        self.scheduler.reservations.reserve(program_id, min(int(slots), self.kv_slots), key, ttl_s, call_id)
        return True

    def unreserve(self, program_id: str, call_id: str | None = None) -> bool:
        """End ``call_id``'s reservation (None: every reservation of the program)."""
        self.scheduler.reservations.cancel(program_id, call_id)
        return True

    def forget_program(self, program_id: str) -> None:
        if self.cache_hints is not None:
            self.cache_hints.forget_program(program_id)

    def kv_in_use(self) -> int:
        """KV slots held for requests: used slots minus those only the prefix cache keeps (0 when idle)."""
        cached = self.prefix_cache.evictable_size if isinstance(self.prefix_cache, RadixCache) else 0
        return self.allocator.num_used - cached

    def flush_prefix_cache(self) -> int:
        """Drop every unlocked cached prefix (pinned ones too, host copies too) and every reservation; returns the
        device slots freed."""
        self.scheduler.reservations.clear()
        if isinstance(self.prefix_cache, RadixCache):
            return self.prefix_cache.flush()
        return self.prefix_cache.evict(self.kv_slots, allow_pinned=True)

    @property
    def policy(self) -> EnginePolicy:
        return self.config.policy

    def set_policy(self, policy: EnginePolicy) -> None:
        """Schedule and evict under ``policy`` from the next step on (engine thread only). Running requests keep
        their KV; the eviction order, pin budget, holds, affinity and aging of later decisions change."""
        policy.validate()
        previous, self.config.policy = self.config.policy, policy
        self.scheduler.policy = policy
        if isinstance(self.prefix_cache, RadixCache):
            if policy.eviction != previous.eviction:
                self.prefix_cache.policy = eviction_policy(policy.eviction, self.prefix_cache.program_hints)
            self.prefix_cache.pin_budget = int(policy.pin_budget_fraction * self.allocator.num_slots)
