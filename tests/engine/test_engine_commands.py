"""The typed control channel between runtime and engine: every command has exactly one handler and is applied in the
order sent (a command sent before a request affects it); a malformed command raises where it is constructed, on the
caller's thread; the engine's feedback carries each cache event exactly once, however many steps pass between reads.
"""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import functools
import inspect
import itertools
import random
import textwrap
from collections import deque
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

from plait.cache import CacheEvent
from plait.engine import (
    ENGINE_COMMANDS,
    Abort,
    AddRequest,
    Engine,
    EngineConfig,
    EngineCore,
    EnginePolicy,
    EngineStats,
    EngineStoppedError,
    ExportPrefix,
    FlushPrefixCache,
    ForgetProgram,
    GenerateRequest,
    HintNextUse,
    ImportPrefix,
    InvalidRequestError,
    Pin,
    Prefetch,
    PrefixKV,
    Reserve,
    ResidentPrefix,
    SamplingParams,
    SetPolicy,
    Stop,
    Unpin,
    Unreserve,
)
from plait.engine import commands as commands_module
from plait.engine.engine_feedback import FeedbackChannel
from tests.conftest import TINY, serving

pytestmark = pytest.mark.usefixtures("one_thread")

# ---- one handler per command, applied in order ----------------------------------------------------------------------


def test_every_command_type_has_exactly_one_case_in_the_dispatch():
    defined = {
        obj
        for obj in vars(commands_module).values()
        if isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj.__module__ == commands_module.__name__
    }
    assert defined == set(ENGINE_COMMANDS), "every command class is in the EngineCommand union"
    tree = ast.parse(textwrap.dedent(inspect.getsource(Engine._apply)))
    (match,) = [node for node in ast.walk(tree) if isinstance(node, ast.Match)]
    handled = [case.pattern.cls.id for case in match.cases if isinstance(case.pattern, ast.MatchClass)]
    assert sorted(handled) == sorted(command.__name__ for command in ENGINE_COMMANDS)


def _stats() -> EngineStats:
    return EngineStats(0, 0, 0, 1, 0.0, 0.0, 0, 0, 0, 0)


def _recorded(method: Callable[..., Any]) -> Callable[..., Any]:
    """A handler of ``RecordingCore`` that notes (itself, its arguments) before it runs."""

    @functools.wraps(method)
    def record(self: RecordingCore, *args: Any) -> Any:
        self.calls.append((record, args))
        return method(self, *args)

    return record


class RecordingCore:
    """What ``Engine``'s loop touches of an ``EngineCore``, recording every handler call in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self.tokenizer = None
        self.policy = EnginePolicy()
        self.requests: dict[str, object] = {}
        self.prefix_cache = SimpleNamespace(events=deque())
        self.meter = SimpleNamespace(add_phase=lambda phase, seconds: None)

    def stats(self) -> EngineStats:
        return _stats()

    def has_work(self) -> bool:
        return False

    @_recorded
    def add(self, state: object) -> None:
        pass

    @_recorded
    def abort(self, request_id: str) -> list:
        return []

    @_recorded
    def hint_next_use(self, *args: Any) -> bool:
        return True

    @_recorded
    def pin(self, *args: Any) -> bool:
        return True

    @_recorded
    def unpin(self, *args: Any) -> bool:
        return True

    @_recorded
    def prefetch(self, *args: Any) -> bool:
        return True

    @_recorded
    def reserve(self, *args: Any) -> bool:
        return True

    @_recorded
    def unreserve(self, *args: Any) -> bool:
        return True

    @_recorded
    def forget_program(self, *args: Any) -> None:
        pass

    @_recorded
    def set_policy(self, *args: Any) -> None:
        pass

    @_recorded
    def flush_prefix_cache(self) -> int:
        return 7

    @_recorded
    def resident_prefix_length(self, token_ids: list[int]) -> int:
        return len(token_ids) - 1

    @_recorded
    def export_prefix(self, token_ids: list[int]) -> PrefixKV:
        return PrefixKV(tuple(token_ids))

    @_recorded
    def import_prefix(self, kv: PrefixKV, program_id: str | None) -> int:
        return len(kv)

    def close(self) -> None:
        pass


def test_each_command_reaches_its_one_handler_in_the_order_sent(caplog):
    core = RecordingCore()
    state, policy, flush = object(), EnginePolicy(eviction="lru"), FlushPrefixCache()
    resident, export = ResidentPrefix((4, 5, 6)), ExportPrefix((4, 5))
    kv = PrefixKV((4, 5))
    imported = ImportPrefix(kv, "p")
    on = RecordingCore  # the handler each command reaches
    sent_and_applied = [
        (AddRequest(state), (on.add, (state,))),  # type: ignore[arg-type]
        (Abort("r"), (on.abort, ("r",))),
        (HintNextUse("p", steps=2.0), (on.hint_next_use, ("p", None, 2.0, None))),
        (HintNextUse(prefix_token_ids=[1, 2], steps=1.0, seconds=0.5), (on.hint_next_use, (None, [1, 2], 1.0, 0.5))),
        (Pin(5.0, "p", priority=3), (on.pin, (5.0, "p", None, (3.0,)))),
        (Unpin("p"), (on.unpin, ("p", None))),
        (Prefetch(prefix_token_ids=(7,)), (on.prefetch, (None, [7]))),
        (Reserve("p", 10, (1.0, 2.0), 30.0, "c"), (on.reserve, ("p", 10, (1.0, 2.0), 30.0, "c"))),
        (Unreserve("p", "c"), (on.unreserve, ("p", "c"))),
        (ForgetProgram("p"), (on.forget_program, ("p",))),
        (SetPolicy(policy), (on.set_policy, (policy,))),
        (flush, (on.flush_prefix_cache, ())),
        (resident, (on.resident_prefix_length, ([4, 5, 6],))),
        (export, (on.export_prefix, ([4, 5],))),
        (imported, (on.import_prefix, (kv, "p"))),
    ]
    assert {type(command) for command, _ in sent_and_applied} | {Stop} == set(ENGINE_COMMANDS)
    engine = Engine(core=core)  # type: ignore[arg-type]
    for command, _ in sent_and_applied:
        engine.send(command)
    assert engine.policy is policy  # what every request sent from now on runs under
    engine.close()  # sends Stop behind them: everything before it is applied first
    assert core.calls == [applied for _, applied in sent_and_applied]
    assert flush.freed.result(timeout=0) == 7
    assert resident.result.result(timeout=0) == 2 and len(export.result.result(timeout=0)) == 2
    assert imported.result.result(timeout=0) == 2
    assert not [record for record in caplog.records if record.levelname == "ERROR"]

    late = FlushPrefixCache()
    engine.send(late)  # after close: dropped, and a caller awaiting its result is told
    engine.send(Unpin("p"))
    late_export = ExportPrefix((1,))
    engine.send(late_export)
    with pytest.raises(EngineStoppedError):
        late.freed.result(timeout=0)
    with pytest.raises(EngineStoppedError):
        late_export.result.result(timeout=0)
    assert len(core.calls) == len(sent_and_applied)
    with pytest.raises(TypeError, match="not an engine command"):
        engine.send(object())  # type: ignore[arg-type]


def _request(prompt: list[int], request_id: str, program: str | None = None) -> GenerateRequest:
    sampling = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
    return GenerateRequest(prompt_token_ids=prompt, sampling=sampling, request_id=request_id, program_id=program)


def test_a_command_sent_before_a_request_affects_it():
    """A flush sent (not awaited) just before a request is applied before that request is admitted: the request
    finds nothing cached, where without it the same prompt is served from the cache."""
    prompt = [random.Random(1).randrange(256) for _ in range(80)]

    async def cached_tokens(engine: Engine, request_id: str) -> int:
        deltas = [delta async for delta in engine.generate(_request(prompt, request_id))]
        return deltas[-1].cached_tokens

    async def main(engine: Engine) -> tuple[int, int]:
        await cached_tokens(engine, "first")
        served = await cached_tokens(engine, "again")
        engine.send(FlushPrefixCache())
        return served, await cached_tokens(engine, "after-flush")

    with serving(EngineCore(EngineConfig(**TINY))) as engine:
        served, after_flush = asyncio.run(main(engine))
    assert served >= len(prompt) - 2 and after_flush == 0


# ---- validation on the caller's thread ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: Pin(-1.0, "p"), "ttl_s"),
        (lambda: Pin(float("nan"), "p"), "ttl_s"),
        (lambda: Pin(1.0, "p", priority="high"), "priority"),
        (lambda: Pin(1.0, "p", priority=(1.0, float("nan"))), "priority"),
        (lambda: Pin(1.0, "p", priority=()), "priority"),
        (lambda: Pin(1.0), "program_id"),  # no target
        (lambda: Pin(1.0, "p", prefix_token_ids=[1]), "program_id"),  # two targets
        (lambda: Unpin(), "program_id"),
        (lambda: Prefetch(prefix_token_ids=[]), "prefix_token_ids"),
        (lambda: Prefetch(prefix_token_ids=["a"]), "prefix_token_ids"),
        (lambda: HintNextUse("p", steps=-1.0), "steps"),
        (lambda: HintNextUse("p", seconds=float("nan")), "seconds"),
        (lambda: HintNextUse(program_id=""), "program_id"),
        (lambda: Reserve("p", -1), "slots"),
        (lambda: Reserve("p", 1.5), "slots"),  # type: ignore[arg-type]
        (lambda: Reserve("p", True), "slots"),
        (lambda: Reserve("p", 4, ttl_s=-1.0), "ttl_s"),
        (lambda: Reserve("p", 4, priority=[float("nan")]), "priority"),
        (lambda: Reserve("", 4), "program_id"),
        (lambda: Unreserve(""), "program_id"),
        (lambda: ForgetProgram(None), "program_id"),  # type: ignore[arg-type]
        (lambda: SetPolicy(EnginePolicy(eviction="mru")), "eviction"),
        (lambda: SetPolicy("lru"), "policy"),  # type: ignore[arg-type]
    ],
)
def test_a_malformed_command_raises_where_it_is_made(make, field):
    with pytest.raises(InvalidRequestError) as raised:
        make()
    assert raised.value.field == field and isinstance(raised.value, ValueError)


def test_commands_are_normalised_frozen_data():
    pin = Pin(2, "p", priority=3)
    assert pin.priority == (3.0,) and Pin(1.0, prefix_token_ids=[4, 5]).prefix_token_ids == (4, 5)
    assert Reserve("p", 0).priority is None  # holds against every admission
    with pytest.raises(dataclasses.FrozenInstanceError):
        pin.ttl_s = 9.0  # type: ignore[misc]
    assert Unreserve("p", call_id="c") == Unreserve("p", "c") and hash(Unpin("p")) == hash(Unpin("p"))


def test_a_bad_policy_changes_nothing():
    core = RecordingCore()
    engine = Engine(core=core)  # type: ignore[arg-type]
    try:
        before = engine.policy
        with pytest.raises(InvalidRequestError):
            engine.set_policy(EnginePolicy(pin_budget_fraction=2.0))
        assert engine.policy is before
    finally:
        engine.close()
    assert core.calls == []


# ---- feedback: each cache event exactly once ------------------------------------------------------------------------


def _event(i: int) -> CacheEvent:
    return CacheEvent(float(i), "evicted", (f"p{i}",), i)


def test_the_feedback_channel_hands_out_each_event_once_with_the_latest_stats():
    first, second = _stats(), EngineStats(1, 0, 0, 1, 0.0, 0.0, 0, 0, 0, 0)
    channel = FeedbackChannel(first, backlog=5)
    assert channel.take().cache_events == ()
    channel.publish(first, [_event(0), _event(1)])
    channel.publish(second, [_event(2)])  # several steps between reads
    record = channel.take()
    assert record.stats is second and record.cache_events == (_event(0), _event(1), _event(2))
    assert record.events_dropped == 0
    assert channel.take().cache_events == ()  # read once
    channel.publish(first, [_event(i) for i in range(3, 10)])  # a reader too slow: the oldest go, counted
    record = channel.take()
    assert [e.tokens for e in record.cache_events] == [5, 6, 7, 8, 9] and record.events_dropped == 2
    assert channel.stats is first and channel.take().events_dropped == 0


class RecordedLog(deque):
    """The radix cache's event log, keeping a copy of everything appended to it."""

    def __init__(self) -> None:
        super().__init__()
        self.appended: list[CacheEvent] = []

    def append(self, event: CacheEvent) -> None:
        self.appended.append(event)
        super().append(event)


def test_feedback_carries_each_cache_event_once_however_many_steps_pass_between_reads():
    """A pool too small to keep every program's prompt evicts program-owned KV (``evicted`` events); pins beyond a
    zero budget are refused (``pin_refused``). The reader takes feedback now and then, several requests (many steps)
    apart: it sees every event the cache logged, in order, each once."""
    policy = EnginePolicy(pin_budget_fraction=0.0)
    core = EngineCore(EngineConfig(**TINY, kv_slots=512, max_context=512, policy=policy))
    log = RecordedLog()
    core.prefix_cache.events = log  # type: ignore[attr-defined]
    rng = random.Random(7)
    read: list[CacheEvent] = []

    async def main(engine: Engine) -> int:
        steps = []
        for i in range(12):
            await engine.complete(_request([rng.randrange(256) for _ in range(150)], f"r{i}", program=f"p{i}"))
            engine.send(Pin(10.0, f"p{i}"))  # refused: the budget is 0
            if i % 4 == 3:
                feedback = engine.feedback()
                read.extend(feedback.cache_events)
                steps.append(feedback.stats.steps)
                assert feedback.events_dropped == 0
        await engine.complete(_request([1, 2, 3], "last"))  # after the last pin: its event is published
        read.extend(engine.feedback().cache_events)
        assert engine.feedback().cache_events == ()
        return min(b - a for a, b in itertools.pairwise(steps))

    with serving(core) as engine:
        steps_between_reads = asyncio.run(main(engine))
    assert steps_between_reads >= 8
    kinds = {event.kind for event in log.appended}
    assert {"evicted", "pin_refused"} <= kinds
    assert len(read) == len(log.appended) and all(a is b for a, b in zip(read, log.appended, strict=True))
