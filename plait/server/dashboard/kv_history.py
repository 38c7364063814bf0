"""KV use, queue depth and throughput over time: ``EngineStats`` sampled periodically into a bounded history.

One ``KVHistory`` per server (``kv_history_of(state)``, kept in ``ServerState.extras``) is fed by an asyncio task on
the server's event loop, started by the dashboard's first request and ended when the server drains. Benchmarks keep
their own (``KVHistory.sample_in_background`` around a run) and hand the samples to the offline report.

The device pool splits into disjoint parts, which the chart stacks (``KVSample.layers``): slots held by running
requests; cached slots kept only by a pin (programs waiting on tools); other cached slots (free to evict); slots
reserved for the next calls of tool-waiting programs (taken from the free room); free. The host tier is a separate
pool, shown as its own share.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

SAMPLE_PERIOD_S = 0.5
HISTORY_SAMPLES = 2400  # 20 minutes at the default period; the oldest samples are dropped first
_EXTRAS_KEY = "dashboard_kv_history"


@dataclass(frozen=True)
class KVSample:
    """One reading of the engine. ``at`` is ``time.monotonic()`` seconds (the clock of the planner's timeline); slot
    counts are token slots (``total`` of the device pool, ``host_total`` of the host tier, 0 without one)."""

    at: float
    total: float
    running: float  # held by running requests
    cached: float  # kept by the prefix cache, pinned or not
    pinned_idle: float  # cached slots no running request holds, kept by pins
    reserved: float
    host_used: float = 0.0
    host_total: float = 0.0
    waiting_requests: int = 0
    running_requests: int = 0
    decode_tokens_per_s: float = 0.0
    prefill_tokens_per_s: float = 0.0

    @classmethod
    def from_stats(cls, stats: Any, at: float | None = None) -> KVSample:
        """A sample of an ``EngineStats`` (fields an older engine lacks count 0)."""

        def field(name: str) -> float:
            return float(getattr(stats, name, 0) or 0)

        return cls(
            at=time.monotonic() if at is None else at,
            total=field("kv_slots_total"),
            running=field("kv_slots_used"),
            cached=field("kv_slots_cached"),
            pinned_idle=field("pinned_idle_slots"),
            reserved=field("kv_slots_reserved"),
            host_used=field("host_slots_used"),
            host_total=field("host_slots_total"),
            waiting_requests=int(field("waiting")),
            running_requests=int(field("running")),
            decode_tokens_per_s=field("decode_tokens_per_s"),
            prefill_tokens_per_s=field("prefill_tokens_per_s"),
        )

    def layers(self) -> dict[str, float]:
        """The device pool's disjoint parts in slots, bottom to top: ``running``, ``pinned``, ``cached``,
        ``reserved`` (clipped to the room left), ``free``; they sum to ``total``."""
        running = min(self.running, self.total)
        pinned = min(self.pinned_idle, self.cached, self.total - running)
        cached = min(self.cached - pinned, self.total - running - pinned)
        reserved = min(self.reserved, self.total - running - pinned - cached)
        free = self.total - running - pinned - cached - reserved
        return {"running": running, "pinned": pinned, "cached": cached, "reserved": reserved, "free": free}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class KVHistory:
    """The latest ``max_samples`` samples, oldest first. Appends come from one task; readers copy."""

    def __init__(self, max_samples: int = HISTORY_SAMPLES, period_s: float = SAMPLE_PERIOD_S) -> None:
        self.period_s = period_s
        self._samples: deque[KVSample] = deque(maxlen=max_samples)
        self._task: asyncio.Task[None] | None = None

    def record(self, sample: KVSample) -> None:
        self._samples.append(sample)

    def samples(self, since: float | None = None) -> list[KVSample]:
        """Samples taken at or after ``since`` (monotonic seconds; None: all kept)."""
        kept = list(self._samples)
        return kept if since is None else [s for s in kept if s.at >= since]

    def latest(self) -> KVSample | None:
        return self._samples[-1] if self._samples else None

    @property
    def sampling(self) -> bool:
        return self._task is not None and not self._task.done()

    def sample_in_background(
        self, read_stats: Callable[[], Any], *, keep_going: Callable[[], bool] = lambda: True
    ) -> asyncio.Task[None]:
        """Start (once) a task on the running event loop that records ``read_stats()`` every ``period_s`` while
        ``keep_going()``; ``stop()`` ends it. A failing read ends the sampling, never the caller."""
        if self._task is not None and not self._task.done():
            return self._task

        async def run() -> None:
            while keep_going():
                try:
                    self.record(KVSample.from_stats(read_stats()))
                except Exception:  # an engine that closed: the history keeps what it has
                    return
                await asyncio.sleep(self.period_s)

        self._task = asyncio.get_running_loop().create_task(run(), name="plait-kv-history")
        return self._task

    async def stop(self) -> None:
        """End the background sampling (if any) and wait for it."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def kv_history_of(state: Any) -> KVHistory:
    """The server's history, sampling ``state.engine.stats()`` in the background until the server drains (started
    here on first use; call from the event loop)."""
    history = state.extras.get(_EXTRAS_KEY)
    if history is None:
        history = state.extras[_EXTRAS_KEY] = KVHistory()
    if state.loaded and not state.draining and not history.sampling:
        history.sample_in_background(lambda: state.engine.stats(), keep_going=lambda: not state.draining)
    return history
