"""Replaying on an engine in this process, in one plan mode (``plait`` or ``baseline``).

Each mode starts from the same state: the prefix cache is flushed and the mode's executor applies its engine policy
(``PlanConfig.engine``). Request-level traces go straight to the engine, first-come
first-served in both modes (a lone request has no program to plan); agent sessions run as programs on an
``Executor`` with the mode's planner, so program-level ordering, tool-aware KV pins and prefetch apply in plait mode.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from plait.bench.engine_counters import engine_counters_delta, wait_engine_idle
from plait.bench.replay.agent_programs import make_gap_tool, session_workflow, tool_name_for
from plait.bench.replay.records import AgentSession, RequestRecord, SessionRecord
from plait.engine import Engine, GenerateRequest, SamplingParams
from plait.runtime import Executor, ProgramState
from plait.runtime.planning import PlanConfig


class InProcessTarget:
    """An ``Engine`` in this process, run in the plan mode ``plan``."""

    def __init__(self, engine: Engine, plan: PlanConfig) -> None:
        self.engine = engine
        self.plan = plan
        self.mode = plan.name
        self.label = f"in-process ({plan.name})"
        self.executor: Executor | None = None
        self._before: Any = None
        self.notes: list[str] = []

    @property
    def max_context(self) -> int:
        return self.engine.core.max_context

    def count_tokens(self, text: str) -> int:
        return len(self.engine.tokenizer.encode(text, add_special_tokens=False))

    async def start(self, sessions: Sequence[AgentSession] = ()) -> None:
        """Flush the prefix cache, switch the engine to this mode, and make the executor (with one environment tool
        per agent kind in ``sessions``)."""
        await self.engine.flush_prefix_cache()
        tools = [make_gap_tool(name) for name in sorted({tool_name_for(s.source) for s in sessions})]
        self.executor = Executor(self.engine, tools, plan=self.plan)
        self._before = self.engine.stats()

    async def request(self, record: RequestRecord, prompt: list[int] | str, clock: float) -> None:
        """Run one request to its forced length, filling ``record`` (times relative to ``clock``)."""
        sampling = SamplingParams(max_tokens=record.output_tokens_target, temperature=0.0, ignore_eos=True)
        request = GenerateRequest(sampling=sampling)
        if isinstance(prompt, str):
            request.prompt = prompt
        else:
            request.prompt_token_ids = prompt
        record.sent_s = time.monotonic() - clock
        try:
            async for delta in self.engine.generate(request):
                if delta.token_ids and record.first_token_s is None:
                    record.first_token_s = time.monotonic() - clock
                record.output_tokens = delta.completion_tokens
                if delta.finish_reason is not None:
                    record.finished_s = time.monotonic() - clock
                    record.ok = delta.finish_reason in ("stop", "length")
                    record.error = delta.error or ("" if record.ok else delta.finish_reason)
        except Exception as error:  # a failed request is a measurement, not a crash of the replay
            record.error = f"{type(error).__name__}: {error}"

    async def session(
        self,
        record: SessionRecord,
        calls: list[RequestRecord],
        session: AgentSession,
        prompts: Sequence[str],
        clock: float,
    ) -> None:
        """Run the session as a program; fill ``record`` and its calls' records from the program's node records."""
        assert self.executor is not None, "start() first"
        workflow = session_workflow(session, [c.output_tokens_target for c in calls], prompts)
        program = self.executor.start(workflow)
        try:
            await program.wait()
        except Exception as error:
            record.error = f"{type(error).__name__}: {error}"
        finally:
            if not program.state.finished:  # the replay was stopped
                program.cancel()
            _fill_from_program(record, calls, program, clock)

    async def kv_usage(self) -> float | None:
        return self.engine.stats().kv_usage

    async def finish(self) -> dict[str, Any]:
        """Wait for aborted work to leave; the engine's counters over this mode's run, plus the planner's."""
        await wait_engine_idle(self.engine)
        counters: dict[str, Any] = engine_counters_delta(self._before, self.engine.stats())
        if self.executor is not None:
            for program in self.executor.running():
                program.cancel()
            counters["planner"] = self.executor.planner.stats()
        return counters

    async def close(self) -> None:
        return None


def _fill_from_program(record: SessionRecord, calls: list[RequestRecord], program: Any, clock: float) -> None:
    def rel(value: float | None) -> float | None:
        return None if value is None else value - clock

    completed = 0
    for i, call in enumerate(calls):
        node = program.nodes.get(f"call_{i}")
        if node is None:
            call.error = call.error or "not reached"
            continue
        call.sent_s, call.first_token_s = rel(node.started_at), rel(node.first_token_at)
        call.finished_s = rel(node.finished_at)
        call.input_tokens = node.prompt_tokens or call.input_tokens
        call.output_tokens = node.completion_tokens
        call.ok = node.state.value == "done"
        call.error = "" if call.ok else (node.error or node.state.value)
        completed += call.ok
    record.completed_calls = completed
    record.ok = program.state is ProgramState.DONE and completed == len(calls)
    finished_at = program.record.finished_at
    record.finished_s = rel(finished_at) if isinstance(finished_at, float) else None
    if not record.ok and not record.error:
        record.error = program.state.value
