"""One replay of a trace on one target: open-loop arrivals at the trace's times, measured per request and session.

Every request (or agent session) is sent at its arrival time whatever happened before (open loop), so a slow target
builds a queue instead of slowing the arrivals. KV usage is sampled while it runs. The run ends when everything has
finished, when ``stop`` is set (Ctrl-C) or at ``time_limit_s``; work still running is then cancelled, its records
say so, and the run is marked ``interrupted``: what was measured is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any, Protocol

from plait.bench.replay.records import ModeRun, RequestRecord, SessionRecord, Trace
from plait.bench.replay.replay_inputs import ReplayInputs

KV_SAMPLE_PERIOD_S = 0.25
MAX_KV_SAMPLES = 4000


class ReplayTarget(Protocol):
    """What a replay runs on: ``InProcessTarget`` or ``HttpTarget``."""

    mode: str
    label: str
    notes: list[str]

    async def start(self, sessions: Any = ()) -> None: ...
    async def request(self, record: RequestRecord, prompt: list[int] | str, clock: float) -> None: ...
    async def session(
        self, record: SessionRecord, calls: list[RequestRecord], session: Any, prompts: Any, clock: float
    ) -> None: ...
    async def kv_usage(self) -> float | None: ...
    async def finish(self) -> dict[str, Any]: ...
    async def close(self) -> None: ...


async def run_replay(
    trace: Trace,
    inputs: ReplayInputs,
    target: ReplayTarget,
    *,
    stop: asyncio.Event | None = None,
    time_limit_s: float | None = None,
    on_done: Callable[[], None] | None = None,
) -> ModeRun:
    """Replay ``trace`` (with ``inputs``: what to send) on ``target``; the measured ``ModeRun``."""
    stop = stop or asyncio.Event()
    run = ModeRun(mode=target.mode, target=target.label)
    await target.start(trace.sessions)
    clock = time.monotonic()
    if trace.is_agent:
        tasks = _session_tasks(trace, inputs, target, run, clock, on_done)
    else:
        tasks = _request_tasks(inputs, target, run, clock, on_done)
    sampler = asyncio.ensure_future(_sample_kv(target, run, clock))
    try:
        run.interrupted = await _wait(tasks, stop, None if time_limit_s is None else clock + time_limit_s)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        run.wall_s = time.monotonic() - clock
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        for record in run.requests:
            if not record.ok and not record.error:
                record.error = "interrupted" if run.interrupted else "no result"
        for session in run.sessions:
            if not session.ok and not session.error:
                session.error = "interrupted" if run.interrupted else "no result"
        run.engine = await target.finish()
        run.notes = [*inputs.notes, *target.notes]
        await target.close()
    return run


async def _wait(tasks: list[asyncio.Future[Any]], stop: asyncio.Event, deadline: float | None) -> bool:
    """Until every task is done (False), or ``stop`` is set or ``deadline`` passes (True)."""
    pending: set[asyncio.Future[Any]] = set(tasks)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        while pending:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            _, waiting = await asyncio.wait(pending | {stopper}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            pending = {task for task in waiting if task is not stopper}
            if stop.is_set() or (deadline is not None and time.monotonic() >= deadline):
                return bool(pending)
        return False
    finally:
        stopper.cancel()


async def _at(clock: float, arrival_s: float) -> None:
    await asyncio.sleep(max(0.0, clock + arrival_s - time.monotonic()))


def _request_tasks(
    inputs: ReplayInputs, target: ReplayTarget, run: ModeRun, clock: float, on_done: Callable[[], None] | None
) -> list[asyncio.Future[Any]]:
    async def one(record: RequestRecord) -> None:
        await _at(clock, record.arrival_s)
        try:
            await target.request(record, inputs.prompt(record.index), clock)
        finally:
            if on_done is not None:
                on_done()

    for index, request in enumerate(inputs.requests):
        run.requests.append(RequestRecord(index, request.arrival_s, request.input_tokens, request.output_tokens))
    return [asyncio.ensure_future(one(record)) for record in run.requests]


def _session_tasks(
    trace: Trace,
    inputs: ReplayInputs,
    target: ReplayTarget,
    run: ModeRun,
    clock: float,
    on_done: Callable[[], None] | None,
) -> list[asyncio.Future[Any]]:
    async def one(index: int, record: SessionRecord, calls: list[RequestRecord]) -> None:
        await _at(clock, record.arrival_s)
        try:
            await target.session(record, calls, trace.sessions[index], inputs.session_prompts[index], clock)
        finally:
            if on_done is not None:
                on_done()

    tasks = []
    for index, session in enumerate(trace.sessions):
        record = SessionRecord(session.session_id, session.arrival_s, len(session.calls))
        calls = []
        for call, prompt, output in zip(
            session.calls, inputs.session_prompts[index], inputs.session_outputs[index], strict=True
        ):
            calls.append(
                RequestRecord(
                    len(run.requests) + len(calls),
                    session.arrival_s + call.offset_s,
                    max(1, len(prompt) // 4),  # replaced by the target's count when it reports one
                    output,
                    session_id=session.session_id,
                )
            )
        run.sessions.append(record)
        run.requests.extend(calls)
        tasks.append(asyncio.ensure_future(one(index, record, calls)))
    return tasks


async def _sample_kv(target: ReplayTarget, run: ModeRun, clock: float) -> None:
    period = KV_SAMPLE_PERIOD_S
    while True:
        value = await target.kv_usage()
        if value is not None:
            run.kv_usage.append((time.monotonic() - clock, value))
            if len(run.kv_usage) >= MAX_KV_SAMPLES:  # long runs: keep every other sample, sample half as often
                run.kv_usage = run.kv_usage[::2]
                period *= 2
        await asyncio.sleep(period)
