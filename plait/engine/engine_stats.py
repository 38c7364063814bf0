"""Engine statistics: the snapshot callers read, the throughput meter the step loop feeds, cache counters."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from plait.cache import RadixCache
from plait.engine.scheduler import ScheduledBatch
from plait.engine.step_cost_fit import StepCostFit

RATE_WINDOW_S = 5.0
SLOW_STEP_S = 0.25  # a step this long stalls every running stream visibly (tens of decode steps on a GPU)


@dataclass
class EngineStats:
    waiting: int
    running: int
    kv_slots_used: int  # held for requests
    kv_slots_total: int
    decode_tokens_per_s: float  # generated tokens per second over the last few seconds
    prefill_tokens_per_s: float
    generated_tokens: int  # since start
    prefill_tokens: int  # prompt tokens computed since start
    retractions: int
    steps: int
    kv_slots_cached: int = 0  # kept by the prefix cache for later hits (free to evict)
    kv_slots_reserved: int = 0  # held back for the next calls of programs waiting on tools (``Reservations``)
    host_slots_used: int = 0  # host tier: slots holding evicted KV (0 without a host tier)
    host_slots_total: int = 0
    cached_prefix_tokens: int = 0  # prompt tokens served from the GPU prefix cache
    host_hit_tokens: int = 0  # ... from the host tier (loaded back)
    evictions: int = 0
    write_backs: int = 0
    loads: int = 0
    bytes_moved: int = 0  # between the device and the host tier
    pinned_slots: int = 0
    pinned_idle_slots: int = 0  # ... of which no running request holds (the pins alone keep them)
    pins_refused: int = 0  # pin hints beyond the pin budget
    pinned_tokens_evicted: int = 0  # pinned KV evicted before its TTL: running requests or prompts outranking the pin
    tool_wait_tokens_lost: int = 0  # KV of tool-waiting programs evicted, or kept only by a pin (CacheCounters)
    hints_ignored: int = 0
    promotions: int = 0  # waiting requests moved ahead of all priorities by the anti-starvation rule
    longest_queue_wait_s: float = 0.0  # the longest any request waited before its first admission
    busy_s: float = 0.0  # wall time spent in steps since start
    slow_steps: int = 0  # steps longer than SLOW_STEP_S
    modelled_device_s: float = 0.0  # simulated engine: the cost model's device time of every step (0 otherwise)
    longest_step_s: float = 0.0
    # Marginal step seconds per prefill token, fitted over recent steps (``StepCostFit``); None until it can be told.
    prefill_s_per_token_marginal: float | None = None
    # The share of the mean step's time that does not grow with its batch (``StepCostFit.fixed_share``); None until
    # it can be told.
    step_fixed_share: float | None = None
    # Per-step sums since start (divide by ``steps`` for means): batch composition, the queue beside it, and where a
    # step's wall time goes on the host (planning the batch; blocked reading the previous step's tokens).
    decode_rows: int = 0
    prefill_rows: int = 0
    waiting_rows: int = 0  # sequences waiting at each step
    pinned_slot_steps: int = 0  # pinned device slots no running request holds, at each step
    # Host seconds per phase of the step loop since start: schedule, prepare (the batch's layouts), forward
    # (launching the model; on a GPU the device runs it asynchronously), commit, resolve (the previous step's tokens:
    # stop checks, detokenization; includes readback_wait, the time blocked until the device produced them), sample
    # (launching sampling), deliver (handing deltas to callers), commands (requests, aborts and hints between steps).
    phase_s: dict[str, float] = field(default_factory=dict)
    admission_stops: dict[str, int] = field(default_factory=dict)  # see Scheduler.admission_stops

    @property
    def kv_usage(self) -> float:
        return self.kv_slots_used / self.kv_slots_total


class ThroughputMeter:
    """Totals since start, per-second rates over the last few seconds and the marginal cost of a prefill token, fed
    once per step. ``overlap``: a step's wall time waits for the previous step's device work (``StepCostFit``)."""

    def __init__(self, overlap: bool = False) -> None:
        self.totals = (0, 0, 0)  # generated tokens, prefill tokens, steps
        self._recent: deque[tuple[float, int, int]] = deque()  # (time, generated, prefilled) per step
        self._recent_sums = [0.0, 0, 0]  # columns 1 and 2 summed over _recent (rates are read every step)
        self.busy_s = 0.0
        self.slow_steps = 0
        self.longest_step_s = 0.0
        self.decode_rows = 0
        self.prefill_rows = 0
        self.waiting_rows = 0
        self.pinned_slot_steps = 0
        self.phase_s: dict[str, float] = {}
        self.cost_fit = StepCostFit(lagged=overlap)

    def account(
        self,
        batch: ScheduledBatch,
        step_s: float = 0.0,
        waiting: int = 0,
        pinned_slots: int = 0,
        read_back: bool = True,
    ) -> None:
        """One step: its batch, wall time, queue beside it, idle pinned slots, and whether it waited to read back an
        earlier step's tokens (the overlap loop; ``StepCostFit``)."""
        self.busy_s += step_s
        self.decode_rows += len(batch.decodes)
        self.prefill_rows += len(batch.extends)
        self.waiting_rows += waiting
        self.pinned_slot_steps += pinned_slots
        self.slow_steps += step_s > SLOW_STEP_S
        self.longest_step_s = max(self.longest_step_s, step_s)
        generated = sum(1 for item in batch.seqs if item.samples)
        prefilled = sum(item.new_len for item in batch.extends)
        self.cost_fit.observe(prefilled, len(batch.decodes), step_s, read_back)
        total_generated, total_prefilled, steps = self.totals
        self.totals = (total_generated + generated, total_prefilled + prefilled, steps + 1)
        now = time.perf_counter()
        self._recent.append((now, generated, prefilled))
        self._recent_sums[1] += generated
        self._recent_sums[2] += prefilled
        while self._recent and now - self._recent[0][0] > RATE_WINDOW_S:
            _, old_generated, old_prefilled = self._recent.popleft()
            self._recent_sums[1] -= old_generated
            self._recent_sums[2] -= old_prefilled

    def add_phase(self, phase: str, seconds: float) -> None:
        self.phase_s[phase] = self.phase_s.get(phase, 0.0) + seconds

    def rate(self, column: int) -> float:
        """Per second over the window: column 1 is generated tokens, 2 is prefill tokens."""
        recent = self._recent
        if len(recent) < 2:
            return 0.0
        first, last = recent[0], recent[-1]
        span = last[0] - first[0]
        # The first entry marks the window's start: what it counted happened before the span.
        return (self._recent_sums[column] - first[column]) / span if span > 0 else 0.0


def cache_stats(cache: object, hints_ignored: int) -> dict[str, int]:
    """The prefix cache's counters as ``EngineStats`` fields (only hint counts without a radix cache)."""
    if not isinstance(cache, RadixCache):
        return {"hints_ignored": hints_ignored}
    c = cache.counters
    pinned, pinned_idle = cache.pinned_slot_counts()
    return {
        "cached_prefix_tokens": c.gpu_hit_tokens,
        "host_hit_tokens": c.host_hit_tokens,
        "evictions": c.evictions,
        "write_backs": c.write_backs,
        "loads": c.loads,
        "bytes_moved": cache.host.bytes_moved if cache.host is not None else 0,
        "host_slots_used": cache.host.allocator.num_used if cache.host is not None else 0,
        "host_slots_total": cache.host.allocator.num_slots if cache.host is not None else 0,
        "pinned_slots": pinned,
        "pinned_idle_slots": pinned_idle,
        "pins_refused": c.pins_refused,
        "pinned_tokens_evicted": c.pinned_tokens_evicted,
        "tool_wait_tokens_lost": c.tool_wait_tokens_lost,
        "hints_ignored": c.hints_ignored + hints_ignored,
    }
