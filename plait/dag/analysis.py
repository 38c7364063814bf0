"""Graph analysis: levels, the critical path, steps-to-execution per node and per shared prompt prefix.

*Steps-to-execution* (KVFlow) counts how many rounds of calls must finish before a node can run: 0 for a node that
is ready (or running), otherwise one more than the largest count among its unfinished predecessors. A prompt
prefix's count is the smallest among the unfinished LLM calls whose prompts start with it; the runtime turns these
counts into cache hints (evict far-future prefixes first, prefetch the next ones).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping

import networkx as nx

from plait.dag.nodes import LLMCall, Node
from plait.dag.workflow import Workflow


def levels(workflow: Workflow) -> dict[str, int]:
    """Node -> depth: 0 for nodes with no predecessor, else 1 + the deepest predecessor."""
    depth: dict[str, int] = {}
    for node_id in nx.topological_sort(workflow.graph):
        depth[node_id] = max((depth[p] + 1 for p in workflow.graph.predecessors(node_id)), default=0)
    return depth


def critical_path(
    workflow: Workflow, duration: Mapping[str, float] | Callable[[Node], float] | None = None
) -> tuple[list[str], float]:
    """The chain of nodes with the largest total duration, and that total.

    ``duration`` gives each node's expected time (a mapping by id or a function of the node); by default every
    node counts 1, so the path is the longest chain. Ties go to the node that comes first in insertion order.
    """
    cost = _duration_function(duration)
    order = {node_id: index for index, node_id in enumerate(workflow.nodes)}
    best: dict[str, tuple[float, str | None]] = {}
    for node_id in nx.topological_sort(workflow.graph):
        # Predecessors in insertion order, so that ``max`` keeps the first of equally long chains.
        predecessors = sorted(workflow.graph.predecessors(node_id), key=order.__getitem__)
        before = max(((best[p][0], p) for p in predecessors), key=lambda item: item[0], default=None)
        start = before[0] if before else 0.0
        best[node_id] = (start + cost(workflow.nodes[node_id]), before[1] if before else None)
    if not best:
        return [], 0.0
    last = max(workflow.nodes, key=lambda node_id: best[node_id][0])
    total = best[last][0]
    path = [last]
    while (previous := best[path[-1]][1]) is not None:
        path.append(previous)
    return path[::-1], total


def _duration_function(duration: Mapping[str, float] | Callable[[Node], float] | None) -> Callable[[Node], float]:
    if duration is None:
        return lambda node: 1.0
    if callable(duration):
        return duration
    return lambda node: float(duration.get(node.id, 1.0))


def steps_to_execution(workflow: Workflow, finished: Collection[str] = ()) -> dict[str, int]:
    """Unfinished node -> rounds of calls that must finish before it can run (0: can run now)."""
    finished = set(finished)
    steps: dict[str, int] = {}
    for node_id in nx.topological_sort(workflow.graph):
        if node_id in finished:
            continue
        waiting_on = [steps[p] for p in workflow.graph.predecessors(node_id) if p not in finished]
        steps[node_id] = max(waiting_on, default=-1) + 1
    return steps


def prefix_groups(workflow: Workflow) -> dict[str, list[str]]:
    """Static prompt prefix -> the LLM calls whose prompts start with it (calls with no static text are left out)."""
    groups: dict[str, list[str]] = {}
    for node in workflow.llm_calls():
        prefix = _prefix_key(node)
        if prefix:
            groups.setdefault(prefix, []).append(node.id)
    return groups


def prefix_steps_to_execution(workflow: Workflow, finished: Collection[str] = ()) -> dict[str, int]:
    """Static prompt prefix -> the fewest steps until an unfinished call using it runs."""
    node_steps = steps_to_execution(workflow, finished)
    result: dict[str, int] = {}
    for prefix, members in prefix_groups(workflow).items():
        pending = [node_steps[node_id] for node_id in members if node_id in node_steps]
        if pending:
            result[prefix] = min(pending)
    return result


def _prefix_key(node: LLMCall) -> str:
    return node.prompt.static_prefix


def calls_made_ready(workflow: Workflow, node_id: str, finished: Collection[str]) -> list[LLMCall]:
    """The LLM calls that can start once ``node_id`` finishes: its successors whose every other predecessor is in
    ``finished``."""
    graph = workflow.graph
    return [
        call
        for s in graph.successors(node_id)
        if isinstance(call := workflow.nodes[s], LLMCall)
        and all(p == node_id or p in finished for p in graph.predecessors(s))
    ]
