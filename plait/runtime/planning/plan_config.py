"""Which program-level features the planner uses, and the engine policy it runs with. Each can be switched off; all
off is the baseline.

Baseline mode is a request-level engine: requests first-come first-served, an LRU prefix cache, no pins, no prefetch,
no deduplication, no holding a prompt back for a prefix another request is computing, no aging.
``PlanConfig.only(name)`` turns one feature on over the baseline (for ablations).

Each setting is defined once: planner features here, the engine's run-time policy in ``EnginePolicy`` (embedded as
``PlanConfig.engine``; the executor applies it to its engine), static engine settings in ``EngineConfig``. Three
features are engine-side and live in the policy: ``next_use_hints`` (next-use eviction; the planner sends next-use
hints exactly when the engine acts on them), ``prefix_first`` and ``cache_affinity`` (an affinity window).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from plait.engine import EnginePolicy
from plait.engine.engine_policy import DEFAULT_AFFINITY_WINDOW_S

# Every planning feature and what it does (the start-up log and ``plait info`` print these).
FEATURE_DOCS = {
    "program_fcfs": "a program that started earlier goes first, so programs finish instead of interleaving",
    "next_use_hints": "KV whose next use (steps away in the graph) is farthest is evicted first",
    "tool_pins": "a program's KV stays while its tool runs, for a TTL chosen from the tool's durations",
    "reserve_next_call": "memory for a tool-waiting program's next call is held from calls that would go after it",
    "prefetch": "a program's KV is loaded back from host memory as its tool finishes",
    "dedup": "identical temperature-0 calls across programs run once",
    "prefix_first": "a prompt waits for a running prefill that computes its prefix, so fan-outs warm it once",
    "cache_affinity": "programs close in priority go longest-resident-prefix first (more fit where memory binds)",
}
FEATURES = tuple(FEATURE_DOCS)

# The engine-side features: the policy field each switches, and its values on and off.
ENGINE_FEATURES: dict[str, tuple[str, Any, Any]] = {
    "next_use_hints": ("eviction", "next-use", "lru"),
    "prefix_first": ("prefix_first", True, False),
    "cache_affinity": ("affinity_window_s", DEFAULT_AFFINITY_WINDOW_S, 0.0),
}

# Spellings of on and off accepted by ``PlanConfig.with_overrides``.
_BOOL_WORDS = {"on": True, "true": True, "yes": True, "1": True, "off": False, "false": False, "no": False, "0": False}


@dataclass(frozen=True)
class PlanConfig:
    """Feature switches and their parameters. The default is what plait serves with."""

    program_fcfs: bool = True
    tool_pins: bool = True
    reserve_next_call: bool = True
    prefetch: bool = True
    dedup: bool = True
    # Tool pins never last longer than this, whatever the tool's distribution says.
    max_pin_ttl_s: float = 60.0
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
    # The engine's run-time policy (eviction, prefix holds, affinity, aging, pin budget; EnginePolicy). The executor
    # applies it to its engine on every path.
    engine: EnginePolicy = field(default_factory=EnginePolicy)
    name: str = "plait"

    def __post_init__(self) -> None:
        if not self.max_pin_ttl_s > 0:
            raise ValueError(f"max_pin_ttl_s must be > 0, got {self.max_pin_ttl_s}")

    @classmethod
    def baseline(cls) -> PlanConfig:
        """Every feature off: request FCFS, LRU eviction, no pins, prefetch, dedup, prefix holding or aging."""
        off = {name: False for name in FEATURES if name not in ENGINE_FEATURES}
        return cls(**off, engine=EnginePolicy.request_level(), name="baseline")

    @classmethod
    def only(cls, feature: str) -> PlanConfig:
        """The baseline with one feature on."""
        _check_feature(feature)
        return replace(cls.baseline().switched(feature, True), name=f"only {feature}")

    def without(self, feature: str) -> PlanConfig:
        _check_feature(feature)
        return replace(self.switched(feature, False), name=f"{self.name} without {feature}")

    def switched(self, feature: str, on: bool) -> PlanConfig:
        """This config with ``feature`` on or off (an engine-side feature changes its policy field)."""
        _check_feature(feature)
        if feature in ENGINE_FEATURES:
            name, on_value, off_value = ENGINE_FEATURES[feature]
            return replace(self, engine=self.engine.with_values(**{name: on_value if on else off_value}))
        return replace(self, **{feature: on})

    def uses(self, feature: str) -> bool:
        """Whether ``feature`` is on (engine-side features are read from the policy)."""
        _check_feature(feature)
        if feature in ENGINE_FEATURES:
            name, _, off_value = ENGINE_FEATURES[feature]
            return getattr(self.engine, name) != off_value
        return bool(getattr(self, feature))

    @property
    def next_use_hints(self) -> bool:
        """The planner sends next-use hints exactly when the engine evicts by them."""
        return self.engine.eviction == "next-use"

    def with_overrides(self, overrides: list[str]) -> PlanConfig:
        """This config with ``FIELD=VALUE`` overrides. FIELD is a planner field (``dedup=off``), an engine
        policy field (``max_queue_wait_s=10``, ``eviction=lru``) or a feature (``cache_affinity=off``); booleans take
        on/off/true/false/yes/no/1/0. Raises ``ValueError`` naming the bad item and what is accepted."""
        plan_fields = {f.name: f for f in fields(self) if f.name not in ("name", "engine")}
        policy_fields = {f.name: f for f in fields(self.engine)}
        known = sorted({*plan_fields, *policy_fields, *FEATURES})
        plan = self
        for item in overrides:
            key, sep, text = item.partition("=")
            key = key.strip().replace("-", "_").removeprefix("engine.")
            if not sep or key not in known:
                raise ValueError(f"{item!r}: expected FIELD=VALUE with FIELD one of {', '.join(known)}")
            if key in ENGINE_FEATURES:
                plan = plan.switched(key, _parse(item, key, text, True))
            elif key in plan_fields:
                plan = replace(plan, **{key: _parse(item, key, text, getattr(plan, key))})
            else:
                value = _parse(item, key, text, getattr(plan.engine, key))
                try:
                    plan = replace(plan, engine=plan.engine.with_values(**{key: value}))
                except ValueError as error:  # InvalidRequestError: names the field and the accepted values
                    raise ValueError(f"{item!r}: {error}") from None
        return plan

    @classmethod
    def parse(cls, items: list[str]) -> PlanConfig:
        """A plan from ``--plan`` items: an optional first ``baseline`` (or ``plait``, the default) to start from,
        then ``FIELD=VALUE`` overrides (``with_overrides``). Raises ``ValueError`` naming the bad item."""
        items = [item.strip() for item in items if item.strip()]
        start = cls()
        if items and "=" not in items[0]:
            if items[0] not in ("plait", "baseline"):
                raise ValueError(f"{items[0]!r}: expected 'plait', 'baseline' or FIELD=VALUE")
            start = cls.baseline() if items[0] == "baseline" else start
            items = items[1:]
        return start.with_overrides(items) if items else start

    @property
    def enabled(self) -> list[str]:
        return [name for name in FEATURES if self.uses(name)]

    def describe(self) -> list[str]:
        """One line per enabled feature, with the settings it runs with (what a server logs at start-up)."""
        engine = self.engine
        settings = {
            "tool_pins": f"at most {self.max_pin_ttl_s:g} s, within {engine.pin_budget_fraction:.0%} of the KV pool, "
            f"pins hold admissions {'on' if engine.pins_hold_admissions else 'off'}",
            "prefix_first": f"prefixes of at least {engine.prefix_hold_min_tokens} tokens",
            "cache_affinity": f"window {engine.affinity_window_s:g} s",
        }
        lines = []
        for name in self.enabled:
            extra = f" ({settings[name]})" if name in settings else ""
            lines.append(f"{name}: {FEATURE_DOCS[name]}{extra}")
        lines.append(f"eviction: {engine.eviction}")
        if engine.max_queue_wait_s > 0:
            lines.append(f"anti-starvation: a request waiting longer than {engine.max_queue_wait_s:g} s goes first")
        else:
            lines.append("anti-starvation: off")
        return lines

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_feature(feature: str) -> None:
    if feature not in FEATURES:
        raise ValueError(f"unknown feature {feature!r}; choose one of {', '.join(FEATURES)}")


def _parse(item: str, key: str, text: str, current: Any) -> Any:
    """``text`` as a value of ``current``'s type."""
    if isinstance(current, bool):
        if text.strip().lower() not in _BOOL_WORDS:
            raise ValueError(f"{item!r}: {key} is on or off")
        return _BOOL_WORDS[text.strip().lower()]
    try:
        return type(current)(text.strip())
    except ValueError:
        raise ValueError(f"{item!r}: {key} must be a {type(current).__name__}") from None
