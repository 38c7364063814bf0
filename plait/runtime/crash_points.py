"""Named crash points: a test-only hook that kills the process at a chosen moment of durable execution.

``PLAIT_CRASH_POINT=NAME`` (or ``NAME:N``, the N-th time the point is reached; default the first) makes the process
kill itself with ``SIGKILL`` when ``crash_point(NAME)`` runs, exactly as ``kill -9`` would: no cleanup, no flush,
nothing after it reaches the disk. The crash tests (``tests/durability``) use it to stop a server at the moments the
journal's ordering guarantees are about:

- ``after_accept``: a workflow's acceptance is committed, the submitter has not been answered (no 201 yet);
- ``mid_decode``: an LLM node has produced its first text, its output is not committed;
- ``after_output``: a node's outcome is committed, its output is not yet bound (its dependents have not started);
- ``mid_tool``: a tool's function has returned (its side effect happened), its result is not committed.

Unset (production), ``crash_point`` is a dictionary lookup that returns.
"""

from __future__ import annotations

import os
import signal
import sys

CRASH_POINT_ENV = "PLAIT_CRASH_POINT"
CRASH_POINTS = ("after_accept", "mid_decode", "after_output", "mid_tool")


def _parse(text: str) -> tuple[str, int] | None:
    if not text:
        return None
    name, _, count = text.partition(":")
    if name not in CRASH_POINTS:
        raise ValueError(f"{CRASH_POINT_ENV}={text!r}: unknown crash point; known: {', '.join(CRASH_POINTS)}")
    if count and (not count.isdigit() or int(count) < 1):
        raise ValueError(f"{CRASH_POINT_ENV}={text!r}: the count after ':' must be a positive integer")
    return name, int(count or 1)


_ARMED = _parse(os.environ.get(CRASH_POINT_ENV, ""))
_hits: dict[str, int] = {}


def armed(name: str) -> bool:
    """Whether ``crash_point(name)`` may kill this process (lets callers skip setting up a probe)."""
    return _ARMED is not None and _ARMED[0] == name


def crash_point(name: str) -> None:
    """Kill this process with SIGKILL when ``PLAIT_CRASH_POINT`` names this point and its count is reached."""
    if _ARMED is None or _ARMED[0] != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] < _ARMED[1]:
        return
    print(f"plait: crash point {name!r} reached ({CRASH_POINT_ENV}); killing this process", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
