"""Identical deterministic calls across programs run once.

Two requests with the same prompt and the same greedy sampling settings produce the same tokens, so the second
need not run: it subscribes to the first's stream (and receives every delta so far, then the rest as they come), or,
if the first has finished, replays its recorded deltas. Only temperature-0 single-sample requests without
log-probabilities qualify.

Ownership: a shared call runs in its own task, not in any program's. Each subscriber holds a reference; the engine
request is aborted only when the last subscriber leaves, so one program's cancellation never fails another's call.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import msgspec

from plait.engine import Engine, GenerateDelta, GenerateRequest

_FINISHED_KEPT = 1024  # finished calls whose deltas are kept for replay, the oldest forgotten first


def dedup_key(request: GenerateRequest) -> bytes | None:
    """The identity of a deterministic request, or None if it is not deterministic (not deduplicated)."""
    sampling = request.sampling
    if sampling.temperature != 0 or sampling.n != 1 or sampling.logprobs or sampling.prompt_logprobs_start is not None:
        return None
    settings = dataclasses.asdict(sampling)
    settings.pop("seed", None)  # greedy decoding does not read the seed
    prompt = (request.prompt, request.prompt_token_ids, request.messages)
    return msgspec.json.encode([prompt, sorted(settings.items(), key=lambda item: item[0])], enc_hook=repr)


@dataclass(eq=False)
class _SharedCall:
    deltas: list[GenerateDelta] = field(default_factory=list)
    queues: list[asyncio.Queue[GenerateDelta | BaseException | None]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    done: bool = False


class CallDeduplicator:
    def __init__(self) -> None:
        self._running: dict[bytes, _SharedCall] = {}
        self._finished: OrderedDict[bytes, list[GenerateDelta]] = OrderedDict()
        self.calls = 0  # eligible calls seen
        self.deduplicated = 0  # of which answered by another call

    def generate(self, engine: Engine, request: GenerateRequest) -> tuple[AsyncIterator[GenerateDelta], bool]:
        """The request's deltas, from its own engine request or an identical one; True when shared."""
        key = dedup_key(request)
        if key is None:
            return engine.generate(request), False
        self.calls += 1
        finished = self._finished.get(key)
        if finished is not None:
            self._finished.move_to_end(key)
            self.deduplicated += 1
            return _replay(finished), True
        shared = self._running.get(key)
        leader = shared is None
        if shared is None:
            shared = self._running[key] = _SharedCall()
            shared.task = asyncio.get_running_loop().create_task(self._drive(key, shared, engine, request))
        else:
            self.deduplicated += 1
        return self._subscribe(key, shared), not leader

    async def _drive(self, key: bytes, shared: _SharedCall, engine: Engine, request: GenerateRequest) -> None:
        outcome: BaseException | None = None
        try:
            async with contextlib.aclosing(engine.generate(request)) as deltas:
                async for delta in deltas:
                    shared.deltas.append(delta)
                    for queue in shared.queues:
                        queue.put_nowait(delta)
        except BaseException as error:  # every subscriber sees the failure (or the cancellation) of the call
            outcome = error
        finally:
            shared.done = True
            self._running.pop(key, None)
            ok = outcome is None and shared.deltas and shared.deltas[-1].finish_reason not in ("error", "abort")
            if ok:
                self._finished[key] = shared.deltas
                while len(self._finished) > _FINISHED_KEPT:
                    self._finished.popitem(last=False)
            for queue in shared.queues:
                queue.put_nowait(outcome)
        if isinstance(outcome, asyncio.CancelledError):
            raise outcome

    async def _subscribe(self, key: bytes, shared: _SharedCall) -> AsyncIterator[GenerateDelta]:
        queue: asyncio.Queue[GenerateDelta | BaseException | None] = asyncio.Queue()
        for delta in shared.deltas:  # what the call produced before this subscriber came
            queue.put_nowait(delta)
        if shared.done:
            queue.put_nowait(None)
        shared.queues.append(queue)
        try:
            while True:
                item = await queue.get()
                if item is None:
                    return
                if isinstance(item, asyncio.CancelledError):
                    raise RuntimeError("the shared call was cancelled by all of its callers")
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            shared.queues.remove(queue)
            if not shared.queues and not shared.done and shared.task is not None:
                shared.task.cancel()  # the last caller left: abort the engine request
                self._running.pop(key, None)


async def _replay(deltas: list[GenerateDelta]) -> AsyncIterator[GenerateDelta]:
    for delta in deltas:
        yield delta
