"""The per-request table ``req_to_token[row, position] -> KV slot``, one row per running request.

Attention reads a request's keys and values by gathering the pool at the slots of its row, so the table is the
only thing that changes when a prefix is shared or a request grows. Rows are recycled through a free list; a row's
epoch counts its allocations, so ``(row, epoch)`` names one holder of the row for as long as it holds it.
"""

from __future__ import annotations

import torch


class ReqToTokenPool:
    """A ``[max_requests, max_context]`` int64 table on the model's device plus a free-row list."""

    def __init__(self, max_requests: int, max_context: int, device: torch.device | str = "cpu") -> None:
        self.max_requests = max_requests
        self.max_context = max_context
        self.table = torch.zeros(max_requests, max_context, dtype=torch.int64, device=device)
        self._free_rows = list(range(max_requests - 1, -1, -1))
        self._epochs = [0] * max_requests

    @property
    def num_free_rows(self) -> int:
        return len(self._free_rows)

    def alloc_row(self) -> int | None:
        """A free row index, or ``None`` when every row is taken (the caller waits). The row's epoch advances."""
        if not self._free_rows:
            return None
        row = self._free_rows.pop()
        self._epochs[row] += 1
        return row

    def epoch(self, row: int) -> int:
        """How many times ``row`` has been allocated: different for each holder the row has had."""
        return self._epochs[row]

    def free_row(self, row: int) -> None:
        if row in self._free_rows:
            raise RuntimeError(f"req_to_token row {row} freed twice")
        self._free_rows.append(row)

    def write(self, row: int, start: int, slots: torch.Tensor) -> None:
        """Record ``slots`` as the KV of positions ``start .. start + len(slots) - 1`` of ``row``."""
        if self.table.is_cuda and not slots.is_cuda:
            slots = slots.pin_memory()  # a pageable copy would synchronise the stream (see engine/host_copy.py)
        self.table[row, start : start + slots.numel()] = slots.to(self.table.device, non_blocking=True)

    def read(self, row: int, length: int) -> torch.Tensor:
        return self.table[row, :length]
