"""Memory reserved for a program's next call while the program waits on a tool (program-level admission control).

When a program's tool returns, its next call extends the program's context: the tool's result and the previous
output join the prompt, and the call then decodes. Admission only sees requests that exist, so while the tool runs
the memory that call will need goes to calls that come after it in priority (new programs' first calls), and when it
returns it finds the pool full: it waits, or evicts other programs' KV that is then computed again. A reservation
holds that many slots out of the room of every admission the program's next call would go before; a call that
outranks it, the program's own call, and running requests are not held back. It ends when the program's next call is
admitted, when the planner takes it back, or when its TTL runs out (a tool that never returns does not hold memory
for ever).
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
    """The reservations of programs waiting on tools, by program id."""

    def __init__(self) -> None:
        self._by_program: dict[str, Reservation] = {}

    def __len__(self) -> int:
        return len(self._by_program)

    def reserve(self, program_id: str, slots: int, priority: Priority, ttl_s: float) -> None:
        """Hold ``slots`` for ``program_id``'s next call (replacing an earlier reservation) for at most ``ttl_s``."""
        if slots <= 0 or ttl_s <= 0:
            self._by_program.pop(program_id, None)
            return
        self._by_program[program_id] = Reservation(priority, slots, time.monotonic() + ttl_s)

    def release(self, program_id: str | None) -> None:
        """The program's call was admitted, or the program no longer needs the memory."""
        if program_id is not None and self._by_program:
            self._by_program.pop(program_id, None)

    def held_against(self, priority: Priority, program_id: str | None) -> int:
        """Slots an admission of ``priority`` (for ``program_id``) must leave: every other program's reservation that
        it does not outrank."""
        if not self._by_program:
            return 0
        self._drop_lapsed(time.monotonic())
        return sum(r.slots for p, r in self._by_program.items() if p != program_id and not priority < r.priority)

    def total(self) -> int:
        """Slots reserved now (lapsed reservations are dropped first)."""
        self._drop_lapsed(time.monotonic())
        return sum(r.slots for r in self._by_program.values())

    def clear(self) -> None:
        """Drop every reservation (between benchmark runs, with the prefix cache)."""
        self._by_program.clear()

    def _drop_lapsed(self, now: float) -> None:
        lapsed = [p for p, r in self._by_program.items() if r.until <= now]
        for program in lapsed:
            del self._by_program[program]
