"""Which program-level features the planner uses. Each can be switched off; all off is the baseline.

Baseline mode is a request-level engine: requests first-come first-served, an LRU prefix cache, no pins, no prefetch,
no deduplication, no holding a prompt back for a prefix another request is computing, every decode reading its whole
context alone (no shared-prefix decode attention). ``PlanConfig.only(name)`` turns
one feature on over the baseline (for ablations).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

FEATURES = (
    "program_fcfs",  # a program that started earlier goes first, so programs finish instead of interleaving
    "shortest_remaining",  # a program's time key adds its expected remaining path: near-done and short ones first
    "attained_service",  # ATLAS: programs that received less service along their critical path go first
    "deadline",  # a tight deadline moves a program up to its latest start; a hopeless one goes behind the rest
    "next_use_hints",  # KV whose next use (steps away in the graph) is farthest is evicted first
    "tool_pins",  # a program's KV stays while its tool runs, for a TTL chosen from the tool's durations
    "reserve_next_call",  # memory for a tool-waiting program's next call is held from calls that would go after it
    "prefetch",  # a program's KV is loaded back from host memory as its tool finishes
    "dedup",  # identical temperature-0 calls across programs run once
    "prefix_first",  # a prompt waits for a running prefill that computes its prefix (fan-outs warm the prefix once)
    "cache_affinity",  # programs close in priority go longest-resident-prefix first (more fit where memory binds)
    "shared_prefix_decode",  # decodes on a common cached prefix attend it together: read once per tile, not per call
)


# Spellings of on and off accepted by ``PlanConfig.with_overrides``.
_BOOL_WORDS = {"on": True, "true": True, "yes": True, "1": True, "off": False, "false": False, "no": False, "0": False}


@dataclass(frozen=True)
class PlanConfig:
    """Feature switches and their parameters. The default is what plait serves with."""

    program_fcfs: bool = True
    shortest_remaining: bool = False  # off: it defers long programs, the tail (see ordering.py)
    attained_service: bool = False
    # Off: over program FCFS a feasible deadline never moves a program, so it acts only by demoting programs that can
    # no longer make theirs, and on the H200 that cost text2sql mean, p95 and SLO attainment alike (README, issue 8).
    deadline: bool = False
    next_use_hints: bool = True
    tool_pins: bool = True
    reserve_next_call: bool = True
    prefetch: bool = True
    dedup: bool = True
    prefix_first: bool = True
    cache_affinity: bool = True
    # Off: measured neutral on the workflow suites (a kernel-level gain at large batches only; see EngineConfig).
    shared_prefix_decode: bool = False
    # Anti-starvation (engine-level): a request waiting longer than this goes ahead of all priorities (0: off).
    max_queue_wait_s: float = 30.0
    # ATLAS: service levels are [0, q), [q, 4q), [4q, 16q), ... seconds of engine time along the critical path.
    service_quantum_s: float = 0.5
    # Cache affinity: requests whose priorities (program start, or deadline-derived start) lie within this many
    # seconds of each other are interchangeable, and the one whose prefix is on the device goes first.
    affinity_window_s: float = 2.0
    # Tool pins never last longer than this, whatever the tool's distribution says.
    max_pin_ttl_s: float = 60.0
    # Pinned KV keeps new prompts out while its tool runs; off, a pin only makes that KV the last to be evicted.
    pins_hold_admissions: bool = True
    # A pin's cost charges only the share of a step that does not grow with its batch (the engine's fitted
    # ``step_fixed_share``; pin_ttl.py): memory held keeps decode rows out, and they run later over more steps. Off:
    # the whole step is charged. On: better in every round on the H200 (react 3 of 3, text2sql 2 of 2;
    # bench/results/h200_2026-12-04g).
    pin_cost_fixed_share: bool = True
    # Not a planning feature, so the baseline keeps it: a prompt that embeds an earlier call's output carries the ids
    # that call generated, and matches their cached KV. Re-tokenized text can split into other tokens: a model's own
    # output rarely does, except at the seams, but the random tokens of dummy weights almost always do, so without it
    # benchmarks with dummy weights would recompute every generated value in both modes.
    splice_outputs: bool = True
    name: str = "plait"

    def __post_init__(self) -> None:
        if not self.max_queue_wait_s >= 0:
            raise ValueError(f"max_queue_wait_s must be >= 0 (0 = off), got {self.max_queue_wait_s}")
        if not self.service_quantum_s > 0:
            raise ValueError(f"service_quantum_s must be > 0, got {self.service_quantum_s}")
        if not self.affinity_window_s > 0:
            raise ValueError(f"affinity_window_s must be > 0, got {self.affinity_window_s}")
        if not self.max_pin_ttl_s > 0:
            raise ValueError(f"max_pin_ttl_s must be > 0, got {self.max_pin_ttl_s}")

    @classmethod
    def baseline(cls) -> PlanConfig:
        """Every feature off: request FCFS, LRU eviction, no pins, prefetch, dedup, prefix holding or aging."""
        return cls(**{name: False for name in FEATURES}, max_queue_wait_s=0.0, name="baseline")

    @classmethod
    def only(cls, feature: str) -> PlanConfig:
        """The baseline with one feature on."""
        if feature not in FEATURES:
            raise ValueError(f"unknown feature {feature!r}; choose one of {', '.join(FEATURES)}")
        extra = {"max_queue_wait_s": cls.max_queue_wait_s} if feature == "attained_service" else {}
        return replace(cls.baseline(), **{feature: True}, **extra, name=f"only {feature}")

    def without(self, feature: str) -> PlanConfig:
        if feature not in FEATURES:
            raise ValueError(f"unknown feature {feature!r}; choose one of {', '.join(FEATURES)}")
        return replace(self, **{feature: False}, name=f"{self.name} without {feature}")

    def with_overrides(self, overrides: list[str]) -> PlanConfig:
        """This config with ``FIELD=VALUE`` overrides (``attained_service=on``, ``max_queue_wait_s=10``; booleans
        take on/off/true/false/yes/no/1/0). Raises ``ValueError`` naming the bad item and what is accepted."""
        known = [f.name for f in fields(self) if f.name != "name"]
        changes: dict[str, Any] = {}
        for item in overrides:
            key, sep, text = item.partition("=")
            key = key.strip().replace("-", "_")
            if not sep or key not in known:
                raise ValueError(f"{item!r}: expected FIELD=VALUE with FIELD one of {', '.join(known)}")
            current = getattr(self, key)
            if isinstance(current, bool):
                if text.strip().lower() not in _BOOL_WORDS:
                    raise ValueError(f"{item!r}: {key} is on or off")
                changes[key] = _BOOL_WORDS[text.strip().lower()]
            else:
                try:
                    changes[key] = type(current)(text)
                except ValueError:
                    raise ValueError(f"{item!r}: {key} must be a {type(current).__name__}") from None
        return replace(self, **changes)

    @property
    def enabled(self) -> list[str]:
        return [name for name in FEATURES if getattr(self, name)]

    def engine_settings(self) -> dict[str, Any]:
        """The engine-level side of these features (``Engine.configure``)."""
        return {
            "eviction_policy": "next-use" if self.next_use_hints else "lru",
            "prefix_first": self.prefix_first,
            "max_queue_wait_s": self.max_queue_wait_s,
            "affinity_window_s": self.affinity_window_s if self.cache_affinity else 0.0,
            "shared_prefix_decode": self.shared_prefix_decode,
            "pins_hold_admissions": self.pins_hold_admissions,
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_config_fields() -> list[str]:
    return [f.name for f in fields(PlanConfig)]
