"""Program-level ordering: the priority of each engine request, from its program.

A priority is ``(user priority, virtual time)``; the engine serves the smallest first and breaks ties by arrival.
With program FCFS (``PlanConfig.program_fcfs``) the virtual time is the program's start, so a program that started
earlier goes first and programs finish one after another instead of interleaving: mean completion time drops and the
last one finishes no later. Without it the virtual time is the call's submission: request-level FCFS. Nothing
starves: the engine promotes a request waiting longer than ``EnginePolicy.max_queue_wait_s`` ahead of every priority,
and cache affinity reorders calls whose virtual times lie within its window (``cache_affinity.py``).

Orderings that were measured and did not pay (shortest remaining, deadline urgency, attained service) are in
``docs/decisions.md`` (2026-12-07: ordering).
"""

from __future__ import annotations

from plait.runtime.planning.plan_config import PlanConfig


def call_priority(
    config: PlanConfig, *, user_priority: float, program_started_at: float, now: float
) -> tuple[float, float]:
    """``(user priority, virtual time)`` of a call submitted ``now`` (see the module doc)."""
    return (float(user_priority), program_started_at if config.program_fcfs else now)
