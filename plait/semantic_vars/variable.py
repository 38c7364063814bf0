"""``SemanticVariable``: a named value that one call produces and later calls consume.

A variable is created unbound; its producer binds it (or fails it) exactly once. Consumers wait on it with
``await variable`` (or ``await variable.get()``), subscribe to its text as it is generated with ``stream()``, or
register a callback with ``on_settled`` (how the runtime learns that nodes became ready). A variable lives in one
event loop: the one that first waits on it.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncIterator, Callable, Generator
from dataclasses import dataclass
from typing import Any

from plait.semantic_vars.errors import VariableFailedError
from plait.semantic_vars.template import render_value


@dataclass(frozen=True)
class Generation:
    """A generated value's provenance: the prompt the call continued, as pieces (texts and token id lists, the form of
    ``GenerateRequest.prompt_pieces``), and the ids it generated, which decode exactly to the value."""

    prompt: list[str | list[int]]
    token_ids: list[int]


class VarState(enum.Enum):
    UNBOUND = "unbound"
    BOUND = "bound"
    FAILED = "failed"


_UNSET = object()


class SemanticVariable:
    """A named value with a future. ``producer`` is the node id that binds it (``None`` for program inputs).

    ``schema`` is the JSON schema of the value when it is known (a tool's return type, a call's JSON schema),
    used to type-check tool arguments before anything runs. ``observed`` records that a program looked at the
    outcome, which is how a program "handles" a failure (see the runtime's failure policy).
    """

    def __init__(
        self, name: str, *, producer: str | None = None, schema: dict[str, Any] | None = None, value: Any = _UNSET
    ) -> None:
        self.name = name
        self.producer = producer
        self.schema = schema
        self.consumers: list[str] = []
        self.state = VarState.UNBOUND
        self.error: VariableFailedError | None = None
        self.metadata: dict[str, Any] = {}  # e.g. scores of a select, finish reasons
        # How an LLM call generated the value, when its ids decode to it exactly (set by the runtime before binding):
        # a later prompt that continues the same prompt with the value carries these ids, and matches their KV.
        self.generation: Generation | None = None
        self.observed = False
        self._value: Any = None
        self._text: list[str] = []  # streamed text so far
        self._future: asyncio.Future[Any] | None = None
        self._callbacks: list[Callable[[SemanticVariable], None]] = []
        self._streams: list[asyncio.Queue[str | None]] = []
        self._text_listeners: list[Callable[[str], None]] = []
        if value is not _UNSET:
            self.bind(value)

    def __repr__(self) -> str:
        shown = f" = {self._value!r:.60}" if self.state is VarState.BOUND else ""
        return f"<SemanticVariable {self.name} {self.state.value}{shown}>"

    # ---- producer side ---------------------------------------------------------------------------------------------

    @property
    def is_settled(self) -> bool:
        return self.state is not VarState.UNBOUND

    def bind(self, value: Any) -> None:
        """Give the variable its value. Binding twice is a bug in the caller."""
        self._settle(VarState.BOUND)
        self._value = value
        if self._future is not None and not self._future.done():
            self._future.set_result(value)
        self._notify()

    def fail(self, reason: str) -> None:
        """Mark the variable as never getting a value (its producer failed or was cancelled)."""
        if self.is_settled:
            return
        self._settle(VarState.FAILED)
        self.error = VariableFailedError(self.name, reason, producer=self.producer)
        if self._future is not None and not self._future.done():
            self._future.set_exception(self.error)
            self._future.exception()  # retrieved here: an unobserved failure must not log "never retrieved"
        self._notify()

    def publish(self, text: str) -> None:
        """Stream a piece of generated text to subscribers (before ``bind``)."""
        if text and not self.is_settled:
            self._text.append(text)
            for queue in self._streams:
                queue.put_nowait(text)
            for listener in list(self._text_listeners):
                listener(text)

    def on_settled(self, callback: Callable[[SemanticVariable], None]) -> None:
        """Call ``callback(self)`` once the variable is bound or failed (at once if it already is)."""
        if self.is_settled:
            callback(self)
        else:
            self._callbacks.append(callback)

    def on_text(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(piece)`` synchronously for every piece published from now on, until the variable settles.

        An observer (an event stream, a log): unlike ``stream()`` it does not count as the program looking at the
        outcome, and it sees each piece in publication order, before anything that happens after ``publish``.
        """
        if not self.is_settled:
            self._text_listeners.append(listener)

    def _settle(self, state: VarState) -> None:
        if self.is_settled:
            raise RuntimeError(f"variable {self.name!r} is already {self.state.value}")
        self.state = state

    def _notify(self) -> None:
        for queue in self._streams:
            queue.put_nowait(None)
        self._streams.clear()
        self._text_listeners.clear()
        callbacks, self._callbacks = self._callbacks, []
        # Every callback runs even if one raises (a consumer left waiting forever is worse); the first error is
        # re-raised afterwards, to the producer that settled the variable.
        first_error: BaseException | None = None
        for callback in callbacks:
            try:
                callback(self)
            except Exception as error:
                first_error = first_error or error
        if first_error is not None:
            raise first_error

    # ---- consumer side ---------------------------------------------------------------------------------------------

    @property
    def value(self) -> Any:
        """The bound value; raises if the variable failed or is not bound yet."""
        self.observed = True
        if self.state is VarState.BOUND:
            return self._value
        if self.state is VarState.FAILED:
            assert self.error is not None
            raise self.error
        raise LookupError(f"variable {self.name!r} is not bound yet (await it)")

    async def get(self) -> Any:
        """Wait for the value. Raises ``VariableFailedError`` if the producer failed."""
        self.observed = True
        if self.is_settled:
            return self.value
        if self._future is None:
            self._future = asyncio.get_running_loop().create_future()
        return await asyncio.shield(self._future)

    def __await__(self) -> Generator[Any, None, Any]:
        return self.get().__await__()

    async def stream(self) -> AsyncIterator[str]:
        """Yield the variable's text as it is generated (what was generated before subscribing comes first).

        Ends when the variable is bound; raises ``VariableFailedError`` if it fails. For a value that was not
        streamed (a tool result, an input), yields its text once.
        """
        self.observed = True
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        if self._text:
            queue.put_nowait("".join(self._text))
        if self.is_settled:
            queue.put_nowait(None)
        else:
            self._streams.append(queue)
        streamed = bool(self._text)
        while (piece := await queue.get()) is not None:
            streamed = True
            yield piece
        if self.state is VarState.FAILED:
            assert self.error is not None
            raise self.error
        if not streamed and self._value is not None:
            yield render_value(self._value)  # the same text the value contributes to a prompt
