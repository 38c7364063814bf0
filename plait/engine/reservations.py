"""Memory reserved for a program's next call while the program waits on a tool (program-level admission control).

When a program's tool returns, its next call extends the program's context: the tool's result and the previous
output join the prompt, and the call then decodes. Admission only sees requests that exist, so while the tool runs
the memory that call will need goes to calls that come after it in priority (new programs' first calls), and when it
returns it finds the pool full: it waits, or evicts other programs' KV that is then computed again. A reservation
holds that many slots out of the room of every admission the program's next call would go before; a call that
outranks it, the program's own call, and running requests are not held back. It ends when the program's next call is
admitted, when the planner takes it back, or when its TTL runs out (a tool that never returns does not hold memory
for ever).

A program waiting on several tools at once (a fan-out whose branches each call one) has one reservation per call,
keyed by the call's id (``GenerateRequest.call_id``): admitting one branch's call ends that call's reservation only.
A reservation without a call id is the program's, and any admission of the program ends it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from plait.cache.prefix_cache import Priority


@dataclass(frozen=True)
class Reservation:
    priority: Priority  # that of the program's next call (lower goes first)
    slots: int
    until: float  # time.monotonic() when it lapses


class Reservations:
    """The reservations of programs waiting on tools, by (program id, call id or None)."""

    def __init__(self) -> None:
        self._held: dict[tuple[str, str | None], Reservation] = {}

    def __len__(self) -> int:
        return len(self._held)

    def reserve(
        self, program_id: str, slots: int, priority: Priority, ttl_s: float, call_id: str | None = None
    ) -> None:
        """Hold ``slots`` for ``program_id``'s next call ``call_id`` (None: any call of the program; replacing an
        earlier reservation of that call) for at most ``ttl_s``."""
        key = (program_id, call_id)
        if slots <= 0 or ttl_s <= 0:
            self._held.pop(key, None)
            return
        self._held[key] = Reservation(priority, slots, time.monotonic() + ttl_s)

    def release(self, program_id: str | None, call_id: str | None = None) -> None:
        """A call of the program was admitted (``call_id``: which one; it ends that call's reservation and the
        program's), or the program no longer needs the memory (None: every reservation of the program ends)."""
        if program_id is None or not self._held:
            return
        if call_id is None:
            for key in [key for key in self._held if key[0] == program_id]:
                del self._held[key]
        else:
            self._held.pop((program_id, call_id), None)
            self._held.pop((program_id, None), None)

    def cancel(self, program_id: str, call_id: str | None = None) -> None:
        """The planner takes ``call_id``'s reservation back (None: every reservation of the program)."""
        if call_id is None:
            self.release(program_id)
        else:
            self._held.pop((program_id, call_id), None)

    def held_against(self, priority: Priority, program_id: str | None) -> int:
        """Slots an admission of ``priority`` (for ``program_id``) must leave: every other program's reservation that
        it does not outrank."""
        if not self._held:
            return 0
        self._drop_lapsed(time.monotonic())
        return sum(r.slots for (p, _), r in self._held.items() if p != program_id and not priority < r.priority)

    def total(self) -> int:
        """Slots reserved now (lapsed reservations are dropped first)."""
        self._drop_lapsed(time.monotonic())
        return sum(r.slots for r in self._held.values())

    def clear(self) -> None:
        """Drop every reservation (between benchmark runs, with the prefix cache)."""
        self._held.clear()

    def _drop_lapsed(self, now: float) -> None:
        for key in [key for key, r in self._held.items() if r.until <= now]:
            del self._held[key]
