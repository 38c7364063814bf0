"""The planner: program progress in, engine priorities and KV hints out. One per executor, shared by its programs.

Hooks (called by ``ProgramExecution``; a failing hook is logged and never fails a program):
- ``program_started`` / ``program_finished``;
- ``request_options`` when an LLM node is about to submit: its priority (``ordering.py``);
- ``node_started`` / ``node_finished``: tool pins with a cost/benefit TTL, unpins, prefetch, next-use hints for the
  program and for the static prompt prefixes its pending calls will read, learned durations, the timeline.

KV hints are advice the engine may ignore; the planner never waits on the engine. It sends typed commands
(``Engine.send``: ``Pin``, ``Unpin``, ``Reserve``, ``HintNextUse``, ...) and is the engine's one feedback reader: at
each hook that needs them it takes one ``EngineFeedback`` (the latest stats, and the cache events since its last read,
each exactly once).
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from dataclasses import replace
from typing import Any

import networkx as nx

from plait.dag import LLMCall, Node, ToolCall, Workflow, calls_made_ready, steps_to_execution
from plait.engine import (
    Engine,
    EngineStats,
    ForgetProgram,
    HintNextUse,
    Pin,
    Prefetch,
    Reserve,
    Unpin,
    Unreserve,
)
from plait.engine.request import priority_key
from plait.runtime.planning.call_dedup import CallDeduplicator
from plait.runtime.planning.durations import DurationModel
from plait.runtime.planning.kv_loss import ToolWaitLoss, snapshot_horizon_s
from plait.runtime.planning.kv_reuse import SharedPrefixes, continues, continues_across
from plait.runtime.planning.next_call import NextCallGrowth
from plait.runtime.planning.ordering import call_priority
from plait.runtime.planning.pin_ttl import choose_pin_ttl
from plait.runtime.planning.plan_config import PlanConfig
from plait.runtime.planning.program_plan import PlannerCounters, ProgramPlan
from plait.runtime.request_options import RequestOptions
from plait.runtime.states import NodeRecord
from plait.runtime.timeline import Timeline, TimelineKind
from plait.semantic_vars import Template

logger = logging.getLogger(__name__)

_FAR = 1e9  # "no next use known": steps sent to clear an earlier hint
_MIN_PREFIX_CHARS = 64  # shorter static prefixes are not worth a hint
_BOUNDARY_TOKENS = 2  # a prefix's last tokens may merge with what follows when the whole prompt is tokenized


class Planner:
    def __init__(self, engine: Engine, config: PlanConfig | None = None, timeline: Timeline | None = None) -> None:
        self.engine = engine
        self.config = config or PlanConfig()
        self.timeline = timeline if timeline is not None else Timeline()
        self.durations = DurationModel()
        self.dedup = CallDeduplicator() if self.config.dedup else None
        self.counters = PlannerCounters()
        self._plans: dict[str, ProgramPlan] = {}
        self._prefix_users: dict[str, dict[str, float]] = defaultdict(dict)  # prefix -> program -> steps
        self._prefix_sent: dict[str, float] = {}  # prefix -> the steps last hinted
        self._prefix_ids: dict[str, list[int]] = {}
        self._shared_prefixes = SharedPrefixes()
        self.tool_wait_loss = ToolWaitLoss()
        self.next_call_growth = NextCallGrowth()
        # A program's own KV (its context less the prefixes live programs share) is what a pin holds and what a
        # reservation adds for an unpinned program: tracked when either is on.
        self._sizes_own_kv = self.config.tool_pins or self.config.reserve_next_call
        self._engine_stats: EngineStats | None = None  # from the last feedback read (None before the first)

    # ---- programs --------------------------------------------------------------------------------------------------

    def program_started(self, program_id: str, workflow: Workflow, *, user_priority: float = 0.0) -> None:
        plan = ProgramPlan(program_id, workflow, time.monotonic(), float(user_priority))
        if self._sizes_own_kv:
            plan.static_prefixes = frozenset(p for n in workflow.nodes.values() if (p := _static_prefix(n)))
            self._shared_prefixes.add(plan.static_prefixes)
        self._plans[program_id] = plan

    def program_finished(self, program_id: str, state: str, created_at: float, finished_at: float) -> None:
        plan = self._plans.pop(program_id, None)
        self._guard(self._read_feedback)
        if plan is None:
            return
        self._shared_prefixes.remove(plan.static_prefixes)
        self.timeline.close_open(program_id, finished_at)
        self.timeline.span(program_id, TimelineKind.PROGRAM, created_at, finished_at, args={"state": state})
        if plan.pin_until:
            self.engine.send(Unpin(program_id))
        if plan.reserved:
            self.engine.send(Unreserve(program_id))
        self.engine.send(ForgetProgram(program_id))
        for prefix in plan.prefixes:
            self._prefix_users[prefix].pop(program_id, None)
        self._send_prefix_hints(plan.prefixes)

    # ---- nodes -----------------------------------------------------------------------------------------------------

    def request_options(self, program_id: str, node: LLMCall, at: float | None = None) -> RequestOptions:
        """The engine request settings for ``node`` submitted now (or at ``at``, a ``time.monotonic()`` value):
        program id and priority."""
        plan = self._plans.get(program_id)
        if plan is None:
            return RequestOptions(program_id)
        now = time.monotonic() if at is None else at
        priority = call_priority(
            self.config, user_priority=plan.user_priority, program_started_at=plan.started_at, now=now
        )
        return RequestOptions(program_id, priority=priority)

    def node_started(self, program_id: str, node: Node) -> None:
        self._guard(self._node_started, program_id, node)

    def node_finished(self, program_id: str, node: Node, record: NodeRecord) -> None:
        self._guard(self._node_finished, program_id, node, record)

    def _node_started(self, program_id: str, node: Node) -> None:
        plan = self._plans.get(program_id)
        if plan is None:
            return
        if isinstance(node, ToolCall):
            now = time.monotonic()
            if not plan.tools_running:
                plan.waiting_since = now
            plan.tools_running[node.id] = now + self.durations.expected(node)
            if self.config.tool_pins and plan.private_tokens:
                self._pin_for_tool(plan, node)
            if self.config.reserve_next_call:
                self._reserve_next_call(plan, node)
        if self.config.next_use_hints:
            self._hint_next_use(plan)

    def _node_finished(self, program_id: str, node: Node, record: NodeRecord) -> None:
        plan = self._plans.get(program_id)
        if plan is None:
            return
        plan.finished.add(node.id)
        plan.tools_running.pop(node.id, None)
        if record.spliced_tokens:
            self.counters.spliced_calls += 1
            self.counters.spliced_tokens += record.spliced_tokens
        if isinstance(node, LLMCall):
            self._llm_finished(plan, node, record)
        elif record.run_s is not None and record.started_at is not None:
            self._tool_finished(plan, node, record)
        self._read_feedback()
        if self.config.next_use_hints:
            self._hint_next_use(plan)

    def _tool_finished(self, plan: ProgramPlan, node: ToolCall, record: NodeRecord) -> None:
        """The tool's span and duration, its KV's exposure while tools ran, the unpin and the prefetch."""
        assert record.run_s is not None and record.started_at is not None
        end = record.finished_at or record.started_at
        self.timeline.span(plan.program_id, TimelineKind.TOOL, record.started_at, end, node=node.id)
        if record.state.value == "done":
            self.durations.tools.record(node.tool, record.run_s)
        if not plan.tools_running and plan.waiting_since:  # its KV's exposure to eviction while tools ran
            now = time.monotonic()
            self.tool_wait_loss.observe_wait(sum(plan.own_kv.values()), now - plan.waiting_since, now)
            plan.waiting_since = 0.0
        if plan.pin_until and not plan.tools_running:
            # The pin's job is done: the next call finds the KV cached (its next use is now the nearest, so it is
            # evicted last) without the pin keeping other programs' prompts out while that call queues.
            self._unpin(plan, time.monotonic())
        if self.config.prefetch:
            self.engine.send(Prefetch(plan.program_id))
            self.counters.prefetches += 1

    def _llm_finished(self, plan: ProgramPlan, node: LLMCall, record: NodeRecord) -> None:
        """The unpin and the reservation's end that follow an LLM call, its KV accounting, timeline and rates."""
        if plan.pin_until:
            self._unpin(plan, time.monotonic())
        after = plan.growth_from.pop(node.id, None)
        if node.id in plan.reserved:
            plan.reserved.discard(node.id)  # its admission ended the reservation in the engine
            if record.deduplicated or record.state.value != "done":
                # The call the memory was held for never reached the engine (deduplicated, skipped after a failed
                # tool, or failed before it was submitted), so no admission ended the reservation.
                self.engine.send(Unreserve(plan.program_id, node.id))
        if record.started_at is None or record.finished_at is None:
            return
        if after is not None and record.prompt_tokens and not record.deduplicated:
            self.next_call_growth.observe(after[0], record.prompt_tokens - after[1])
        plan.context_tokens = record.prompt_tokens + record.completion_tokens
        if self._sizes_own_kv:
            self._account_own_kv(plan, node)
        self._record_llm_call(plan.program_id, node.id, record)

    def _account_own_kv(self, plan: ProgramPlan, node: LLMCall) -> None:
        """The program's own KV after ``node``: its context less a prefix live programs share, replacing the KV of
        the earlier calls it continues."""
        prefix = _static_prefix(node)
        shared_tokens = 0
        if prefix is not None and self._shared_prefixes.is_shared(prefix):
            shared_tokens = len(self._prefix_token_ids(prefix))
        plan.private_tokens = max(0, plan.context_tokens - shared_tokens)
        # A call continuing an earlier call's conversation (after it in the graph, their templates sharing a leading
        # text that holds a slot) holds that call's KV too: it replaces it.
        for earlier in nx.ancestors(plan.workflow.graph, node.id) & plan.own_kv.keys():
            before = plan.workflow.nodes[earlier]
            if isinstance(before, LLMCall) and continues(before, node):
                del plan.own_kv[earlier]
        plan.own_kv[node.id] = plan.private_tokens

    def _record_llm_call(self, program_id: str, node_id: str, record: NodeRecord) -> None:
        """A finished call's queued, prefill and decode spans, and the prefill and decode rates it shows."""
        start, end = record.started_at, record.finished_at
        assert start is not None and end is not None
        if record.deduplicated:
            self.timeline.instant(program_id, TimelineKind.DEDUPED, start, node=node_id)
        admitted = start + record.queued_s if record.queued_s is not None else start
        first = record.first_token_at or end
        prompt, completion = {"tokens": record.prompt_tokens}, {"tokens": record.completion_tokens}
        self.timeline.span(program_id, TimelineKind.QUEUED, start, admitted, node=node_id)
        self.timeline.span(program_id, TimelineKind.PREFILL, admitted, first, node=node_id, args=prompt)
        self.timeline.span(program_id, TimelineKind.DECODE, first, end, node=node_id, args=completion)
        if not record.deduplicated and record.state.value == "done":
            computed = record.prompt_tokens - record.cached_tokens  # cached tokens cost (almost) nothing to prefill
            self.durations.observe_llm(computed, first - admitted, record.completion_tokens, end - first)

    # ---- KV: pins, next-use hints ----------------------------------------------------------------------------------

    def _pin_for_tool(self, plan: ProgramPlan, node: ToolCall) -> None:
        if node.id not in plan.pin_worthy:  # static per workflow: the templates are compared once
            plan.pin_worthy[node.id] = continues_across(plan.workflow, node)
        if not plan.pin_worthy[node.id]:
            return  # nothing after the tool reads the KV before it: holding it would only keep others out
        stats = self._read_feedback()
        # Pressure: the fraction of the pool requests use; full when requests are waiting for memory.
        pressure = 1.0 if stats.waiting else min(1.0, stats.kv_slots_used / max(stats.kv_slots_total, 1))
        horizon_s = self._eviction_horizon_s(plan, stats)
        fixed_share = stats.step_fixed_share if self.config.pin_cost_fixed_share else None
        decision = choose_pin_ttl(
            self.durations.tools.distribution(node.tool),
            context_tokens=plan.private_tokens,
            reload_cost_s=self.durations.reload_cost_s(plan.private_tokens, stats.prefill_s_per_token_marginal),
            pool_slots=stats.kv_slots_total,
            memory_pressure=pressure,
            max_ttl_s=self.config.max_pin_ttl_s,
            eviction_horizon_s=horizon_s,
            step_fixed_share=1.0 if fixed_share is None else fixed_share,
        )
        if not decision.pin:
            self.counters.pins_declined += 1
            return
        now = time.monotonic()
        # The pin holds memory for the program's next call: it keeps out only prompts that call would go after.
        graph, nodes = plan.workflow.graph, plan.workflow.nodes
        after = [nodes[n] for n in graph.successors(node.id) if isinstance(nodes[n], LLMCall)]
        priority = self._next_call_priority(plan, after, node)
        self.engine.send(Pin(decision.ttl_s, plan.program_id, priority=priority))
        self.counters.pins += 1
        self.counters.pin_ttl_total_s += decision.ttl_s
        if plan.pin_span is not None:
            self.timeline.close_span(plan.pin_span, min(now, plan.pin_until))
        plan.pin_until = now + decision.ttl_s
        args = {
            "tool": node.tool,
            "ttl_s": round(decision.ttl_s, 3),
            "why": decision.reason,
            "own_tokens": plan.private_tokens,
            "eviction_horizon_s": round(horizon_s, 3) if math.isfinite(horizon_s) else None,
        }
        plan.pin_span = self.timeline.open_span(plan.program_id, TimelineKind.PINNED, now, args=args)

    def _next_call_priority(self, plan: ProgramPlan, calls: list[LLMCall], tool: ToolCall) -> Any:
        """The most important priority among ``calls`` (None when there are none), as they will be submitted when
        ``tool`` is expected back (under request FCFS a call's key is its submission time, not the tool's start)."""
        at = time.monotonic() + self.durations.expected(tool)
        priorities = [self.request_options(plan.program_id, call, at).priority for call in calls]
        return min(priorities, key=priority_key) if priorities else None

    def _reserve_next_call(self, plan: ProgramPlan, tool: ToolCall) -> None:
        """Ask the engine to hold the memory each call that ``tool`` makes ready will take when it is admitted (the
        tool's result in its prompt and its output, plus, on the first of them, the program's context unless a pin
        keeps it) out of the admissions that call would go before (``engine.reservations``), keyed by the call, so
        the reservations of parallel tools of one program stand side by side. A call that still waits for other
        unfinished nodes is not next. Called after the pin decision."""
        calls = calls_made_ready(plan.workflow, tool.id, plan.finished)
        if not calls:
            return
        pinned = plan.pin_until > time.monotonic()
        # Unpinned, its context may be evicted before the tool returns and then be computed again: hold that too,
        # once per program (parallel tools' calls continue one context; the first admitted of them brings it back).
        context_held = plan.context_reserved_by in plan.reserved
        context = 0 if pinned or context_held else plan.private_tokens
        plan.reservation_without_context = None
        for call in calls:
            plan.growth_from[call.id] = (tool.tool, plan.context_tokens)
            slots = self.next_call_growth.slots(tool.tool, call) + context
            if slots <= 0:
                continue
            priority = self._next_call_priority(plan, [call], tool)
            reserve = Reserve(plan.program_id, slots, priority, self.config.max_pin_ttl_s, call.id)
            self.engine.send(reserve)
            if pinned and plan.reservation_without_context is None and not context_held:
                plan.reservation_without_context = reserve
            if context:
                plan.context_reserved_by, context = call.id, 0
            plan.reserved.add(call.id)
            self.counters.reservations += 1
            self.counters.reserved_slots += slots

    def _eviction_horizon_s(self, plan: ProgramPlan, stats: EngineStats) -> float:
        """Seconds over which ``plan``'s KV would likely be evicted if it is not pinned. Learned from what the cache
        evicts once enough tool waits were seen (``ToolWaitLoss``). Before that, a snapshot (``snapshot_horizon_s``)
        that leaves out its own KV and that of other unpinned programs waiting on tools, needed about as soon."""
        now = time.monotonic()
        # The cache tells a tool-waiting program's KV by its next-use hint (the seconds until the tool is back):
        # without hints nothing is counted as lost, and the learned horizon would say pins never pay.
        learned = None
        if self.config.next_use_hints:
            self.tool_wait_loss.observe_lost(stats.tool_wait_tokens_lost, now)
            learned = self.tool_wait_loss.horizon_s()
        if learned is not None:
            return learned
        warm = sum(
            other.private_tokens
            for other in self._plans.values()
            if other.tools_running and other.pin_until <= now and other is not plan
        )
        return snapshot_horizon_s(stats, plan.private_tokens + warm)

    def _pin_refused(self, program_id: str, at: float) -> None:
        """The engine refused ``program_id``'s pin (beyond its budget): its context is not kept, so a reservation that
        left the context to the pin takes it in again, while the tool still runs."""
        plan = self._plans.get(program_id)
        if plan is None or not plan.pin_until:
            return
        self.counters.pins_refused += 1
        if plan.pin_span is not None:
            self.timeline.close_span(plan.pin_span, at, args={"refused": True})
        plan.pin_until, plan.pin_span = 0.0, None
        reserve = plan.reservation_without_context
        plan.reservation_without_context = None
        if reserve is not None and reserve.call_id in plan.reserved and plan.tools_running and plan.private_tokens:
            plan.context_reserved_by = reserve.call_id
            self.engine.send(replace(reserve, slots=reserve.slots + plan.private_tokens))
            self.counters.reserved_slots += plan.private_tokens

    def _unpin(self, plan: ProgramPlan, now: float) -> None:
        self.engine.send(Unpin(plan.program_id))
        if plan.pin_span is not None:
            self.timeline.close_span(plan.pin_span, min(now, plan.pin_until))
        plan.pin_until, plan.pin_span = 0.0, None

    def _hint_next_use(self, plan: ProgramPlan) -> None:
        """Steps until the program next runs an LLM call (its own KV), and until each static prefix is read. While
        the program waits on tools, also the seconds until the first of them is expected back: among programs the
        same steps away, the one whose tool returns last is evicted first (recency would pick the one that started
        its tool first, the likeliest to be back soonest)."""
        workflow = plan.workflow
        steps = steps_to_execution(workflow, plan.finished)
        pending = {n: s for n, s in steps.items() if isinstance(workflow.nodes[n], LLMCall)}
        nearest = min(pending.values(), default=_FAR)
        seconds = None
        if plan.tools_running:  # the first tool back may already unblock the next call: the earliest return
            seconds = max(0.0, min(plan.tools_running.values()) - time.monotonic())
        self.engine.send(HintNextUse(plan.program_id, steps=float(nearest), seconds=seconds))
        self.counters.next_use_hints += 1
        prefixes: dict[str, float] = {}
        for node_id, node_steps in pending.items():
            prefix = _static_prefix(workflow.nodes[node_id])
            if prefix is not None:
                prefixes[prefix] = min(prefixes.get(prefix, _FAR), float(node_steps))
        changed = set(plan.prefixes) | set(prefixes)
        for prefix in plan.prefixes.keys() - prefixes.keys():
            self._prefix_users[prefix].pop(plan.program_id, None)
        for prefix, value in prefixes.items():
            self._prefix_users[prefix][plan.program_id] = value
        plan.prefixes = prefixes
        self._send_prefix_hints(changed)

    def _send_prefix_hints(self, prefixes: Any) -> None:
        """A prefix's hint is the nearest use over every program (hints are per tree node, not per program)."""
        for prefix in list(prefixes):
            users = self._prefix_users.get(prefix)
            steps = min(users.values(), default=_FAR) if users else _FAR
            if not users:
                self._prefix_users.pop(prefix, None)
            if self._prefix_sent.get(prefix) == steps:
                continue
            ids = self._prefix_token_ids(prefix)
            if ids:
                self.engine.send(HintNextUse(prefix_token_ids=tuple(ids), steps=steps))
                self.counters.prefix_hints += 1
            if steps >= _FAR:
                self._prefix_sent.pop(prefix, None)
            else:
                self._prefix_sent[prefix] = steps

    def _prefix_token_ids(self, prefix: str) -> list[int]:
        ids = self._prefix_ids.get(prefix)
        if ids is None:
            ids = self.engine.tokenizer.encode(prefix)[:-_BOUNDARY_TOKENS]
            if len(self._prefix_ids) > 4096:
                self._prefix_ids.clear()
            self._prefix_ids[prefix] = ids
        return ids

    # ---- explicit retention (a client's KV hints) -------------------------------------------------------------------

    def retain(self, program_id: str, ttl_s: float) -> None:
        """Keep ``program_id``'s KV resident for ``ttl_s`` seconds from now (a client's ``retain`` hint): a pin like a
        tool pin, in place of any pin the planner chose, within the engine's pin budget. Applies whatever the plan:
        the client asked for it."""
        plan = self._plans.get(program_id)
        if plan is None:
            return
        now = time.monotonic()
        self.engine.send(Pin(ttl_s, program_id))
        self.counters.pins += 1
        self.counters.pin_ttl_total_s += ttl_s
        if plan.pin_span is not None:
            self.timeline.close_span(plan.pin_span, min(now, plan.pin_until))
        plan.pin_until = now + ttl_s
        args = {"ttl_s": round(ttl_s, 3), "why": "retain hint"}
        plan.pin_span = self.timeline.open_span(program_id, TimelineKind.PINNED, now, args=args)

    def release(self, program_id: str) -> None:
        """``program_id``'s KV is not needed again soon (a client's ``release`` hint): unpin it and mark it as used
        farthest in the future, so it is evicted first."""
        plan = self._plans.get(program_id)
        if plan is None:
            return
        if plan.pin_until:
            self._unpin(plan, time.monotonic())
        self.engine.send(HintNextUse(program_id, steps=_FAR))
        self.counters.next_use_hints += 1

    def prefetch(self, program_id: str) -> None:
        """Bring ``program_id``'s KV back from the host tier ahead of its next call (a client's ``prefetch`` hint)."""
        if program_id in self._plans:
            self.engine.send(Prefetch(program_id))
            self.counters.prefetches += 1

    # ---- engine feedback and reporting ------------------------------------------------------------------------------

    def _read_feedback(self) -> EngineStats:
        """Take the engine's feedback: act on its cache events (each is in one record only) and keep its stats, which
        are returned."""
        feedback = self.engine.feedback()
        self._engine_stats = feedback.stats
        for event in feedback.cache_events:
            if event.kind == "pin_refused":
                for program_id in event.programs:
                    self._pin_refused(program_id, event.at)
                continue
            kind = TimelineKind.EVICTED if event.kind == "evicted" else TimelineKind.PREFETCHED
            args: dict[str, Any] = {"tokens": event.tokens}
            if event.kind == "evicted":
                args["to_host"] = event.to_host
            for program_id in event.programs:
                if program_id in self._plans:
                    self.timeline.instant(program_id, kind, event.at, args=args)
        return feedback.stats

    def stats(self) -> dict[str, Any]:
        counters = dict(vars(self.counters))
        if self.dedup is not None:
            counters["dedup_calls"] = self.dedup.calls
            counters["dedup_shared"] = self.dedup.deduplicated
        counters["prefill_s_per_token"] = self.durations.prefill_s_per_token
        counters["prefill_overhead_s"] = self.durations.prefill.overhead_s
        engine_stats = self._engine_stats  # as of the last hook that read the engine's feedback
        counters["prefill_s_per_token_marginal"] = (
            None if engine_stats is None else engine_stats.prefill_s_per_token_marginal
        )
        counters["step_fixed_share"] = None if engine_stats is None else engine_stats.step_fixed_share
        counters["decode_s_per_token"] = self.durations.decode_s_per_token
        learned = self.tool_wait_loss.horizon_s() if self.config.next_use_hints else None
        counters["tool_wait_horizon_s"] = learned if learned is None or math.isfinite(learned) else "inf"
        counters["tool_wait_exposure_token_s"] = self.tool_wait_loss.exposure_token_s
        counters["tool_wait_lost_tokens"] = self.tool_wait_loss.lost_tokens
        counters["tools"] = self.durations.tools.summary()
        counters["next_call_prompt_growth"] = self.next_call_growth.snapshot()
        return counters

    def _guard(self, fn: Any, *args: Any) -> None:
        """Run a hook; one that raises is counted in ``counters.hook_errors`` and logged at ERROR on this module's
        logger, with its traceback (the test suite fails any test during which that happens)."""
        try:
            fn(*args)
        except Exception:  # planning is advice: a bug here must not fail a program
            self.counters.hook_errors += 1
            logger.exception("planner hook %s failed", getattr(fn, "__name__", fn))


def _static_prefix(node: Node) -> str | None:
    """The text every rendering of the node's prompt starts with (plain templates only: a chat prompt's rendered
    prefix depends on the model's chat template)."""
    prompt = getattr(node, "prompt", None)
    if not isinstance(prompt, Template):
        return None
    prefix = prompt.static_prefix
    return prefix if len(prefix) >= _MIN_PREFIX_CHARS else None
