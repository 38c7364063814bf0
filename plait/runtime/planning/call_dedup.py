"""Identical deterministic calls across programs run once.

Two requests with the same prompt and the same greedy sampling settings produce the same tokens, so the second
need not run: it subscribes to the first's stream (it receives the output so far as one delta, then the rest as it
comes), or, if the first has finished, gets its recorded output as one delta. Only temperature-0 single-sample
requests without log-probabilities qualify.

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
    prompt = (request.prompt, request.prompt_token_ids, request.prompt_pieces, request.messages)
    return msgspec.json.encode([prompt, sorted(settings.items(), key=lambda item: item[0])], enc_hook=repr)


class _LeaderLeft(Exception):
    """The caller reading the engine stream left (cancelled) before the call finished."""


@dataclass(eq=False)
class _SharedCall:
    """A running call's output so far, kept merged (one text, one token list) rather than as its per-token deltas:
    those of every running call would be ~10^4 live objects that each garbage collection walks, pausing the engine
    thread too (4% of text2sql's mean JCT in the simulator, with nothing shared)."""

    queues: list[asyncio.Queue[GenerateDelta | BaseException | None]] = field(default_factory=list)
    done: bool = False
    texts: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    queued_s: float | None = None
    last: GenerateDelta | None = None

    def add(self, delta: GenerateDelta) -> None:
        self.texts.append(delta.text)
        self.token_ids.extend(delta.token_ids)
        if self.queued_s is None:
            self.queued_s = delta.queued_s
        self.last = delta

    def merged(self) -> GenerateDelta | None:
        """One delta with everything so far (the last delta's counts and finish), or None before the first."""
        if self.last is None:
            return None
        text, tokens = "".join(self.texts), list(self.token_ids)
        return dataclasses.replace(self.last, text=text, token_ids=tokens, queued_s=self.queued_s)


class CallDeduplicator:
    """The first caller of a deterministic request reads the engine's stream itself (no extra task or queue hop per
    delta: a step delivers hundreds of deltas and the event loop is shared with every program); identical callers
    that come while it runs subscribe to it. If the first caller leaves early, each subscriber issues the request
    again (it is deterministic: the same deltas) and continues after the deltas it already has."""

    def __init__(self) -> None:
        self._running: dict[bytes, _SharedCall] = {}
        self._finished: OrderedDict[bytes, GenerateDelta] = OrderedDict()  # each call's whole output, merged
        self.calls = 0  # eligible calls seen
        self.deduplicated = 0  # of which answered by another call

    def generate(
        self, engine: Engine, request: GenerateRequest, scope: str = ""
    ) -> tuple[AsyncIterator[GenerateDelta], bool]:
        """The request's deltas, from its own engine request or an identical one of the same ``scope`` (the server
        passes the tenant: one tenant's calls never answer another's); True when shared."""
        key = dedup_key(request)
        if key is None:
            return engine.generate(request), False
        self.calls += 1
        return self._generate(msgspec.json.encode(scope) + key, engine, request)

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
        last = shared.last
        if outcome is None and last is not None and last.finish_reason not in ("error", "abort"):
            self._finished[key] = shared.merged()  # type: ignore[assignment]  # a last delta exists
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
                shared.add(delta)
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
        so_far = shared.merged()  # what the call produced before this subscriber came, as one delta
        if so_far is not None:
            queue.put_nowait(so_far)
        if shared.done:
            queue.put_nowait(None)
        shared.queues.append(queue)
        received_tokens = received_chars = 0  # delivered so far
        try:
            while True:
                item = await queue.get()
                if item is None:
                    return
                if isinstance(item, _LeaderLeft):
                    break
                if isinstance(item, BaseException):
                    raise item
                received_tokens += len(item.token_ids)
                received_chars += len(item.text)
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            shared.queues.remove(queue)
        # The first caller left before the end: run the request again (or join whoever runs it now). A deterministic
        # call gives the same tokens and text, so what was already delivered is cut from the front of the new stream
        # (whose deltas may be cut differently: a finished call replays as one merged delta).
        source, _ = self._generate(key, engine, request)
        async with contextlib.aclosing(source) as deltas:  # type: ignore[type-var]
            seen_tokens = seen_chars = 0
            async for delta in deltas:
                skip_tokens, skip_chars = received_tokens - seen_tokens, received_chars - seen_chars
                seen_tokens += len(delta.token_ids)
                seen_chars += len(delta.text)
                if skip_tokens <= 0 and skip_chars <= 0:
                    yield delta
                elif seen_tokens > received_tokens or seen_chars > received_chars or delta.finish_reason is not None:
                    text, tokens = delta.text[max(0, skip_chars) :], delta.token_ids[max(0, skip_tokens) :]
                    yield dataclasses.replace(delta, text=text, token_ids=tokens)


async def _replay(delta: GenerateDelta) -> AsyncIterator[GenerateDelta]:
    yield delta
