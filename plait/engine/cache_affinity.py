"""Cache affinity: among waiting sequences whose priorities are close, the one with the longest prefix already on the
device is admitted first (``Admission.waiting_order`` decides when this applies)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from plait.engine.sequence import Sequence

AFFINITY_SCAN = 32  # cache affinity reorders at most this many sequences at the head of the queue


def affinity_order(
    waiting: list[Sequence], window: float, resident_length: Callable[[Sequence], int]
) -> list[Sequence]:
    """``waiting`` (in priority order) with the sequences near its head that share a priority window reordered
    longest-resident-prefix first; ``resident_length`` gives a sequence's leading tokens on the device (a radix walk,
    so it is asked only where it can reorder)."""
    head, rest = waiting[:AFFINITY_SCAN], waiting[AFFINITY_SCAN:]
    # Bands in queue order: a band starts at a sequence and takes those after it whose priorities differ only in the
    # last (time) component, by less than the window. Only the planner's (user priority, time) priorities band; a
    # plain priority (one number), or a promoted sequence, is a band of its own (its place is kept).
    bands: list[int] = []
    start: tuple[float, ...] | None = None
    for seq in head:
        priority = seq.state.priority
        joins = (
            start is not None
            and not seq.promoted
            and len(priority) >= 2
            and priority[:-1] == start[:-1]
            and priority[-1] - start[-1] < window
        )
        if not joins:
            start = priority if len(priority) >= 2 and not seq.promoted else None
        bands.append(bands[-1] + (not joins) if bands else 0)
    if not bands or bands[-1] == len(head) - 1:
        return list(waiting)  # every band holds one sequence: nothing to reorder
    # Residency is looked up only where it can reorder: in bands of more than one sequence.
    sizes = Counter(bands)
    resident = [resident_length(seq) if sizes[band] > 1 else 0 for seq, band in zip(head, bands, strict=True)]
    # sorted() is stable: inside a band with equal residency the priority order stands.
    order = sorted(range(len(head)), key=lambda i: (bands[i], -resident[i]))
    return [head[i] for i in order] + rest
