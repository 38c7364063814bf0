"""The soak's verdicts: when the RSS fit starts (the warm-up), and the pass/fail invariants a run is judged by, in the
order they are reported (``plait.bench.soak`` documents each)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from plait.bench.soak_load import Operation
from plait.bench.soak_report import count, ratio
from plait.bench.soak_trend import JournalTrend, RssTrend, Verdict

if TYPE_CHECKING:
    from plait.bench.soak import SoakRun, SoakSettings


def rss_warmup_s(operations: list[Operation], settings: SoakSettings) -> float:
    """When the RSS fit starts: ``settings.warmup_s``, or later when the ``settings.warmup_operations``-th operation
    ended later (infinity when fewer ended: no fit)."""
    if settings.warmup_operations <= 0:
        return settings.warmup_s
    ends = sorted(o.start_s + o.latency_s for o in operations)
    if len(ends) < settings.warmup_operations:
        return math.inf
    return max(settings.warmup_s, ends[settings.warmup_operations - 1])


@dataclass(frozen=True)
class Invariant:
    name: str
    ok: bool
    measured: str
    rule: str


def invariants(run: SoakRun, rss: RssTrend, journal: JournalTrend, *, started_server: bool) -> list[Invariant]:
    """The soak's pass/fail checks, in the order they are reported."""
    errors = len(run.http.server_errors)
    unexpected = [o for o in run.operations if not o.ok]
    idle = run.idle_after
    checks = [
        Invariant("no 5xx", errors == 0, f"{errors} responses >= 500", "0"),
        Invariant("operations as expected", not unexpected, f"{len(unexpected)} of {len(run.operations)} not", "0"),
        Invariant(
            "KV back to 0",
            bool(idle.get("idle")),
            f"KV {ratio(idle.get('kv_usage_ratio'))}, requests running {count(idle.get('running'))}, waiting "
            f"{count(idle.get('waiting'))}, programs running {count(idle.get('running_programs'))} after "
            f"{run.idle_wait_s:.1f} s",
            "KV 0; no request running or waiting, no program running",
        ),
        Invariant(
            "RSS flat",
            rss.verdict is not Verdict.GROWING,
            f"{rss.verdict}: {rss.reason}",
            f"slope <= {rss.max_slope_mib_per_h:g} MiB/h after the warm-up",
        ),
        Invariant(
            "journal bounded",
            journal.verdict is not Verdict.GROWING,
            f"{journal.verdict}: {journal.reason}",
            "no growth after the retention horizon",
        ),
    ]
    if started_server:
        alive = run.server_exit is None
        checks.append(
            Invariant("server up", alive, "running" if alive else f"exited with {run.server_exit}", "running")
        )
    return checks
