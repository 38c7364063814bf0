"""Identical deterministic calls across programs run once.

Two requests with the same prompt and the same greedy sampling settings produce the same tokens, so the second
need not run: it subscribes to the first's stream (and receives every delta so far, then the rest as they come), or,
if the first has finished, replays its recorded deltas. Only temperature-0 single-sample requests without
log-probabilities qualify.

Ownership: the first caller reads the engine stream, so its cancellation aborts the engine request; identical callers
that subscribed then issue the request again themselves, so one program's cancellation never fails another's call.
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


class _LeaderLeft(Exception):
    """The caller reading the engine stream left (cancelled) before the call finished."""


@dataclass(eq=False)
class _SharedCall:
    deltas: list[GenerateDelta] = field(default_factory=list)
    queues: list[asyncio.Queue[GenerateDelta | BaseException | None]] = field(default_factory=list)
    done: bool = False


class CallDeduplicator:
    """The first caller of a deterministic request reads the engine's stream itself (no extra task or queue hop per
    delta: a step delivers hundreds of deltas and the event loop is shared with every program); identical callers
    that come while it runs subscribe to it. If the first caller leaves early, each subscriber issues the request
    again (it is deterministic: the same deltas) and continues after the deltas it already has."""

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
        return self._generate(key, engine, request)

    def _generate(
        self, key: bytes, engine: Engine, request: GenerateRequest
    ) -> tuple[AsyncIterator[GenerateDelta], bool]:
        finished = self._finished.get(key)
        if finished is not None:
            self._finished.move_to_end(key)
            self.deduplicated += 1
            return _replay(finished), True
        shared = self._running.get(key)
        if shared is None:
            shared = self._running[key] = _SharedCall()
            return self._lead(key, shared, engine.generate(request)), False
        self.deduplicated += 1
        return self._subscribe(key, shared, engine, request), True

    def _finish(self, key: bytes, shared: _SharedCall, outcome: BaseException | None) -> None:
        shared.done = True
        if self._running.get(key) is shared:
            del self._running[key]
        ok = outcome is None and shared.deltas and shared.deltas[-1].finish_reason not in ("error", "abort")
        if ok:
            # Kept as one delta: a thousand finished calls' per-token deltas would be ~10^5 live objects, which every
            # full garbage collection walks (pausing the engine thread too).
            self._finished[key] = [_merged(shared.deltas)]
            while len(self._finished) > _FINISHED_KEPT:
                self._finished.popitem(last=False)
        for queue in shared.queues:
            queue.put_nowait(outcome)

    async def _lead(
        self, key: bytes, shared: _SharedCall, stream: AsyncIterator[GenerateDelta]
    ) -> AsyncIterator[GenerateDelta]:
        """The first caller's view: the engine stream itself, each delta also handed to the subscribers."""
        outcome: BaseException | None = _LeaderLeft()
        try:
            # The stream ends by itself after the last delta (dedup takes single-sample requests only): breaking out
            # of it instead would close it as if the caller had left, and it would send the engine an abort.
            async for delta in stream:
                shared.deltas.append(delta)
                for queue in shared.queues:
                    queue.put_nowait(delta)
                if delta.finish_reason is not None:
                    outcome = None
                yield delta
        except (GeneratorExit, asyncio.CancelledError):
            raise  # the caller left: subscribers carry on by themselves (``_LeaderLeft``)
        except BaseException as error:  # the call failed: every subscriber sees it
            outcome = error
            raise
        finally:
            self._finish(key, shared, outcome)
            closer = getattr(stream, "aclose", None)
            if closer is not None:
                await closer()

    async def _subscribe(
        self, key: bytes, shared: _SharedCall, engine: Engine, request: GenerateRequest
    ) -> AsyncIterator[GenerateDelta]:
        queue: asyncio.Queue[GenerateDelta | BaseException | None] = asyncio.Queue()
        for delta in shared.deltas:  # what the call produced before this subscriber came
            queue.put_nowait(delta)
        if shared.done:
            queue.put_nowait(None)
        shared.queues.append(queue)
        received = 0
        try:
            while True:
                item = await queue.get()
                if item is None:
                    return
                if isinstance(item, _LeaderLeft):
                    break
                if isinstance(item, BaseException):
                    raise item
                received += 1
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            shared.queues.remove(queue)
        # The first caller left before the end: run the request again (or join whoever runs it now); a deterministic
        # call gives the same deltas, so those already delivered are skipped.
        source, _ = self._generate(key, engine, request)
        async with contextlib.aclosing(source) as deltas:  # type: ignore[type-var]
            index = 0
            async for delta in deltas:
                index += 1
                if index > received:
                    yield delta


def _merged(deltas: list[GenerateDelta]) -> GenerateDelta:
    """One delta with the text and tokens of a finished single-sample call's deltas and its final counts."""
    last = deltas[-1]
    queued = next((d.queued_s for d in deltas if d.queued_s is not None), None)
    return dataclasses.replace(
        last,
        text="".join(d.text for d in deltas),
        token_ids=[t for d in deltas for t in d.token_ids],
        queued_s=queued,
    )


async def _replay(deltas: list[GenerateDelta]) -> AsyncIterator[GenerateDelta]:
    for delta in deltas:
        yield delta
