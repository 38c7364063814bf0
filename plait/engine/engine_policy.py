"""The engine's run-time policy: how the scheduler orders and admits work and how the prefix cache evicts.

Static settings (model, device, memory, batch limits) live in ``EngineConfig``; everything here may change while the
engine runs (``Engine.set_policy``), between requests: a request added after the change is scheduled under the new
policy. ``EngineConfig.policy`` holds the policy an engine starts with, and the runtime's ``PlanConfig.engine`` the
one its planner wants: the executor applies the plan's on every path, so what runs is what the plan says.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from plait.engine.errors import InvalidRequestError

EVICTION_POLICIES = ("lru", "next-use")
# Requests whose planner priorities differ only in their time component by less than this are interchangeable for
# cache affinity (the value a plan turns cache affinity on with).
DEFAULT_AFFINITY_WINDOW_S = 2.0


@dataclass(frozen=True)
class EnginePolicy:
    """What the engine does with priorities and hints. The defaults are what plait serves with;
    ``EnginePolicy.request_level()`` is a request-level engine's (the baseline's)."""

    # lru: least recently used first. next-use: the prefix whose next use (the runtime's hints) is farthest goes
    # first; no known use counts as farthest, recency breaks ties, so without hints it is LRU.
    eviction: str = "next-use"
    # Hold a waiting prompt back while a running prefill computes its prefix (computes the prefix once), when the
    # part still to be computed that both share is at least ``prefix_hold_min_tokens`` long: a hold delays the prompt
    # by a step or more, which a short shared part does not pay back.
    prefix_first: bool = True
    prefix_hold_min_tokens: int = 256
    # Cache affinity: waiting requests whose priorities differ only in their time component, by less than this many
    # seconds from the first of their band, are admitted longest-resident-prefix first (0: strict priority order).
    affinity_window_s: float = DEFAULT_AFFINITY_WINDOW_S
    # Anti-starvation: a request waiting longer than this goes ahead of every priority (0: never).
    max_queue_wait_s: float = 30.0
    # At most this fraction of the KV pool may be pinned (pins beyond it are refused), and at most this fraction is
    # held back from an admission by other programs' next-call reservations.
    pin_budget_fraction: float = 0.25
    # Pinned KV keeps new prompts out, except those whose priority beats every pinner's (a pin keeps memory for its
    # program's next call, so it holds back only prompts that call would go after). Off: pins only order eviction.
    pins_hold_admissions: bool = True

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def request_level(cls) -> EnginePolicy:
        """A request-level engine: LRU, strict priority (FCFS) order, no prefix holds and no aging."""
        return cls(eviction="lru", prefix_first=False, affinity_window_s=0.0, max_queue_wait_s=0.0)

    def validate(self) -> None:
        """Raises ``InvalidRequestError`` naming the first bad field."""
        if self.eviction not in EVICTION_POLICIES:
            raise InvalidRequestError("eviction", f"'{self.eviction}': choose one of {', '.join(EVICTION_POLICIES)}")
        if self.prefix_hold_min_tokens < 0:
            raise InvalidRequestError("prefix_hold_min_tokens", f"must be >= 0, got {self.prefix_hold_min_tokens}")
        if not self.affinity_window_s >= 0:
            raise InvalidRequestError("affinity_window_s", f"must be >= 0 (0 = off), got {self.affinity_window_s}")
        if not self.max_queue_wait_s >= 0:
            raise InvalidRequestError("max_queue_wait_s", f"must be >= 0 (0 = off), got {self.max_queue_wait_s}")
        if not 0.0 <= self.pin_budget_fraction <= 1.0:
            raise InvalidRequestError("pin_budget_fraction", f"must be in [0, 1], got {self.pin_budget_fraction}")

    def with_values(self, **values: Any) -> EnginePolicy:
        """A copy with ``values`` changed (validated)."""
        return replace(self, **values)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def describe(self) -> str:
        """``field=value, ...`` in field order (what start-up and ``plait info`` print)."""
        return ", ".join(f"{name}={value}" for name, value in self.to_dict().items())


def policy_field_names() -> tuple[str, ...]:
    return tuple(f.name for f in fields(EnginePolicy))
