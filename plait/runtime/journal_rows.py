"""What the journal stores: an accepted program, one node's outcome, one event, and how their JSON values are
encoded in their columns (``plait.runtime.journal`` is the store)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import msgspec


@dataclass(frozen=True)
class ProgramRow:
    """An accepted program. ``spec``: what it takes to build the program again (JSON data; its shape is the
    caller's). ``state`` is ``running`` until a terminal state (``done``, ``failed``, ``cancelled``) is recorded;
    times are unix seconds."""

    id: str
    kind: str  # "workflow" (a REST workflow) or "python" (a plait.Runtime program)
    name: str
    spec: Any
    tenant: str | None = None
    idempotency_key: str | None = None
    request_digest: str | None = None
    state: str = "running"
    error: str | None = None
    result: Any = None
    created_at: float = field(default_factory=time.time)
    finished_at: float | None = None

    @property
    def finished(self) -> bool:
        return self.finished_at is not None


@dataclass(frozen=True)
class OutcomeRow:
    """What one node produced. ``state``: ``done`` (``value`` holds the output), ``failed`` (``error_kind`` and
    ``error``), ``skipped`` (an input failed). ``position``: the order in which the node was added to its program;
    ``signature``: what the call was (Python programs: checked on replay). ``details``: metadata, the generation
    (prompt pieces and token ids) and the node's counters. ``order``: the commit order (set when read back)."""

    node_id: str
    position: int
    state: str
    value: Any = None
    signature: str | None = None
    error_kind: str | None = None
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    order: int = 0


@dataclass(frozen=True)
class EventRow:
    seq: int
    kind: str
    data: dict[str, Any]


PROGRAM_COLUMNS = (
    "id, kind, name, spec, tenant, idempotency_key, request_digest, state, error, result, created_at, finished_at"
)


def program_row(row: tuple[Any, ...]) -> ProgramRow:
    """A ``programs`` row, selected as ``PROGRAM_COLUMNS``."""
    return ProgramRow(
        id=row[0],
        kind=row[1],
        name=row[2],
        spec=decode_value(row[3]),
        tenant=row[4],
        idempotency_key=row[5],
        request_digest=row[6],
        state=row[7],
        error=row[8],
        result=decode_value(row[9]),
        created_at=row[10],
        finished_at=row[11],
    )


def encode_value(value: Any) -> bytes:
    """A JSON value as the journal stores it."""
    return msgspec.json.encode(value)


def decode_value(blob: bytes | None) -> Any:
    """A stored value back (None stays None)."""
    return None if blob is None else msgspec.json.decode(blob)
