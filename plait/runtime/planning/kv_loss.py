"""How fast a tool-waiting program's KV is lost to eviction, learned from what the cache does.

A pin pays only if the KV would be evicted while the tool runs. That chance depends on what else the pool holds and
how fast both allocation and finished programs' cold KV come and go: a snapshot of free room over the allocation
rate (the planner's fallback) misses the cold KV that finishing programs keep adding, and under a full pool says
"lost at once" although next-use eviction takes that cold KV first.

So the planner measures it. The cache counts the KV of tool-waiting programs that eviction takes, or passes in its
order and keeps only because it is pinned (``CacheCounters.tool_wait_tokens_lost``: what would be lost without
pins, pinned or not). The planner counts the exposure: each tool wait's own tokens times its seconds. Their ratio is
a loss rate per token-second, ``1 / horizon``: a tool of duration D loses its KV with chance about
``min(1, D / horizon)`` (``pin_ttl.choose_pin_ttl``). Both sums decay with a time constant, so the estimate follows
the load; until enough waits are seen, there is none.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["ToolWaitLoss", "snapshot_horizon_s"]


class ToolWaitLoss:
    """Exponentially decayed sums of tool-wait exposure (token-seconds) and of tool-wait KV lost (tokens)."""

    def __init__(self, time_constant_s: float = 30.0, min_waits: float = 16.0) -> None:
        if not time_constant_s > 0:
            raise ValueError(f"time_constant_s must be > 0, got {time_constant_s}")
        self.time_constant_s = time_constant_s
        self.min_waits = min_waits
        self.exposure_token_s = 0.0
        self.lost_tokens = 0.0
        self.waits = 0.0
        self._at: float | None = None
        self._lost_total: int | None = None  # the engine's cumulative counter when last read

    def _decay(self, now: float) -> None:
        if self._at is not None and now > self._at:
            factor = math.exp(-(now - self._at) / self.time_constant_s)
            self.exposure_token_s *= factor
            self.lost_tokens *= factor
            self.waits *= factor
        self._at = now if self._at is None else max(self._at, now)

    def observe_wait(self, tokens: int, seconds: float, now: float) -> None:
        """A program's tools all returned: its own KV (``tokens``) waited ``seconds``."""
        self._decay(now)
        if tokens > 0 and seconds > 0:
            self.exposure_token_s += tokens * seconds
            self.waits += 1.0

    def observe_lost(self, lost_total: int, now: float) -> None:
        """The cache's cumulative ``tool_wait_tokens_lost``; the first reading is the baseline (the engine may have
        served other work before this planner)."""
        self._decay(now)
        if self._lost_total is not None and lost_total >= self._lost_total:
            self.lost_tokens += lost_total - self._lost_total
        self._lost_total = lost_total

    def horizon_s(self) -> float | None:
        """Token-seconds of exposure per token lost: the D at which a wait's loss becomes likely; ``inf`` when
        nothing was lost; None until ``min_waits`` (decayed) waits were seen."""
        if self.waits < self.min_waits or self.exposure_token_s <= 0:
            return None
        if self.lost_tokens <= 0:
            return math.inf
        return self.exposure_token_s / self.lost_tokens


def snapshot_horizon_s(stats: Any, kept_tokens: int) -> float:
    """The planner's fallback before enough waits were seen: the room evicted before ``kept_tokens`` of tool-waiting
    KV (free slots and unpinned cached KV less those tokens) over the slots allocated per second lately (computed
    prompt tokens and generated tokens). ``stats``: the engine's ``EngineStats``. Pinned KV no request holds is out of
    the room (what requests hold is already in ``kv_slots_used``)."""
    room = stats.kv_slots_total - stats.kv_slots_used - stats.pinned_idle_slots - kept_tokens
    allocated_per_s = stats.prefill_tokens_per_s + stats.decode_tokens_per_s
    if room <= 0:
        return 0.0
    return room / allocated_per_s if allocated_per_s > 0 else math.inf
