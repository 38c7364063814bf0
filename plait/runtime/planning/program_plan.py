"""What the planner keeps per running program, and its counters."""

from __future__ import annotations

from dataclasses import dataclass, field

from plait.dag import Workflow
from plait.engine import Reserve


@dataclass
class ProgramPlan:
    """What the planner knows about one running program."""

    program_id: str
    workflow: Workflow
    started_at: float
    user_priority: float
    finished: set[str] = field(default_factory=set)
    context_tokens: int = 0  # the KV its last LLM call left: prompt + completion
    private_tokens: int = 0  # ... less the prompt prefix other live programs share (kv_reuse.SharedPrefixes)
    static_prefixes: frozenset[str] = frozenset()  # the static prompt prefixes its calls start with
    pin_until: float = 0.0
    pin_span: int | None = None
    # Calls with a reservation the engine may still hold (it ends one itself when that call's request is admitted;
    # the planner takes it back when the call never reaches the engine, and all of them at the program's end).
    reserved: set[str] = field(default_factory=set)
    context_reserved_by: str | None = None  # the call whose reservation holds the program's context as well
    # The last reservation sent, when it left the program's context out because a pin kept it: a pin the engine
    # refuses brings the context back into the reservation.
    reservation_without_context: Reserve | None = None
    # Calls after a running tool -> (that tool, the program's context when it started): their prompt's growth.
    growth_from: dict[str, tuple[str, int]] = field(default_factory=dict)
    pin_worthy: dict[str, bool] = field(default_factory=dict)  # per tool: does the call after it read this KV
    prefixes: dict[str, float] = field(default_factory=dict)  # static prefix -> steps to its next use here
    tools_running: dict[str, float] = field(default_factory=dict)  # tool node -> when it is expected to return
    waiting_since: float = 0.0  # when its first running tool started (exposure of its KV: ToolWaitLoss)
    # Its own KV per finished LLM call that no later call continues (a fan-out's branches each hold theirs): what the
    # cache counts as the program's when it evicts or spares it.
    own_kv: dict[str, int] = field(default_factory=dict)


@dataclass
class PlannerCounters:
    pins: int = 0
    pins_declined: int = 0  # the cost/benefit said no
    reservations: int = 0
    reserved_slots: int = 0  # summed over reservations
    pin_ttl_total_s: float = 0.0
    prefetches: int = 0
    next_use_hints: int = 0
    prefix_hints: int = 0
    pins_refused: int = 0  # pins the engine refused beyond its budget (learned from its cache events)
    spliced_calls: int = 0  # LLM calls whose prompts carried an earlier call's generated ids
    spliced_tokens: int = 0
    hook_errors: int = 0
