"""A per-program timeline of what happened to each program, exportable as Chrome trace JSON.

Every scheduling decision (queueing, prefill, decode, tool calls, pins, evictions, prefetches, dedup hits) can be
recorded here as a span or an instant and then inspected with ``events``/``summary`` or exported in the Trace Event
Format (viewable in Perfetto or ``chrome://tracing``). Times are seconds on the ``time.monotonic()`` clock.

A timeline must never break serving: it is bounded (at ``max_events`` it forgets the oldest programs' events, counted
as dropped, so a long-running server keeps recording what happens now), it never raises on bad input it can repair (a
span ending before it starts is clamped, an unknown handle is ignored), and it is thread-safe (engine threads and the
asyncio loop record into the same instance). Events are kept per program: reading one program's is proportional to its
own, and ``forget`` drops a program's when its owner forgets the program.
"""

from __future__ import annotations

import enum
import json
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class TimelineKind(enum.StrEnum):
    """What a timeline event records (a ``str`` subclass: members compare equal to their values)."""

    QUEUED = "queued"
    PREFILL = "prefill"
    DECODE = "decode"
    TOOL = "tool"
    PINNED = "pinned"
    EVICTED = "evicted"
    PREFETCHED = "prefetched"
    PROGRAM = "program"  # the whole program's lifetime
    DEDUPED = "deduped"  # a call answered by an identical call of another program


@dataclass(frozen=True)
class TimelineEvent:
    """One span (``end`` set, ``end >= start``) or instant (``end`` None) of one program, optionally at one node."""

    program_id: str
    kind: TimelineKind
    start: float
    end: float | None
    node: str | None = None
    args: dict[str, Any] = field(default_factory=dict)

    @property
    def duration(self) -> float:
        """Seconds the span lasted (0 for an instant)."""
        return 0.0 if self.end is None else self.end - self.start


def _json_safe(value: Any) -> Any:
    """``value`` with everything JSON cannot hold (or holds only loosely, like NaN) replaced by its ``str``."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return str(value)


def _meta(name: str, pid: int, tid: int, args: dict[str, Any]) -> dict[str, Any]:
    """A ``"ph": "M"`` metadata event (process or thread name or sort index)."""
    return {"ph": "M", "name": name, "pid": pid, "tid": tid, "ts": 0, "args": args}


class Timeline:
    """A bounded, thread-safe record of per-program spans and instants."""

    def __init__(self, max_events: int = 200_000) -> None:
        self.max_events = max_events
        self._lock = threading.Lock()
        # Per program, in the order programs first recorded; the oldest program is forgotten first when full.
        self._events: dict[str, list[TimelineEvent]] = {}
        self._count = 0  # events in ``_events``
        # Open spans count towards ``max_events`` too, so the timeline's memory stays bounded.
        self._open: dict[int, TimelineEvent] = {}
        self._next_handle = 0
        self._latest: float | None = None  # the latest time seen; open spans are exported ending here
        self.dropped = 0

    def _make_room(self, program_id: str) -> bool:
        """Caller holds the lock. Forget the oldest programs' events (not ``program_id``'s) until one more fits;
        False when it still does not (the open spans, or ``program_id``'s own events, fill it)."""
        while self._count + len(self._open) >= self.max_events:
            oldest = next((p for p in self._events if p != program_id), None)
            if oldest is None:
                return False
            removed = self._events.pop(oldest)
            self._count -= len(removed)
            self.dropped += len(removed)
        return True

    def _append(self, event: TimelineEvent) -> None:
        # Caller holds the lock and made room.
        self._events.setdefault(event.program_id, []).append(event)
        self._count += 1

    def _seen(self, *times: float | None) -> None:
        for t in times:
            if t is not None and (self._latest is None or t > self._latest):
                self._latest = t

    def _record(self, event: TimelineEvent) -> None:
        with self._lock:
            self._seen(event.start, event.end)
            if self._make_room(event.program_id):
                self._append(event)
            else:
                self.dropped += 1

    def span(
        self,
        program_id: str,
        kind: TimelineKind,
        start: float,
        end: float,
        *,
        node: str | None = None,
        args: dict[str, Any] | None = None,
    ) -> None:
        """Record a span from ``start`` to ``end`` (clamped to ``start`` when earlier)."""
        self._record(TimelineEvent(program_id, kind, start, max(start, end), node, dict(args or {})))

    def instant(
        self,
        program_id: str,
        kind: TimelineKind,
        at: float,
        *,
        node: str | None = None,
        args: dict[str, Any] | None = None,
    ) -> None:
        """Record an instant at ``at``."""
        self._record(TimelineEvent(program_id, kind, at, None, node, dict(args or {})))

    def open_span(
        self,
        program_id: str,
        kind: TimelineKind,
        start: float,
        *,
        node: str | None = None,
        args: dict[str, Any] | None = None,
    ) -> int:
        """Start a span whose end is not known yet; returns the handle for ``close_span``.

        When the timeline cannot make room the span is dropped (and counted) at once; closing its handle then does
        nothing.
        """
        with self._lock:
            handle = self._next_handle
            self._next_handle += 1
            self._seen(start)
            if self._make_room(program_id):
                self._open[handle] = TimelineEvent(program_id, kind, start, None, node, dict(args or {}))
            else:
                self.dropped += 1
            return handle

    def _close(self, handle: int, end: float, args: dict[str, Any] | None) -> None:
        # Caller holds the lock. Closing moves the event from ``_open`` to ``_events``: the count is unchanged.
        pending = self._open.pop(handle, None)
        if pending is None:
            return
        self._seen(end)
        merged = {**pending.args, **(args or {})}
        self._append(
            TimelineEvent(
                pending.program_id, pending.kind, pending.start, max(pending.start, end), pending.node, merged
            )
        )

    def close_span(self, handle: int, end: float, args: dict[str, Any] | None = None) -> None:
        """End the open span ``handle`` at ``end``, merging ``args`` into its args; unknown handles are ignored."""
        with self._lock:
            self._close(handle, end, args)

    def close_open(self, program_id: str, end: float) -> int:
        """End every open span of ``program_id`` at ``end`` (when the program ends); returns how many were closed."""
        with self._lock:
            handles = [h for h, e in self._open.items() if e.program_id == program_id]
            for handle in handles:
                self._close(handle, end, None)
            return len(handles)

    def events(self, program_id: str | None = None) -> list[TimelineEvent]:
        """Recorded events (of one program, or all), sorted by start; spans still open are not included."""
        with self._lock:
            if program_id is None:
                found = [event for events in self._events.values() for event in events]
            else:
                found = list(self._events.get(program_id, ()))
        return sorted(found, key=lambda e: e.start)

    def forget(self, program_id: str) -> None:
        """Drop every event and open span of ``program_id`` (its owner forgot the program; not counted as dropped)."""
        with self._lock:
            self._count -= len(self._events.pop(program_id, ()))
            for handle in [h for h, e in self._open.items() if e.program_id == program_id]:
                del self._open[handle]

    def summary(self) -> dict[str, dict[str, float]]:
        """Per program: total seconds per span kind (key ``kind``) and instants per kind (key ``kind_count``)."""
        out: dict[str, dict[str, float]] = {}
        for event in self.events():
            totals = out.setdefault(event.program_id, {})
            key = event.kind.value if event.end is not None else f"{event.kind.value}_count"
            totals[key] = totals.get(key, 0.0) + (event.duration if event.end is not None else 1.0)
        return out

    def to_chrome_trace(self) -> dict[str, Any]:
        """The timeline in the Trace Event Format: one process per program, one thread per node (tid 0: no node).

        Timestamps are microseconds relative to the earliest event; spans still open end at the latest time seen.
        """
        with self._lock:
            latest = self._latest
            events = [event for program_events in self._events.values() for event in program_events]
            events += [
                TimelineEvent(e.program_id, e.kind, e.start, max(e.start, latest or e.start), e.node, e.args)
                for e in self._open.values()
            ]
            dropped, still_open = self.dropped, len(self._open)
        events.sort(key=lambda e: e.start)
        origin = events[0].start if events else 0.0
        pids: dict[str, int] = {}
        tids: dict[str, dict[str | None, int]] = {}
        meta: list[dict[str, Any]] = []
        trace: list[dict[str, Any]] = []
        for event in events:
            if event.program_id not in pids:
                pid = pids[event.program_id] = len(pids) + 1
                tids[event.program_id] = {None: 0}
                meta.append(_meta("process_name", pid, 0, {"name": event.program_id}))
                meta.append(_meta("process_sort_index", pid, 0, {"sort_index": pid}))
                meta.append(_meta("thread_name", pid, 0, {"name": "(program)"}))
            pid, threads = pids[event.program_id], tids[event.program_id]
            if event.node not in threads:
                tid = threads[event.node] = len(threads)
                meta.append(_meta("thread_name", pid, tid, {"name": event.node}))
                meta.append(_meta("thread_sort_index", pid, tid, {"sort_index": tid}))
            name = event.kind.value if event.node is None else f"{event.kind.value}: {event.node}"
            entry: dict[str, Any] = {
                "name": name,
                "cat": event.kind.value,
                "pid": pid,
                "tid": threads[event.node],
                "ts": round((event.start - origin) * 1e6, 3),
                "args": _json_safe(event.args),
            }
            if event.end is None:
                entry.update(ph="i", s="p")
            else:
                entry.update(ph="X", dur=round(event.duration * 1e6, 3))
            trace.append(entry)
        other = {"clock": "time.monotonic", "origin_s": origin, "dropped": dropped, "open_spans": still_open}
        return {"traceEvents": meta + trace, "displayTimeUnit": "ms", "otherData": other}

    def write_chrome_trace(self, path: str | Path) -> Path:
        """Write ``to_chrome_trace()`` as JSON to ``path`` (parent directories created); returns the path."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(self.to_chrome_trace()), encoding="utf-8")
        return target

    def clear(self) -> None:
        """Forget every event, open span and drop count."""
        with self._lock:
            self._events.clear()
            self._count = 0
            self._open.clear()
            self._latest = None
            self.dropped = 0
