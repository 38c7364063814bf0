"""Program-level ordering: the priority of each engine request, from its program's progress and deadline.

A priority is ``(user priority, service level, virtual time)``; the engine serves the smallest first and breaks
ties by arrival. The parts, each switchable (``PlanConfig``):

- program-FCFS: the virtual time is the program's start, so a program that started earlier goes first and programs
  finish one after another instead of interleaving (mean completion time drops; the last finishes no later);
- deadline urgency: for a program with a deadline, the remaining deadline is split across its remaining stages in
  proportion to their expected times; this stage's share minus its own expected time is its slack, and the virtual
  time is the moment it must start (now + slack): the least slack goes first. Times are absolute, so they compare
  with program-FCFS start times and never need updating while a request waits;
  a program whose remaining expected path no longer fits before its deadline drops a service level (behind every
  program that can still make its deadline, in program order among the late ones): under overload, least slack first
  alone would make every program late;
- attained service (ATLAS, non-clairvoyant): the service level grows with the engine time the program has received
  along its critical path (geometric levels), so short programs pass long ones; a long program cannot starve because
  the engine promotes any request waiting longer than ``max_queue_wait_s``.

With everything off the virtual time is the submission time: request-level FCFS.
"""

from __future__ import annotations

import math

import networkx as nx

from plait.dag import Workflow
from plait.runtime.planning.durations import DurationModel
from plait.runtime.planning.plan_config import PlanConfig

HOPELESS_LEVELS = 1  # service levels a program that can no longer meet its deadline drops by


def service_level(attained_s: float, quantum_s: float) -> int:
    """0 below one quantum, then one level per factor of 4 (levels [0,q), [q,4q), [4q,16q), ...)."""
    if attained_s < quantum_s:
        return 0
    return 1 + int(math.log(attained_s / quantum_s, 4))


def remaining_path_s(workflow: Workflow, node_id: str, finished: set[str], durations: DurationModel) -> float:
    """Expected seconds of the longest chain of unfinished nodes starting at ``node_id`` (itself included)."""
    graph = workflow.graph
    longest: dict[str, float] = {}
    reachable = nx.descendants(graph, node_id) | {node_id}
    for current in reversed(list(nx.topological_sort(graph.subgraph(reachable)))):
        if current in finished:
            longest[current] = 0.0
            continue
        after = max((longest[s] for s in graph.successors(current) if s in longest), default=0.0)
        longest[current] = durations.expected(workflow.nodes[current]) + after
    return longest[node_id]


def stage_start_by(now: float, deadline_at: float, stage_s: float, remaining_s: float) -> float:
    """When this stage must start: its share of the remaining deadline, minus its own expected time, from now."""
    share = (deadline_at - now) * (stage_s / remaining_s) if remaining_s > 0 else deadline_at - now
    return now + share - stage_s


def call_priority(
    config: PlanConfig,
    *,
    user_priority: float,
    program_started_at: float,
    attained_service_s: float,
    deadline_at: float | None,
    stage_s: float,
    remaining_s: float,
    now: float,
) -> tuple[float, float, float]:
    level = service_level(attained_service_s, config.service_quantum_s) if config.attained_service else 0
    hopeless = config.deadline and deadline_at is not None and now + remaining_s > deadline_at
    if hopeless:
        # Its remaining path no longer fits before the deadline: it goes behind the programs that can still make
        # theirs (least slack first under overload would make every program late), in program order among its kind.
        level += HOPELESS_LEVELS
        virtual = program_started_at if config.program_fcfs else now
    elif config.deadline and deadline_at is not None:
        virtual = stage_start_by(now, deadline_at, stage_s, remaining_s)
    elif config.program_fcfs:
        virtual = program_started_at
    else:
        virtual = now
    return (float(user_priority), float(level), virtual)
