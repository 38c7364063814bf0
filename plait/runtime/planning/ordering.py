"""Program-level ordering: the priority of each engine request, from its program's progress and deadline.

A priority is ``(user priority, service level, virtual time)``; the engine serves the smallest first and breaks
ties by arrival. The parts, each switchable (``PlanConfig``):

- program-FCFS: the virtual time is the program's start, so a program that started earlier goes first and programs
  finish one after another instead of interleaving (mean completion time drops; the last finishes no later);
- shortest remaining: the virtual time adds the expected time of the program's remaining critical path from this
  call (the graph says what is left), so the key is the program's expected finish had it run alone from its start.
  A program close to its end, or a short one, goes ahead of a long one that started a little earlier: the order that
  minimises mean completion time (shortest remaining first) where sizes differ, FCFS where they do not. A key only
  falls as its program advances (for fixed estimates), so programs still finish one after another; a long program
  waits at most about its own length behind later ones (a newer program's key is at least its start). Off by
  default: that wait is the tail (text2sql on a 30k pool on an H200, p95 21.3 s with it against 18.5 s without at
  12/s, 16.3 against 11.5 s at 7/s), and on react it measured within the spread of runs;
- deadline: a program with a deadline may move earlier, never later: its key is the smaller of the key above and its
  latest start (the deadline minus the expected time of its critical path when it started). Over a shortest-remaining
  (or request-FCFS) key a tight deadline puts a program ahead of programs keyed before it; a generous one changes
  nothing. Over program FCFS alone (the default) a deadline the program can still make never has its latest start
  before the program's start, so deadlines act only through the demotion below. Ordering every deadline program by
  its latest start (earliest-deadline-first) was measured worse at the tail: with deadlines at 3x the unloaded time a
  long program's latest start lies twice its length after its start, so it waited behind every shorter program
  arriving in that span (text2sql on a contended pool, simulated: p95 20.0 s against 16.7 s for program-FCFS, mean
  12.6 vs 12.7 s). Splitting the remaining deadline over the remaining stages and serving the least slack first was
  measured worse than request FCFS (mean and p95 JCT 1.6x worse): a new program's first stage has a small share of a
  fresh deadline, so it cut in between the later stages of older programs, programs interleaved and all finished
  late. A program whose remaining expected path no longer fits before its deadline drops a service level (behind
  every program that can still make its deadline, in its order among the late ones): under overload, serving the most
  urgent first would make every program late;
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


def remaining_paths(workflow: Workflow, finished: set[str], durations: DurationModel) -> dict[str, float]:
    """Node -> expected seconds of the longest chain of unfinished nodes starting at it (itself included; 0 for a
    finished node), for every node in one pass against the edges."""
    graph = workflow.graph
    longest: dict[str, float] = {}
    for current in reversed(list(nx.topological_sort(graph))):
        if current in finished:
            longest[current] = 0.0
            continue
        after = max((longest[s] for s in graph.successors(current)), default=0.0)
        longest[current] = durations.expected(workflow.nodes[current]) + after
    return longest


def latest_start(deadline_at: float, expected_path_s: float) -> float:
    """When a program must start to finish its expected critical path by its deadline."""
    return deadline_at - expected_path_s


def call_priority(
    config: PlanConfig,
    *,
    user_priority: float,
    program_started_at: float,
    attained_service_s: float,
    deadline_at: float | None,
    latest_start_at: float | None,
    remaining_s: float,
    now: float,
) -> tuple[float, float, float]:
    """``(user priority, service level, virtual time)`` of a call submitted ``now`` (see the module doc);
    ``remaining_s``: the expected time of the program's remaining path from this call (needed by
    ``shortest_remaining`` and ``deadline``)."""
    level = service_level(attained_service_s, config.service_quantum_s) if config.attained_service else 0
    virtual = program_started_at if config.program_fcfs else now
    if config.shortest_remaining:
        virtual += remaining_s
    if config.deadline and deadline_at is not None:
        if now + remaining_s > deadline_at:
            # Its remaining path no longer fits before the deadline: it goes behind the programs that can still make
            # theirs (serving the most urgent first under overload would make every program late).
            level += HOPELESS_LEVELS
        elif latest_start_at is not None:
            # A deadline moves a program earlier (a tight one ahead of programs that started before it), never later
            # than the order without it: generous deadlines leave the program-FCFS / shortest-remaining order alone.
            virtual = min(virtual, latest_start_at)
    return (float(user_priority), float(level), virtual)
