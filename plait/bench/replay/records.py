"""The data of a replay: what a trace holds (requests, agent sessions) and what the replay measured.

Times in traces are seconds from the trace's (or slice's) first arrival. Times in results are seconds from the start
of the replay run (``time.monotonic()`` differences), so a plait-mode run and a baseline-mode run of the same trace
line up on one axis.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

TRACE_FORMATS = ("mooncake", "azure", "burstgpt", "lmcache-agent")
MOONCAKE_BLOCK_TOKENS = 512  # Mooncake's hash ids name 512-token blocks


class TraceFormatError(ValueError):
    """A trace file that cannot be read as the given format; the message names the file, the line and what to fix."""


@dataclass(frozen=True)
class TraceRequest:
    """One request of a request-level trace (Mooncake, Azure, BurstGPT).

    ``hash_ids`` (Mooncake only): one id per ``block_tokens``-token block of the prompt, the last block possibly
    partial; two requests share a prompt prefix exactly as far as their leading ids are equal.
    """

    arrival_s: float
    input_tokens: int
    output_tokens: int
    hash_ids: tuple[int, ...] | None = None


@dataclass(frozen=True)
class AgentCall:
    """One LLM call of an agent session: its offset from the session's first call, the real prompt and output."""

    offset_s: float
    input_text: str
    output_text: str


@dataclass(frozen=True)
class AgentSession:
    """One agent session (replayed as a program): calls in time order; the gap between consecutive calls' offsets is
    the tool time between them."""

    session_id: str
    arrival_s: float
    calls: tuple[AgentCall, ...]
    source: str = ""  # the file (or folder) it came from

    def gaps_s(self) -> list[float]:
        """Seconds between consecutive calls (``len(calls) - 1`` values, each >= 0)."""
        return [max(0.0, b.offset_s - a.offset_s) for a, b in zip(self.calls, self.calls[1:], strict=False)]


@dataclass
class Trace:
    """A loaded trace: ``requests`` for request-level formats, ``sessions`` for ``lmcache-agent``; sorted by arrival.

    ``skipped_lines`` counts malformed lines left out (only with ``skip_malformed``); ``meta`` records what was read
    (files, columns, the time span) for the report.
    """

    format: str
    path: Path
    requests: list[TraceRequest] = field(default_factory=list)
    sessions: list[AgentSession] = field(default_factory=list)
    block_tokens: int = MOONCAKE_BLOCK_TOKENS
    skipped_lines: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def is_agent(self) -> bool:
        return self.format == "lmcache-agent"

    def span_s(self) -> float:
        """Seconds from the first to the last arrival (of a request, or of any call of any session)."""
        if self.is_agent:
            ends = [s.arrival_s + (s.calls[-1].offset_s if s.calls else 0.0) for s in self.sessions]
            starts = [s.arrival_s for s in self.sessions]
        else:
            ends = starts = [r.arrival_s for r in self.requests]
        return max(ends) - min(starts) if starts else 0.0


@dataclass
class RequestRecord:
    """What one replayed LLM call measured. ``arrival_s``/``sent_s``/``first_token_s``/``finished_s`` are seconds from
    the run's start; ``None`` where never reached. ``cached_tokens`` is ``None`` when the target does not say."""

    index: int
    arrival_s: float
    input_tokens: int
    output_tokens_target: int
    output_tokens: int = 0
    sent_s: float | None = None
    first_token_s: float | None = None
    finished_s: float | None = None
    cached_tokens: int | None = None
    ok: bool = False
    error: str = ""
    session_id: str | None = None  # agent calls: the session (program) it belongs to

    @property
    def ttft_s(self) -> float | None:
        if self.first_token_s is None or self.sent_s is None:
            return None
        return self.first_token_s - self.sent_s

    @property
    def e2e_s(self) -> float | None:
        if self.finished_s is None or self.sent_s is None or not self.ok:
            return None
        return self.finished_s - self.sent_s

    @property
    def tpot_s(self) -> float | None:
        """Mean time per output token after the first."""
        if self.e2e_s is None or self.ttft_s is None or self.output_tokens < 2:
            return None
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SessionRecord:
    """One replayed agent session (program): job completion time is arrival to its last call's end."""

    session_id: str
    arrival_s: float
    calls: int
    completed_calls: int = 0
    finished_s: float | None = None
    ok: bool = False
    error: str = ""

    @property
    def jct_s(self) -> float | None:
        if not self.ok or self.finished_s is None:
            return None
        return self.finished_s - self.arrival_s

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ModeRun:
    """One replay of a trace in one mode (``plait``, ``baseline`` or ``target`` for an external URL).

    ``kv_usage`` holds ``(seconds from start, fraction of the KV pool in use)`` samples (empty when the target does
    not expose it); ``engine`` holds target-side counters (prefix hit rate, retractions, ...) when known;
    ``interrupted`` is set when the run was stopped (Ctrl-C or the time limit) before every request finished.
    """

    mode: str
    target: str
    requests: list[RequestRecord] = field(default_factory=list)
    sessions: list[SessionRecord] = field(default_factory=list)
    kv_usage: list[tuple[float, float]] = field(default_factory=list)
    engine: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0
    interrupted: bool = False
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "target": self.target,
            "wall_s": self.wall_s,
            "interrupted": self.interrupted,
            "notes": self.notes,
            "engine": self.engine,
            "kv_usage": [list(sample) for sample in self.kv_usage],
            "requests": [r.to_dict() for r in self.requests],
            "sessions": [s.to_dict() for s in self.sessions],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModeRun:
        return cls(
            mode=data["mode"],
            target=data["target"],
            requests=[RequestRecord(**r) for r in data.get("requests", [])],
            sessions=[SessionRecord(**s) for s in data.get("sessions", [])],
            kv_usage=[(float(t), float(u)) for t, u in data.get("kv_usage", [])],
            engine=dict(data.get("engine", {})),
            wall_s=float(data.get("wall_s", 0.0)),
            interrupted=bool(data.get("interrupted", False)),
            notes=list(data.get("notes", [])),
        )
