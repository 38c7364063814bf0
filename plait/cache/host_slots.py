"""Host-tier slot allocation in contiguous runs: each run of host slots moves to or from the device as one copy per
layer, so the fewer runs a prefix's rows take, the fewer copies (and host launches) a write-back or load costs.

Free space is a sorted list of disjoint ``[start, end)`` intervals, merged with their neighbours on release. ``alloc``
takes the first interval long enough (first fit), else the longest intervals in turn. Slots are 1-based, as in the
device pool (row 0 of a ``KVPool`` is its padding slot).
"""

from __future__ import annotations

import bisect

import torch


def contiguous_runs(slots: torch.Tensor) -> list[tuple[int, int, int]]:
    """``(first_slot, length, offset)`` for each run of consecutive values in ``slots`` (offset: its index there)."""
    if slots.numel() == 0:
        return []
    values = slots.tolist()
    runs: list[tuple[int, int, int]] = []
    start = 0
    for i in range(1, len(values) + 1):
        if i == len(values) or values[i] != values[i - 1] + 1:
            runs.append((values[start], i - start, start))
            start = i
    return runs


class HostSlotAllocator:
    def __init__(self, num_slots: int) -> None:
        self.num_slots = num_slots
        self._starts: list[int] = [1] if num_slots > 0 else []  # free intervals, sorted by start
        self._ends: list[int] = [num_slots + 1] if num_slots > 0 else []
        self.num_free = num_slots

    @property
    def num_used(self) -> int:
        return self.num_slots - self.num_free

    @property
    def num_runs_free(self) -> int:
        """Free intervals: 1 when the free space is one run (a measure of fragmentation)."""
        return len(self._starts)

    def alloc(self, n: int) -> torch.Tensor:
        """``n`` free slots in ascending order, in as few runs as first fit allows. Raises ``MemoryError`` when fewer
        than ``n`` are free (the caller checks ``num_free`` first)."""
        if n > self.num_free:
            raise MemoryError(f"asked for {n} host slots, {self.num_free} free")
        if n <= 0:
            return torch.empty(0, dtype=torch.int64)
        for i, (start, end) in enumerate(zip(self._starts, self._ends, strict=True)):
            if end - start >= n:
                self._take(i, n)
                return torch.arange(start, start + n, dtype=torch.int64)
        pieces: list[torch.Tensor] = []
        wanted = n
        while wanted:  # no interval fits: the longest ones, each taken whole or in part
            i = max(range(len(self._starts)), key=lambda k: self._ends[k] - self._starts[k])
            start = self._starts[i]
            take = min(wanted, self._ends[i] - start)
            self._take(i, take)
            pieces.append(torch.arange(start, start + take, dtype=torch.int64))
            wanted -= take
        return torch.sort(torch.cat(pieces)).values

    def _take(self, i: int, n: int) -> None:
        """Take the first ``n`` slots of free interval ``i``."""
        self._starts[i] += n
        self.num_free -= n
        if self._starts[i] == self._ends[i]:
            del self._starts[i], self._ends[i]

    def release(self, slots: torch.Tensor) -> None:
        """Give back slots taken by ``alloc`` (any order; each at most once)."""
        for first, length, _ in contiguous_runs(torch.sort(slots).values):
            self._free_run(first, first + length)

    def _free_run(self, start: int, end: int) -> None:
        if not 1 <= start < end <= self.num_slots + 1:
            raise ValueError(f"host slots [{start}, {end}) are outside the pool [1, {self.num_slots + 1})")
        i = bisect.bisect_left(self._starts, start)
        if (i > 0 and self._ends[i - 1] > start) or (i < len(self._starts) and self._starts[i] < end):
            raise ValueError(f"host slots [{start}, {end}) are already free")
        self.num_free += end - start
        joins_left = i > 0 and self._ends[i - 1] == start
        joins_right = i < len(self._starts) and self._starts[i] == end
        if joins_left and joins_right:
            self._ends[i - 1] = self._ends[i]
            del self._starts[i], self._ends[i]
        elif joins_left:
            self._ends[i - 1] = end
        elif joins_right:
            self._starts[i] = start
        else:
            self._starts.insert(i, start)
            self._ends.insert(i, end)
