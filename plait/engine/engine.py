"""The async engine facade: ``generate`` streams deltas, ``send`` passes a command, ``feedback`` reports.

The step loop runs in its own thread (``EngineCore`` is single-threaded). Callers talk to it through one queue of typed
commands (``commands.py``), applied in order by one dispatch (``_apply``) before the next step; deltas come back to
each caller's event loop with ``call_soon_threadsafe``, and once per step the loop publishes its stats and cache events
(``engine_feedback.py``). Validation and tokenization run in the caller's thread, so a bad request or command raises at
once and never reaches the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, assert_never

from plait.cache import CacheEvent
from plait.engine.commands import (
    ENGINE_COMMANDS,
    Abort,
    AddRequest,
    EngineCommand,
    ExportPrefix,
    FlushPrefixCache,
    ForgetProgram,
    HintNextUse,
    ImportPrefix,
    Pin,
    Prefetch,
    Reserve,
    ResidentPrefix,
    SetPolicy,
    Stop,
    Unpin,
    Unreserve,
)
from plait.engine.engine_config import EngineConfig
from plait.engine.engine_core import EngineCore, EngineStats
from plait.engine.engine_feedback import EngineFeedback, FeedbackChannel
from plait.engine.engine_policy import EnginePolicy
from plait.engine.errors import EngineError, EngineStoppedError, InvalidRequestError
from plait.engine.grammar import choice_score, scoring_requests
from plait.engine.model_config import ModelConfig
from plait.engine.request import ChoiceScore, Completion, GenerateDelta, GenerateRequest, GenerateResult
from plait.engine.sequence import RequestState

logger = logging.getLogger(__name__)


@dataclass
class _Sink:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[GenerateDelta | None]
    open_samples: int

    def put(self, item: GenerateDelta | None) -> bool:
        """Hand ``item`` to the caller's loop; False when that loop is gone (the caller cannot be reached)."""
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the caller's event loop is closed
            return False
        return True


def _put_all(items: list[tuple[_Sink, GenerateDelta]]) -> None:
    """On the caller's loop: queue one step's deltas for their streams."""
    for sink, delta in items:
        sink.queue.put_nowait(delta)


_OFF_LOOP_CHARS = 2048  # prompts from this long are tokenized on the tokenizer thread (~1 ms and up)


class Engine:
    """Thread-backed async engine. Use as an async context manager, or call ``close()`` when done."""

    def __init__(self, config: EngineConfig | None = None, *, core: EngineCore | None = None) -> None:
        self.core = core or EngineCore(config)
        self.tokenizer = self.core.tokenizer
        self._commands: queue.SimpleQueue[EngineCommand] = queue.SimpleQueue()
        # Held while a command is queued and while the stopped loop empties the queue: nothing queued after that waits.
        self._send_lock = threading.Lock()
        self._sinks: dict[str, _Sink] = {}
        self._lock = threading.Lock()  # guards _sinks between the loop thread and callers
        self._feedback = FeedbackChannel(self.core.stats())
        self._policy = self.core.policy
        self._stopped = threading.Event()
        # Long prompts are tokenized here, off the caller's event loop: the tokenizer releases the GIL, but the loop
        # (other programs' deltas and next calls) would wait milliseconds per prompt. One worker keeps their order.
        self._tokenize = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="plait-tokenize")
        self._thread = threading.Thread(target=self._loop, name="plait-engine", daemon=True)
        self._thread.start()

    # ---- public API ------------------------------------------------------------------------------------------------

    async def generate(self, request: GenerateRequest) -> AsyncIterator[GenerateDelta]:
        """Stream the deltas of ``request`` (all samples interleaved; each ends with a ``finish_reason``).

        Raises ``InvalidRequestError`` before streaming if the request is malformed. Leaving the iteration early
        (``break``, cancellation, a dropped client) aborts the request and frees its KV.
        """
        if self._stopped.is_set():
            raise EngineStoppedError("the engine is closed")
        state = self.core.prepare(request, await self._prompt_ids_off_loop(request))
        sink = _Sink(asyncio.get_running_loop(), asyncio.Queue(), state.sampling.n)
        request_id = request.request_id
        with self._lock:
            # Checked under the lock: the loop thread sets _stopped and empties _sinks under it too.
            if self._stopped.is_set():
                raise EngineStoppedError("the engine is closed")
            if request_id in self._sinks:
                raise InvalidRequestError("request_id", f"'{request_id}' is already running")
            self._sinks[request_id] = sink
        self.send(AddRequest(state))
        finished = False
        open_samples = state.sampling.n
        try:
            while True:
                delta = await sink.queue.get()
                if delta is None:
                    raise EngineStoppedError("the engine stopped before the request finished")
                yield delta
                if delta.finish_reason is not None:
                    open_samples -= 1
                    if open_samples == 0:
                        finished = True
                        return
        finally:
            if not finished:
                self.send(Abort(request_id))

    async def complete(self, request: GenerateRequest) -> GenerateResult:
        """Run ``request`` to the end and assemble its samples."""
        return await complete_with(self.generate, request)

    async def score_choices(self, request: GenerateRequest, choices: list[str]) -> list[ChoiceScore]:
        """Score each choice by its log-probability after ``request``'s prompt (SGLang's ``select``), in the order
        given; the best is ``max(scores, key=lambda s: s.logprob)`` (or ``mean_logprob`` to normalise by length).

        Each choice runs as an ordinary request (prompt + choice tokens, see ``plait.engine.grammar.choice_scoring``)
        in the shared batch; the prompt is computed once and shared through the prefix cache. Raises
        ``InvalidRequestError`` before anything runs if the prompt or a choice is malformed.
        """
        prompt_ids = await self._prompt_ids_off_loop(request) or self.core.prompt_ids(request)
        scoring = scoring_requests(request, prompt_ids, choices, self.tokenizer)
        for r in scoring:  # validate every one before any starts
            self.core.prepare(r)
        return await score_with(self.complete, scoring, choices)

    def send(self, command: EngineCommand) -> None:
        """Queue ``command`` (one of ``commands.py``) for the engine thread; thread-safe, returns at once. Commands are
        applied in the order sent, before the next step: a request submitted after a command runs under its effect.
        A malformed command raised when it was constructed; a hint about KV the engine does not hold is ignored there
        (``EngineStats.hints_ignored``). After ``close`` a command is dropped (a flush's ``freed`` raises
        ``EngineStoppedError``)."""
        if not isinstance(command, ENGINE_COMMANDS):
            raise TypeError(f"not an engine command: {command!r}")
        with self._send_lock:
            if not self._stopped.is_set():
                if isinstance(command, SetPolicy):
                    self._policy = command.policy  # every request sent after it runs under it: what ``policy`` says
                self._commands.put(command)
                return
        _never_applied(command)

    def abort(self, request_id: str) -> None:
        """Cancel a request (its stream ends with ``finish_reason == 'abort'``); unknown ids are ignored."""
        self.send(Abort(request_id))

    def feedback(self) -> EngineFeedback:
        """The latest stats and every cache event (evicted, loaded, pin_refused) since the previous call, oldest
        first: each event is returned once, so there is one reader (the runtime's planner)."""
        return self._feedback.take()

    def stats(self) -> EngineStats:
        """The stats as of the last step (or command) applied; takes no cache events."""
        return self._feedback.stats

    @property
    def config(self) -> EngineConfig:
        """The settings the engine was started with (its own copy; ``policy`` is the run-time policy now)."""
        return self.core.config

    @property
    def model_config(self) -> ModelConfig:
        return self.core.model_config

    @property
    def max_context(self) -> int:
        """The context window in tokens: prompt plus generated tokens of one sequence."""
        return self.core.max_context

    def prompt_ids(self, request: GenerateRequest) -> list[int]:
        """The token ids ``request``'s prompt becomes (chat template applied); thread-safe."""
        return self.core.prompt_ids(request)

    def effective_settings(self) -> dict[str, Any]:
        """What the engine runs with, ``auto`` values resolved: model, device, dtype, memory, batch limits, fast-path
        switches and the run-time policy the engine thread schedules under (a ``set_policy`` still queued behind
        other commands is not in it yet)."""
        core = self.core
        config = core.config
        return {
            "model": config.model,
            "model_name": core.model_config.name,
            "weights": config.weights,
            "device": str(core.device),
            "dtype": str(core.dtype).removeprefix("torch."),
            "max_context": core.max_context,
            "kv_slots": core.kv_slots,
            "host_kv_slots": config.host_kv_slots,
            "prefix_cache": config.prefix_cache,
            "max_running": config.max_running,
            "max_batch_tokens": config.max_batch_tokens,
            "chunk_size": config.chunk_size,
            "attention_backend": core.attention_backend,
            "fused_ops": config.resolve_fused_ops(core.device),
            "cuda_graphs": core.runner.graphs is not None,
            "overlap": core.overlap,
            "simulate": config.simulate or None,
            "tensor_parallel": config.tensor_parallel,
            "policy": core.policy.to_dict(),  # as applied on the engine thread
        }

    @property
    def policy(self) -> EnginePolicy:
        """The run-time policy: the one last given to ``set_policy`` (every request submitted since runs under it)."""
        return self._policy

    def set_policy(self, policy: EnginePolicy) -> None:
        """``send(SetPolicy(policy))``: every request submitted after this call is scheduled under ``policy``. Raises
        ``InvalidRequestError`` on a bad value, before anything changes."""
        self.send(SetPolicy(policy))

    async def flush_prefix_cache(self) -> int:
        """Drop every cached prefix not in use (between benchmark runs); returns the device slots freed."""
        command = FlushPrefixCache()
        self.send(command)
        return await asyncio.wrap_future(command.freed)

    async def _prompt_ids_off_loop(self, request: GenerateRequest) -> list[int] | None:
        """The prompt's ids from the tokenizer thread for chat messages (a template to render) and for prompt text (or
        pieces) long enough to hold the loop up; None (``prepare`` tokenizes inline, or takes the ids given) otherwise,
        where a thread hop would cost more than it saves."""
        if isinstance(request.prompt, str):
            chars = len(request.prompt)
        elif isinstance(request.prompt_pieces, list):  # an id is checked in Python: count it as a few characters
            pieces = request.prompt_pieces
            chars = sum(len(p) if isinstance(p, str) else 4 * len(p) if isinstance(p, list) else 0 for p in pieces)
        else:
            chars = 0
        if request.messages is None and chars < _OFF_LOOP_CHARS:
            return None
        try:
            return await asyncio.get_running_loop().run_in_executor(self._tokenize, self.core.prompt_ids, request)
        except RuntimeError:
            if self._stopped.is_set():  # closed between the caller's check and the submission
                raise EngineStoppedError("the engine is closed") from None
            raise

    def close(self) -> None:
        """Stop the loop; requests still in flight end with ``EngineStoppedError``."""
        if not self._stopped.is_set():
            self.send(Stop())
            self._thread.join(timeout=30)
        self._tokenize.shutdown(wait=False)  # a prompt being tokenized finishes; its request then sees the stop

    async def __aenter__(self) -> Engine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    # ---- the loop thread -------------------------------------------------------------------------------------------

    def _loop(self) -> None:
        try:
            while True:
                block = not self.core.has_work()
                if not self._drain_commands(block):
                    return
                if self.core.has_work():
                    try:
                        deltas = self.core.step()
                    except Exception as error:  # a bug must not take every other request down silently
                        logger.exception("engine step failed")
                        self._fail_all(f"engine step failed: {error!r}")
                        continue
                    delivering = time.perf_counter()
                    self._publish_feedback()
                    self._deliver(deltas)
                    self.core.meter.add_phase("deliver", time.perf_counter() - delivering)
        finally:
            with self._lock:
                self._stopped.set()
                sinks, self._sinks = list(self._sinks.values()), {}
            for request_id in list(self.core.requests):  # leave the core idle, its KV free
                self.core.abort(request_id)
            self.core.close()
            self._publish_feedback()
            for sink in sinks:
                sink.put(None)
            with self._send_lock:  # commands queued behind the stop never run: their callers must not wait forever
                while True:
                    try:
                        _never_applied(self._commands.get_nowait())
                    except queue.Empty:
                        break

    def _drain_commands(self, block: bool) -> bool:
        """Apply queued commands in order; with ``block``, wait for the first one. Returns False on ``Stop``."""
        applied = False
        started = 0.0
        while True:
            try:
                command = self._commands.get(block=block)
            except queue.Empty:
                if applied:  # host time between steps, which the step time does not show
                    self.core.meter.add_phase("commands", time.perf_counter() - started)
                    # e.g. an abort frees KV without a step: callers must see it in stats() at once
                    self._publish_feedback()
                return True
            if not applied:
                started = time.perf_counter()
            applied = True
            block = False
            try:
                if not self._apply(command):
                    return False
            except Exception:  # a bug in a hint must not stop the loop: it is logged, and the hint lost
                logger.exception("engine command %r failed", command)

    def _apply(self, command: EngineCommand) -> bool:
        """The one dispatch: apply ``command`` to the core (engine thread). Returns False on ``Stop``. Commands were
        validated when constructed; the ``EngineCore`` methods are the handlers (tests call them directly)."""
        core = self.core
        match command:
            case AddRequest():
                try:
                    core.add(command.state)
                except Exception as error:  # its caller is told, e.g. of a duplicate id that slipped past generate()
                    if not isinstance(error, EngineError):
                        logger.exception("adding request %s failed", command.state.request.request_id)
                    self._fail_request(command.state, str(error))
            case Abort():
                self._deliver(core.abort(command.request_id))
            case HintNextUse():
                core.hint_next_use(command.program_id, _ids(command.prefix_token_ids), command.steps, command.seconds)
            case Pin():
                core.pin(command.ttl_s, command.program_id, _ids(command.prefix_token_ids), command.priority)
            case Unpin():
                core.unpin(command.program_id, _ids(command.prefix_token_ids))
            case Prefetch():
                core.prefetch(command.program_id, _ids(command.prefix_token_ids))
            case Reserve():
                core.reserve(command.program_id, command.slots, command.priority, command.ttl_s, command.call_id)
            case Unreserve():
                core.unreserve(command.program_id, command.call_id)
            case ForgetProgram():
                core.forget_program(command.program_id)
            case SetPolicy():
                core.set_policy(command.policy)
            case FlushPrefixCache():
                _resolve(command.freed, core.flush_prefix_cache)
            case ResidentPrefix():
                _resolve(command.result, lambda: core.resident_prefix_length(list(command.token_ids)))
            case ExportPrefix():
                _resolve(command.result, lambda: core.export_prefix(list(command.token_ids)))
            case ImportPrefix():
                _resolve(command.result, lambda: core.import_prefix(command.kv, command.program_id))
            case Stop():
                return False
            case _:
                assert_never(command)
        return True

    def _publish_feedback(self) -> None:
        """Publish the stats and the cache events since the last publication (engine thread)."""
        events = getattr(self.core.prefix_cache, "events", None)  # only a radix cache logs events
        drained: list[CacheEvent] = []
        while events:
            drained.append(events.popleft())
        self._feedback.publish(self.core.stats(), drained)

    def _deliver(self, deltas: list[GenerateDelta]) -> None:
        """Hand each delta to its caller's event loop: one wake-up per loop per step, not one per delta (each
        wake-up writes to the loop's self-pipe, which cost more than the step's other host work at large batches)."""
        unreachable = []
        batches: dict[asyncio.AbstractEventLoop, list[tuple[_Sink, GenerateDelta]]] = {}
        with self._lock:
            for delta in deltas:
                sink = self._sinks.get(delta.request_id)
                if sink is None:
                    continue
                batches.setdefault(sink.loop, []).append((sink, delta))
                if delta.finish_reason is not None:
                    sink.open_samples -= 1  # the loop thread's count; generate() keeps its own
                    if sink.open_samples == 0:
                        del self._sinks[delta.request_id]
            for loop, items in batches.items():
                try:
                    loop.call_soon_threadsafe(_put_all, items)
                except RuntimeError:  # the callers' event loop is closed: nobody is listening
                    for _, delta in items:
                        self._sinks.pop(delta.request_id, None)
                        unreachable.append(delta.request_id)
        for request_id in dict.fromkeys(unreachable):  # stop spending compute and KV on them
            self.core.abort(request_id)

    def _fail_request(self, state: RequestState, message: str) -> None:
        n = state.sampling.n
        request_id = state.request.request_id
        deltas = [GenerateDelta(request_id, i, "", [], finish_reason="error", error=message) for i in range(n)]
        self._deliver(deltas)

    def _fail_all(self, message: str) -> None:
        for request_id in list(self.core.requests):
            for delta in self.core.abort(request_id):
                delta.finish_reason, delta.error = "error", message
                self._deliver([delta])


def _ids(prefix_token_ids: tuple[int, ...] | None) -> list[int] | None:
    return None if prefix_token_ids is None else list(prefix_token_ids)


async def complete_with(
    generate: Callable[[GenerateRequest], AsyncIterator[GenerateDelta]], request: GenerateRequest
) -> GenerateResult:
    """Run ``request`` through ``generate`` (an engine's, or a replica set's) to the end and assemble its samples."""
    texts: dict[int, list[str]] = {}
    tokens: dict[int, list[int]] = {}
    logprobs: dict[int, list] = {}
    prompt_logprobs: dict[int, list] = {}
    reasons: dict[int, str | None] = {}
    prompt_tokens = 0
    async for delta in generate(request):
        if delta.prompt_logprobs is not None:
            prompt_logprobs[delta.index] = delta.prompt_logprobs
        texts.setdefault(delta.index, []).append(delta.text)
        tokens.setdefault(delta.index, []).extend(delta.token_ids)
        if delta.logprobs:
            logprobs.setdefault(delta.index, []).extend(delta.logprobs)
        if delta.finish_reason is not None:
            reasons[delta.index] = delta.finish_reason
        prompt_tokens = delta.prompt_tokens
    completions = [
        Completion(
            i,
            "".join(texts[i]),
            tokens[i],
            reasons.get(i),
            logprobs.get(i) if logprobs else None,
            prompt_logprobs.get(i),
        )
        for i in sorted(texts)
    ]
    return GenerateResult(request.request_id, prompt_tokens, completions)


async def score_with(
    complete: Callable[[GenerateRequest], Awaitable[GenerateResult]],
    scoring: list[GenerateRequest],
    choices: list[str],
) -> list[ChoiceScore]:
    """The choices' scores from their scoring requests (``scoring_requests``), run through ``complete``."""
    results = await asyncio.gather(*(complete(r) for r in scoring))
    for result in results:
        if result.completions[0].finish_reason in ("error", "abort"):
            raise EngineError(f"scoring request {result.request_id} ended with {result.completions[0].finish_reason}")
    return [choice_score(c, r.completions[0].prompt_logprobs) for c, r in zip(choices, results, strict=True)]


def _resolve(result: concurrent.futures.Future, compute: Callable[[], Any]) -> None:
    """Hand ``compute()``'s value (or its error: reported to the caller, never fatal to the loop) to ``result``."""
    try:
        result.set_result(compute())
    except Exception as error:
        result.set_exception(error)


def _never_applied(command: EngineCommand) -> None:
    """A command the stopped engine will not apply: a caller awaiting its result is told so."""
    if isinstance(command, FlushPrefixCache):
        command.freed.set_exception(EngineStoppedError("the engine is closed"))
    elif isinstance(command, ResidentPrefix | ExportPrefix | ImportPrefix):
        command.result.set_exception(EngineStoppedError("the engine is closed"))
