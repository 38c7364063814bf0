"""One OpenAI request's run on the engine: deltas in, per-sample updates out (content, tool calls, log-probabilities).

Shared by the whole and the streamed responses of both endpoints. ``Generation.updates()`` iterates
``Engine.generate``; leaving it early (an error, a dropped client, cancellation) aborts the engine request, which frees
its KV. The admission reserved for the request is released exactly once by ``Generation.close()``, which the routes
call on every path; ``close`` also records the request's metrics.

A time limit (``time_limit_s``: the server's ``max_request_time_s`` or the request's ``deadline_s``) bounds the wait for
each next delta by what is left of it. When it passes, the engine request is aborted and every unfinished sample ends
with ``finish_reason="length"``, as if ``max_tokens`` had cut it: clients handle that everywhere, whereas an error
status (408, 504) makes the ``openai`` client send the whole request again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import anyio

from plait.engine import Engine, EngineStoppedError, GenerateDelta, GenerateRequest, TokenLogprob, ToolCall
from plait.server.errors import APIError
from plait.server.openai.params import GenerationPlan
from plait.server.openai.programs import ProgramCall
from plait.server.openai.tool_stream import ToolCallStream
from plait.server.state import ServerState
from plait.server.tenants import Admission

logger = logging.getLogger("plait.server")


class GenerationFailed(Exception):
    """The engine ended a sample with ``error`` (or ``abort``: the engine is shutting down)."""

    def __init__(self, message: str, status: int = 500, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.field = field

    def api_error(self) -> APIError:
        return APIError(self.status, str(self), field=self.field)


@dataclass
class SampleUpdate:
    """What one engine delta adds to a sample, in client terms."""

    index: int
    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None  # stop | length | tool_calls, on the sample's last update


@dataclass
class Sample:
    """Everything a sample produced so far (for whole responses and usage)."""

    index: int
    parser: ToolCallStream | None
    content: list[str] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    completion_tokens: int = 0
    finish_reason: str | None = None

    def apply(self, delta: GenerateDelta) -> SampleUpdate:
        text, calls = delta.text, []
        if self.parser is not None:
            text, calls = self.parser.feed(delta.text)
            if delta.finish_reason is not None:
                rest, more = self.parser.finish()
                text, calls = text + rest, calls + more
        self.content.append(text)
        self.tool_calls += calls
        self.logprobs += delta.logprobs or []
        self.token_ids += delta.token_ids
        self.completion_tokens = delta.completion_tokens
        update = SampleUpdate(self.index, text, calls, list(delta.logprobs or []))
        if delta.finish_reason is not None:
            reason = delta.finish_reason
            self.finish_reason = "tool_calls" if reason == "stop" and self.tool_calls else reason
            update.finish_reason = self.finish_reason
        return update

    @property
    def text(self) -> str:
        return "".join(self.content)


class Generation:
    """Runs ``request`` for ``plan`` on ``state``'s engine; ``admission`` is released by ``close()``."""

    def __init__(
        self,
        state: ServerState,
        plan: GenerationPlan,
        request: GenerateRequest,
        admission: Admission,
        prompt_tokens: int,
        time_limit_s: float | None = None,
        program_call: ProgramCall | None = None,
    ) -> None:
        self.state = state
        self.program_call = program_call  # its program's call: ended by close()
        self.engine: Engine = state.engine
        self.plan = plan
        self.request = request
        self.admission = admission
        self.prompt_tokens = prompt_tokens
        self.cached_tokens = 0
        self.samples = {
            i: Sample(
                i,
                ToolCallStream(plan.tool_choice, plan.single_tool_call, plan.json_answer) if plan.tool_choice else None,
            )
            for i in range(plan.sampling.n)
        }
        self.started_at = time.perf_counter()
        self.first_token_at: float | None = None
        self.queued_s: float | None = None
        self.time_limit_s = time_limit_s
        self._deadline = None if time_limit_s is None else time.monotonic() + time_limit_s
        self._closed = False

    @property
    def completion_tokens(self) -> int:
        return sum(s.completion_tokens for s in self.samples.values())

    async def updates(self) -> AsyncIterator[SampleUpdate]:
        """The samples' updates in the order the engine produced them; raises ``GenerationFailed``. A program's
        deterministic call identical to one of the same tenant that runs or ran shares its output (the plan's
        ``dedup``, as for workflows' calls)."""
        dedup = self.state.executor.planner.dedup
        if dedup is not None and self.program_call is not None:
            deltas, shared = dedup.generate(self.engine, self.request, scope=self.program_call.program.tenant)
            self.program_call.record.deduplicated = shared
        else:
            deltas = self.engine.generate(self.request)
        try:
            while True:
                try:
                    delta = await self._next_delta(deltas)
                except StopAsyncIteration:
                    return
                except TimeoutError:  # the engine request was aborted on the way (its generator was cancelled)
                    for update in self._stop_at_time_limit():
                        yield update
                    return
                if delta.finish_reason in ("error", "abort"):
                    raise self._failure(delta)
                if delta.token_ids and self.first_token_at is None:
                    self.first_token_at = time.perf_counter()
                if delta.prompt_tokens:
                    self.prompt_tokens = delta.prompt_tokens
                if self.queued_s is None and delta.queued_s is not None:
                    self.queued_s = delta.queued_s
                self.cached_tokens = max(self.cached_tokens, delta.cached_tokens)
                yield self.samples[delta.index].apply(delta)
        except EngineStoppedError as error:
            raise GenerationFailed(str(error), 503) from error
        finally:
            await deltas.aclose()  # leaving early (error, disconnect, cancellation) aborts the engine request

    async def _next_delta(self, deltas: AsyncIterator[GenerateDelta]) -> GenerateDelta:
        """The next delta; ``TimeoutError`` when the time limit passes first. The scope wraps no ``yield``, so the
        cancellation it delivers lands in the engine's generator (which then aborts the request)."""
        if self._deadline is None:
            return await anext(deltas)
        with anyio.fail_after(max(0.0, self._deadline - time.monotonic())):
            return await anext(deltas)

    def _stop_at_time_limit(self) -> list[SampleUpdate]:
        """End every unfinished sample with ``length`` (the text it has so far is what the client gets)."""
        logger.info("%s stopped at its time limit of %g s", self.request.request_id, self.time_limit_s)
        ended = []
        for sample in self.samples.values():
            if sample.finish_reason is None:
                delta = GenerateDelta(
                    self.request.request_id, sample.index, "", [], finish_reason="length",
                    completion_tokens=sample.completion_tokens,
                )  # fmt: skip
                ended.append(sample.apply(delta))
        return ended

    def _failure(self, delta: GenerateDelta) -> GenerationFailed:
        if delta.finish_reason == "abort":
            return GenerationFailed("the request was aborted: the server is shutting down", 503)
        constraints = self.plan.sampling.constraint_fields()
        if self.first_token_at is None and constraints:  # the constraint's grammar failed to compile
            field = self.plan.api_field(constraints[0])
            return GenerationFailed(f"cannot compile the constraint: {delta.error}", 400, field)
        return GenerationFailed(f"generation failed: {delta.error}")

    def _end_program_call(self, status: int) -> None:
        """Tell the program how its call went: the engine's counts and times, and the reply (first sample)."""
        call = self.program_call
        assert call is not None
        record, now = call.record, time.monotonic()
        record.prompt_tokens, record.cached_tokens = self.prompt_tokens, self.cached_tokens
        record.completion_tokens = self.completion_tokens
        record.queued_s = self.queued_s
        if self.first_token_at is not None:
            record.first_token_at = now - (time.perf_counter() - self.first_token_at)
        first = self.samples[0]
        call.finish(
            status=status,
            reply_text=first.text,
            reply_calls=[{"name": c.name, "arguments": c.arguments} for c in first.tool_calls],
            reply_ids=first.token_ids,
            finish_reason=first.finish_reason,
        )

    def close(self, status: int) -> None:
        """Release the admission and count the request (metrics of finished generations only once). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.admission.release()
        if self.program_call is not None:
            self._end_program_call(status)
        metrics = self.state.metrics
        metrics.requests.labels(self.plan.endpoint, str(status)).inc()
        if status == 200:
            now = time.perf_counter()
            metrics.observe_generation(
                self.plan.endpoint,
                ttft_s=None if self.first_token_at is None else self.first_token_at - self.started_at,
                e2e_s=now - self.started_at,
                completion_tokens=self.completion_tokens,
                prompt_tokens=self.prompt_tokens,
            )
