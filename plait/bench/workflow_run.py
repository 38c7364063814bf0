"""One run of a workflow suite in one planning mode, on a shared engine: open-loop arrivals, measured outcomes.

Each mode starts from the same state: the prefix cache is flushed and a fresh executor with the mode's planner (which
applies the mode's engine policy, as every executor does) runs a freshly built copy of the suite (workflows hold
their variables' values, so a copy is never reused across modes).
"""

from __future__ import annotations

import asyncio
import dataclasses
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from plait.bench.engine_counters import engine_counters_delta, wait_engine_idle
from plait.bench.workflow_suites import Suite
from plait.bench.workflow_suites.common import percentile
from plait.dag import Workflow, node_spec
from plait.engine import Engine
from plait.runtime import Executor, ProgramExecution, ProgramState
from plait.runtime.journal import Journal
from plait.runtime.journal_rows import ProgramRow
from plait.runtime.planning import PlanConfig
from plait.runtime.program_journal import ProgramJournal


@dataclass
class ProgramOutcome:
    tag: str
    state: str
    jct_s: float | None  # arrival to end; None if it did not finish in time
    deadline_s: float | None
    longest_queue_s: float  # the longest any of its engine requests waited before admission
    error: str | None = None  # why a failed program failed
    first_token_s: float | None = None  # arrival to the first token of any of its LLM calls (a late arrival's wait)

    @property
    def met_slo(self) -> bool | None:
        if self.deadline_s is None:
            return None
        return self.jct_s is not None and self.state == "done" and self.jct_s <= self.deadline_s


@dataclass
class ModeResult:
    mode: str
    config: dict[str, Any]
    outcomes: list[ProgramOutcome]
    wall_s: float
    engine: dict[str, float]
    planner: dict[str, Any]
    timeline: Any = field(default=None, repr=False)
    check: dict[str, Any] | None = None  # the suite's check of its programs after the run (``Suite.check``)

    @property
    def first_error(self) -> str | None:
        """Why the first failed program failed (None when none did)."""
        return next((o.error for o in self.outcomes if o.error), None)

    def metrics(self) -> dict[str, Any]:
        done = [o.jct_s for o in self.outcomes if o.state == "done" and o.jct_s is not None]
        slo = [o.met_slo for o in self.outcomes if o.met_slo is not None]
        first_tokens = [o.first_token_s for o in self.outcomes if o.first_token_s is not None]
        result: dict[str, Any] = {
            "programs": len(self.outcomes),
            "completed": len(done),
            "failed": sum(o.state not in ("done",) for o in self.outcomes),
            "mean_jct_s": statistics.fmean(done) if done else None,
            "p50_jct_s": _percentile(done, 50),
            "p95_jct_s": _percentile(done, 95),
            "max_jct_s": max(done) if done else None,
            "programs_per_min": 60.0 * len(done) / self.wall_s if self.wall_s > 0 else 0.0,
            "slo_attainment": sum(slo) / len(slo) if slo else None,
            "longest_queue_wait_s": max((o.longest_queue_s for o in self.outcomes), default=0.0),
            "p50_first_token_s": _percentile(first_tokens, 50),
            "p99_first_token_s": _percentile(first_tokens, 99),
            **self.engine,
        }
        if self.check is not None:
            result["check_passed"], result["check_failed"] = self.check["passed"], self.check["failed"]
        for tag in sorted({o.tag for o in self.outcomes if o.tag}):
            tagged = [o.jct_s for o in self.outcomes if o.tag == tag and o.jct_s is not None]
            result[f"mean_jct_s[{tag}]"] = statistics.fmean(tagged) if tagged else None
        return result


def _percentile(values: list[float], q: float) -> float | None:
    return percentile(values, q / 100) if values else None


async def _start_journaled(
    executor: Executor, journal: Journal, workflow: Workflow, program_id: str
) -> ProgramExecution:
    """Start ``workflow`` durably: committed as accepted (with its nodes' specs) before its first node runs."""
    program = executor.prepare(workflow, program_id=program_id, journal=ProgramJournal(journal, program_id))
    spec = {"name": workflow.name, "nodes": [msgspec.to_builtins(node_spec(node)) for node in workflow.nodes.values()]}
    await journal.accept(ProgramRow(id=program_id, kind="workflow", name=workflow.name, spec=spec))
    program.start()
    return program


def _longest_queue(program: ProgramExecution) -> float:
    return max((r.queued_s or 0.0 for r in program.nodes.values()), default=0.0)


def _checked(suite: Suite, outcomes: list[ProgramOutcome]) -> dict[str, Any] | None:
    """The suite's check of its programs, where it has one. A program that failed (rather than ran out of time) did
    not run all it had to: it counts as failing the check, not as incomplete."""
    if suite.check is None:
        return None
    check = suite.check()
    crashed = min(sum(o.state == "failed" for o in outcomes), check["incomplete"])
    return {**check, "failed": check["failed"] + crashed, "incomplete": check["incomplete"] - crashed}


def _first_token(program: ProgramExecution) -> float | None:
    """Seconds from the program's arrival to the first token any of its LLM calls produced."""
    firsts = [r.first_token_at for r in program.nodes.values() if r.kind == "llm" and r.first_token_at is not None]
    return min(firsts) - program.record.created_at if firsts else None


async def run_mode(
    engine: Engine,
    build: Callable[[], Suite],
    config: PlanConfig,
    *,
    time_limit_s: float,
    on_program_done: Callable[[], None] | None = None,
    journal_path: Path | None = None,
) -> ModeResult:
    """Run a fresh copy of the suite under ``config``; programs still running at ``time_limit_s`` are cancelled and
    reported as not finished (``state == 'timeout'``). ``journal_path``: every program is durable there, as a
    ``plait serve`` workflow is: its acceptance (its nodes' specs) is committed before it starts, every node's outcome
    before its dependents run, and its end."""
    suite = build()
    journal = None if journal_path is None else Journal(journal_path)
    await engine.flush_prefix_cache()
    executor = Executor(engine, suite.tools, plan=config)
    before = engine.stats()
    start = time.monotonic()
    outcomes: list[ProgramOutcome | None] = [None] * len(suite.programs)

    async def one(index: int) -> None:
        entry = suite.programs[index]
        await asyncio.sleep(max(0.0, start + entry.arrival_s - time.monotonic()))
        if journal is None:
            program = executor.start(entry.workflow)
        else:
            program = await _start_journaled(executor, journal, entry.workflow, f"{entry.tag}-{index}")
        try:
            await program.wait()
        except Exception:  # a failed program is an outcome, not a crash of the benchmark
            pass
        finally:
            state = program.state.value if program.state is not ProgramState.RUNNING else "timeout"
            if isinstance(program.record.finished_at, float) and state == "done":
                jct = program.record.finished_at - program.record.created_at
            else:
                jct = None
            error = str(program.error) if program.error is not None and state == "failed" else None
            outcomes[index] = ProgramOutcome(
                entry.tag, state, jct, entry.deadline_s, _longest_queue(program), error, _first_token(program)
            )
            if journal is not None and program.state.finished:
                await journal.finish(program.program_id, program.state.value, error=error)
            if on_program_done is not None:
                on_program_done()

    tasks = [asyncio.ensure_future(one(i)) for i in range(len(suite.programs))]
    _, pending = await asyncio.wait(tasks, timeout=time_limit_s)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for program in executor.running():
        program.cancel()
    wall = time.monotonic() - start
    if journal is not None:
        journal.close()
    await wait_engine_idle(engine)
    results = [o if o is not None else ProgramOutcome("", "timeout", None, None, 0.0) for o in outcomes]
    for index, outcome in enumerate(results):
        if outcome.state == "cancelled":  # cancelled by the time limit
            results[index] = dataclasses.replace(outcome, state="timeout", jct_s=None)
    check = _checked(suite, results)
    return ModeResult(
        config.name,
        config.to_dict(),
        results,
        wall,
        engine_counters_delta(before, engine.stats()),
        executor.planner.stats(),
        executor.planner.timeline,
        check,
    )
