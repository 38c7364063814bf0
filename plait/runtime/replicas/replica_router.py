"""Which replica a call goes to: program affinity, then the longest cached prefix under a load guard.

State: ``bindings`` maps a program to the replica holding its KV (where its last call ran); a binding lasts until the
program is forgotten, its replica is lost, or it migrates. With the ``program`` policy a bound program's calls go to
its replica, whatever its load, while that replica holds at least as much of the call's prompt as any other: its KV
is there (once evicted, the program is placed again as a new one). Every other choice (an unbound program,
the ``prefix`` policy) takes, among the replicas balanced enough (``BALANCE_SLACK``: the programs each holds and the
calls it queues) and under the load guard, the one reporting the longest device-resident prefix of the call's prompt
(asked of the replicas' own caches); with no prefix anywhere, the least loaded.
``round-robin`` ignores both (the policy to measure the others against).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from plait.engine import EngineStats
from plait.runtime.replicas.replica_config import ReplicaConfig

# A replica is balanced enough to win on its cached prefix while the programs it holds and the calls it queues exceed
# the least loaded replica's by at most this share of them (and at least one): prompts that share a system prompt
# would otherwise all follow its KV to one replica while the others idle.
BALANCE_SLACK = 0.25


@dataclass(frozen=True)
class ReplicaLoad:
    """What routing reads of a replica: its queue and its KV in use (from its latest stats)."""

    waiting: int = 0
    running: int = 0
    kv_usage: float = 0.0

    @classmethod
    def of(cls, stats: EngineStats | None) -> ReplicaLoad:
        if stats is None:
            return cls()
        return cls(stats.waiting, stats.running, stats.kv_usage)

    @property
    def key(self) -> tuple[int, float]:
        """Less is less loaded: queued work first, then KV in use."""
        return (self.waiting + self.running, self.kv_usage)


class ReplicaRouter:
    def __init__(self, config: ReplicaConfig) -> None:
        self.config = config
        self.bindings: dict[str, int] = {}
        self._turn = itertools.count()
        self.decisions: dict[str, int] = {"bound": 0, "prefix": 0, "least_loaded": 0, "round_robin": 0}

    def bound(self, program_id: str | None, alive: Sequence[int]) -> int | None:
        """The live replica ``program_id`` is bound to, if any."""
        if program_id is None:
            return None
        index = self.bindings.get(program_id)
        return index if index is not None and index in alive else None

    def needs_prefix_lengths(self, program_id: str | None, alive: Sequence[int]) -> bool:
        """Whether ``choose`` will read the replicas' cached prefix lengths for this call."""
        return self.config.routing != "round-robin" and len(alive) > 1

    def choose(
        self,
        program_id: str | None,
        alive: Sequence[int],
        loads: dict[int, ReplicaLoad],
        prefix_lengths: dict[int, int] | None = None,
    ) -> int:
        """The replica for a call of ``program_id`` among the ``alive`` ones; binds the program to it."""
        if not alive:
            raise RuntimeError("no replica is alive")
        choice = self._choose(program_id, list(alive), loads, prefix_lengths or {})
        if program_id is not None:
            self.bindings[program_id] = choice
        return choice

    def _choose(
        self, program_id: str | None, alive: list[int], loads: dict[int, ReplicaLoad], prefix_lengths: dict[int, int]
    ) -> int:
        if self.config.routing == "round-robin":
            self.decisions["round_robin"] += 1
            return alive[next(self._turn) % len(alive)]
        if self.config.routing == "program":
            bound = self.bound(program_id, alive)
            if bound is not None and prefix_lengths.get(bound, 0) >= max(prefix_lengths.values(), default=0):
                self.decisions["bound"] += 1
                return bound
        load = {i: loads.get(i, ReplicaLoad()) for i in alive}
        held = Counter(index for program, index in self.bindings.items() if program != program_id)
        work = {i: held[i] + load[i].waiting for i in alive}  # the programs it holds and the calls it queues
        least = min(work.values())
        balanced = [
            i for i in alive if work[i] <= least + max(1, int(least * BALANCE_SLACK)) and not self._over_guard(load[i])
        ]
        best = max(balanced, key=lambda i: (prefix_lengths.get(i, 0), -work[i]), default=None)
        if best is not None and prefix_lengths.get(best, 0) > 0:
            self.decisions["prefix"] += 1
            return best
        self.decisions["least_loaded"] += 1
        return min(alive, key=lambda i: (work[i], load[i].key, i))

    def _over_guard(self, load: ReplicaLoad) -> bool:
        return load.waiting > self.config.max_waiting or load.kv_usage > self.config.max_kv_usage

    def rebind(self, program_id: str, index: int) -> None:
        self.bindings[program_id] = index

    def forget(self, program_id: str) -> None:
        self.bindings.pop(program_id, None)

    def lose(self, index: int) -> list[str]:
        """Drops every binding to replica ``index`` (it is gone); returns the programs that were bound to it."""
        lost = [program for program, bound in self.bindings.items() if bound == index]
        for program in lost:
            del self.bindings[program]
        return lost
