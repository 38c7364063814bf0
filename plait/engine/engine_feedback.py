"""What a running engine tells its runtime: one record per read, the latest stats and every cache event since.

The engine thread publishes after each step and after applying commands (``FeedbackChannel.publish``: the stats
snapshot and the cache events of that step); the runtime's one reader takes a record when it plans
(``Engine.feedback``). A record carries the newest stats and, oldest first, every cache event published since the
reader's previous record: each event is in exactly one record, however many steps pass between reads.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from plait.cache import CacheEvent
from plait.engine.engine_stats import EngineStats

# Events kept for a reader that is slow (or absent: an engine serving without a planner): beyond it the oldest go,
# counted in the next record's ``events_dropped``.
EVENT_BACKLOG = 8192


@dataclass(frozen=True, slots=True)
class EngineFeedback:
    """The engine's state for the runtime: ``stats`` as of the last step (or command) applied, and the cache events
    (evicted, loaded, pin_refused; see ``CacheEvent``) since the previous record, oldest first."""

    stats: EngineStats
    cache_events: tuple[CacheEvent, ...] = ()
    events_dropped: int = 0  # events that overflowed the backlog before the reader took them


class FeedbackChannel:
    """The engine thread (the only writer) publishes; one reader takes. Thread-safe: ``_lock`` guards every field.

    Invariant: ``_unread`` holds, oldest first, the events published since the last ``take`` (at most
    ``backlog``); ``_dropped`` counts those that overflowed it since then.
    """

    def __init__(self, stats: EngineStats, backlog: int = EVENT_BACKLOG) -> None:
        self._lock = threading.Lock()
        self._stats = stats
        self._unread: deque[CacheEvent] = deque()
        self._backlog = backlog
        self._dropped = 0

    def publish(self, stats: EngineStats, events: Iterable[CacheEvent] = ()) -> None:
        """Engine thread: the stats after a step (or commands), and the cache events it caused."""
        with self._lock:
            self._stats = stats
            self._unread.extend(events)
            overflow = len(self._unread) - self._backlog
            for _ in range(max(0, overflow)):
                self._unread.popleft()
            self._dropped += max(0, overflow)

    @property
    def stats(self) -> EngineStats:
        """The latest stats published (reading them takes no events)."""
        with self._lock:
            return self._stats

    def take(self) -> EngineFeedback:
        """The latest stats and every event published since the previous ``take`` (the single reader's call)."""
        with self._lock:
            record = EngineFeedback(self._stats, tuple(self._unread), self._dropped)
            self._unread.clear()
            self._dropped = 0
        return record
