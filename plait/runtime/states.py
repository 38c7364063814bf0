"""Per-node and per-program states and timings (what ``GET /workflows/{id}`` and ``plait run`` show)."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field


class NodeState(enum.Enum):
    PENDING = "pending"  # waiting for inputs
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"  # an input failed, so it never ran
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self not in (NodeState.PENDING, NodeState.RUNNING)


class ProgramState(enum.Enum):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self is not ProgramState.RUNNING


@dataclass
class NodeRecord:
    """One node's life. Times are ``time.monotonic()`` seconds; ``None`` until reached."""

    node_id: str
    kind: str  # "llm" or "tool"
    state: NodeState = NodeState.PENDING
    created_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    first_token_at: float | None = None
    finished_at: float | None = None
    engine_s: float = 0.0  # summed wall time of this node's engine requests, submit to last token
    prompt_tokens: int = 0
    cached_tokens: int = 0  # of which the prefix cache held (not computed)
    spliced_tokens: int = 0  # of which went as the ids an earlier call generated (``output_splicing``)
    completion_tokens: int = 0
    attempts: int = 0  # tool attempts (retries + 1)
    error: str | None = None
    request_ids: list[str] = field(default_factory=list)
    queued_s: float | None = None  # engine queue time of its first request (submission to first admission)
    deduplicated: bool = False  # answered by an identical call of another program

    @property
    def run_s(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at

    def finish(self, state: NodeState, error: str | None = None) -> None:
        self.state = state
        self.error = error
        self.finished_at = time.monotonic()

    def to_dict(self) -> dict[str, object]:
        return {
            "node": self.node_id,
            "kind": self.kind,
            "state": self.state.value,
            "run_s": self.run_s,
            "engine_s": self.engine_s,
            "queued_s": (self.started_at - self.created_at) if self.started_at is not None else None,
            "ttft_s": (self.first_token_at - self.started_at) if self.first_token_at and self.started_at else None,
            "prompt_tokens": self.prompt_tokens,
            "spliced_tokens": self.spliced_tokens,
            "completion_tokens": self.completion_tokens,
            "attempts": self.attempts,
            "error": self.error,
        }


@dataclass
class ProgramRecord:
    program_id: str
    name: str
    state: ProgramState = ProgramState.RUNNING
    created_at: float = field(default_factory=time.monotonic)
    finished_at: float | None = None
    error: str | None = None

    @property
    def elapsed_s(self) -> float:
        return (self.finished_at or time.monotonic()) - self.created_at
