"""Every command the runtime sends to a running engine: plain, frozen data, checked where it is made.

``Engine.send(command)`` queues one (thread-safe, returns at once); the engine thread applies queued commands in the
order they were sent, before its next step (``Engine._apply``, the one dispatch), so a command sent before a request
is submitted affects that request. A command that is malformed raises ``InvalidRequestError`` (a ``ValueError``,
naming the field) when it is constructed, on the caller's thread: the engine thread never sees it.

KV hints (``HintNextUse``, ``Pin``, ``Unpin``, ``Prefetch``, ``ForgetProgram``) and reservations are advice: a target
the engine does not hold is ignored and counted in ``EngineStats.hints_ignored``. A hint targets a program (every
cached node it inserted or matched) or a prefix (token ids from the start of a prompt), exactly one of them.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterable
from dataclasses import dataclass, field

from plait.cache import PrefixKV
from plait.engine.engine_policy import EnginePolicy
from plait.engine.errors import InvalidRequestError
from plait.engine.request import priority_key
from plait.engine.sequence import RequestState

Priority = tuple[float, ...]  # as ``priority_key`` gives it: lower runs first


def _set(command: object, name: str, value: object) -> None:
    object.__setattr__(command, name, value)  # normalising a frozen dataclass's field in its __post_init__


def _check_target(command: object, program_id: str | None, prefix_token_ids: Iterable[int] | None) -> None:
    """Exactly one target; a prefix becomes a tuple of ints (the command stays immutable)."""
    if (program_id is None) == (prefix_token_ids is None):
        raise InvalidRequestError("program_id", "name exactly one of program_id and prefix_token_ids")
    if program_id is not None and not (isinstance(program_id, str) and program_id):
        raise InvalidRequestError("program_id", f"must be a non-empty string, got {program_id!r}")
    if prefix_token_ids is not None:
        ids = tuple(prefix_token_ids)
        if not ids or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in ids):
            raise InvalidRequestError("prefix_token_ids", "must be a non-empty sequence of token ids (ints >= 0)")
        _set(command, "prefix_token_ids", ids)


def _check_program(program_id: object) -> None:
    if not (isinstance(program_id, str) and program_id):
        raise InvalidRequestError("program_id", f"must be a non-empty string, got {program_id!r}")


def _check_seconds(name: str, value: object, *, optional: bool = False) -> None:
    """A duration: a number >= 0 (infinity allowed), never NaN or a bool."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise InvalidRequestError(name, f"must be a number >= 0, got {value!r}")


def _priority(command: object, priority: object) -> None:
    """None (holds against every request) or a priority, normalised to its key."""
    if priority is not None:
        try:
            _set(command, "priority", priority_key(priority))  # type: ignore[arg-type]
        except ValueError as error:
            raise InvalidRequestError("priority", str(error)) from None


@dataclass(frozen=True, slots=True)
class AddRequest:
    """Admit a prepared request (``Engine.generate`` sends it after ``EngineCore.prepare`` validated it and registered
    the stream its deltas go to)."""

    state: RequestState


@dataclass(frozen=True, slots=True)
class Abort:
    """Cancel a request: its streams end with ``finish_reason == 'abort'`` and its KV is freed. Unknown ids are
    ignored (it may have finished meanwhile)."""

    request_id: str


@dataclass(frozen=True, slots=True)
class HintNextUse:
    """The target's KV is needed again in ``steps`` steps of its program and/or ``seconds`` (None: unknown). Under
    ``next-use`` eviction, the KV whose next use is farthest goes first."""

    program_id: str | None = None
    prefix_token_ids: tuple[int, ...] | None = None
    steps: float | None = None
    seconds: float | None = None

    def __post_init__(self) -> None:
        _check_target(self, self.program_id, self.prefix_token_ids)
        _check_seconds("steps", self.steps, optional=True)
        _check_seconds("seconds", self.seconds, optional=True)


@dataclass(frozen=True, slots=True)
class Pin:
    """Keep the target's KV resident for ``ttl_s`` seconds, within the pin budget (refused beyond it: a
    ``pin_refused`` cache event names the program). ``priority``: that of the program's next request; a waiting
    request may take pinned KV whose every running pinner it outranks. None holds against every request."""

    ttl_s: float
    program_id: str | None = None
    prefix_token_ids: tuple[int, ...] | None = None
    priority: Priority | None = None

    def __post_init__(self) -> None:
        _check_target(self, self.program_id, self.prefix_token_ids)
        _check_seconds("ttl_s", self.ttl_s)
        _priority(self, self.priority)


@dataclass(frozen=True, slots=True)
class Unpin:
    """End the target's pin now (its KV stays cached, evictable again)."""

    program_id: str | None = None
    prefix_token_ids: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        _check_target(self, self.program_id, self.prefix_token_ids)


@dataclass(frozen=True, slots=True)
class Prefetch:
    """Start loading the target's KV back from the host tier before it is needed (ignored without a host tier)."""

    program_id: str | None = None
    prefix_token_ids: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        _check_target(self, self.program_id, self.prefix_token_ids)


@dataclass(frozen=True, slots=True)
class Reserve:
    """Hold ``slots`` of KV memory for ``program_id``'s next call (the program waits on a tool) out of every
    admission that call would go before, until the request naming ``call_id`` is admitted (None: any request of the
    program), an ``Unreserve``, or ``ttl_s``. ``priority``: that of the next call (None: it holds against every
    admission). A reservation for the same (program, call) replaces the earlier one."""

    program_id: str
    slots: int
    priority: Priority | None = None
    ttl_s: float = 60.0
    call_id: str | None = None

    def __post_init__(self) -> None:
        _check_program(self.program_id)
        if isinstance(self.slots, bool) or not isinstance(self.slots, int) or self.slots < 0:
            raise InvalidRequestError("slots", f"must be an int >= 0, got {self.slots!r}")
        _check_seconds("ttl_s", self.ttl_s)
        _priority(self, self.priority)


@dataclass(frozen=True, slots=True)
class Unreserve:
    """End ``call_id``'s reservation (None: every reservation of the program)."""

    program_id: str
    call_id: str | None = None

    def __post_init__(self) -> None:
        _check_program(self.program_id)


@dataclass(frozen=True, slots=True)
class ForgetProgram:
    """The program finished: drop its next-use hint and its tags on cached KV (the KV itself stays cached)."""

    program_id: str

    def __post_init__(self) -> None:
        _check_program(self.program_id)


@dataclass(frozen=True, slots=True)
class SetPolicy:
    """Schedule and evict under ``policy`` from the next step on (validated here)."""

    policy: EnginePolicy

    def __post_init__(self) -> None:
        if not isinstance(self.policy, EnginePolicy):
            raise InvalidRequestError("policy", f"must be an EnginePolicy, got {type(self.policy).__name__}")
        self.policy.validate()


@dataclass(frozen=True, slots=True)
class FlushPrefixCache:
    """Drop every cached prefix not in use (pinned ones and host copies too) and every reservation. ``freed``
    resolves to the device slots freed once the engine thread applied it (``EngineStoppedError`` if it never will)."""

    freed: concurrent.futures.Future[int] = field(default_factory=concurrent.futures.Future, compare=False)


def _check_token_ids(name: str, token_ids: tuple[int, ...]) -> None:
    if any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in token_ids):
        raise InvalidRequestError(name, "must be a sequence of token ids (ints >= 0)")


@dataclass(frozen=True, slots=True)
class ResidentPrefix:
    """How many leading tokens of ``token_ids`` have their KV on the device now (a read-only look: routing asks
    each replica). ``result`` resolves once the engine thread applied it."""

    token_ids: tuple[int, ...]
    result: concurrent.futures.Future[int] = field(default_factory=concurrent.futures.Future, compare=False)

    def __post_init__(self) -> None:
        _set(self, "token_ids", tuple(self.token_ids))
        _check_token_ids("token_ids", self.token_ids)


@dataclass(frozen=True, slots=True)
class ExportPrefix:
    """Copy the KV of the longest device-resident prefix of ``token_ids`` to host memory (``kv_transfer.py``):
    ``result`` resolves to a ``PrefixKV``, empty when nothing is cached."""

    token_ids: tuple[int, ...]
    result: concurrent.futures.Future[PrefixKV] = field(default_factory=concurrent.futures.Future, compare=False)

    def __post_init__(self) -> None:
        _set(self, "token_ids", tuple(self.token_ids))
        _check_token_ids("token_ids", self.token_ids)


@dataclass(frozen=True, slots=True)
class ImportPrefix:
    """Insert KV another engine of the same model exported as a cached prefix (of ``program_id``, if given):
    ``result`` resolves to the tokens cached from it (0: no room)."""

    kv: PrefixKV
    program_id: str | None = None
    result: concurrent.futures.Future[int] = field(default_factory=concurrent.futures.Future, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.kv, PrefixKV):
            raise InvalidRequestError("kv", f"must be a PrefixKV, got {type(self.kv).__name__}")
        if self.program_id is not None:
            _check_program(self.program_id)


@dataclass(frozen=True, slots=True)
class Stop:
    """End the step loop (``Engine.close`` sends it): requests still in flight end with ``EngineStoppedError``, and
    commands queued behind it are never applied."""


EngineCommand = (
    AddRequest
    | Abort
    | HintNextUse
    | Pin
    | Unpin
    | Prefetch
    | Reserve
    | Unreserve
    | ForgetProgram
    | SetPolicy
    | ResidentPrefix
    | ExportPrefix
    | ImportPrefix
    | FlushPrefixCache
    | Stop
)
ENGINE_COMMANDS: tuple[type, ...] = EngineCommand.__args__  # type: ignore[attr-defined]
