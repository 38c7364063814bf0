"""Tool-time samples from real agent sessions: the LMCache agent traces in ``traces/lmcache_agent``.

Each ``*.jsonl`` line is one LLM call of a session (``timestamp`` in microseconds, ``session_id``, ``input``,
``output``). Within a session the gap between consecutive calls is the agent's tool/environment time plus the
previous call's own latency, so it is an upper bound on tool time; we use it as the tool time. Lines are not
always in time order in the files, so each session's timestamps are sorted before taking differences; gaps that are
not positive (duplicated timestamps) are dropped and long gaps are clipped.
"""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from pathlib import Path

from plait.bench.workflow_suites.suite import SuiteDataMissing

TRACE_DIR = Path("traces") / "lmcache_agent"
# miniswe: a SWE coding agent running shell commands (tool ~1 s); taubench: tau-bench airline agent with a simulated
# user and API lookups (tool ~0.3 s). Two sources give two tools with different duration distributions.
TRACE_SOURCES = ("miniswe", "taubench")
MAX_GAP_S = 60.0


def trace_gaps(data_dir: Path, source: str, max_gap_s: float = MAX_GAP_S) -> list[float]:
    """Positive inter-call gaps (seconds) of every session in ``data_dir/traces/lmcache_agent/<source>``, clipped to
    ``max_gap_s``, in file and session order. Raises ``SuiteDataMissing`` when the folder or its files are absent."""
    folder = data_dir / TRACE_DIR / source
    files = sorted(folder.glob("*.jsonl")) if folder.is_dir() else []
    if not files:
        raise SuiteDataMissing(
            f"{folder} not found or empty: the LMCache agent traces (real multi-turn agent sessions, "
            "github.com/LMCache/lmcache-agent-trace, Apache-2.0), whose inter-call gaps give the react suite's "
            "tool times"
        )
    timestamps: dict[str, list[int]] = defaultdict(list)
    for path in files:
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                if line.strip():
                    record = json.loads(line)
                    timestamps[str(record["session_id"])].append(int(record["timestamp"]))
    gaps: list[float] = []
    for session in timestamps.values():
        session.sort()
        for earlier, later in itertools.pairwise(session):
            gap = (later - earlier) / 1e6
            if gap > 0:
                gaps.append(min(gap, max_gap_s))
    if not gaps:
        raise SuiteDataMissing(f"{folder}: no session has two calls, so there are no inter-call gaps to sample")
    return gaps
