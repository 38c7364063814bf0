"""Free-slot allocator for the KV pool, with a reference count per slot.

Invariants (checked by ``check``):
- slot 0 is reserved as the padding slot: padded rows write their K/V there and it is never handed out;
- a slot is free exactly when its reference count is 0, and then it appears once in the free list;
- ``num_free + num_used == num_slots`` where ``num_slots`` excludes the padding slot.

Reference counts let several holders share one slot (the ``n`` samples of one prompt, and later the radix tree
plus the requests reading a cached prefix); a slot returns to the free list when its last holder releases it.
"""

from __future__ import annotations

import torch


class OutOfSlotsError(RuntimeError):
    """Asked for more slots than are free. The scheduler checks capacity first, so this signals a bug."""


class SlotAllocator:
    """Hands out KV slot indices in ``[1, num_slots]`` (0 is the padding slot)."""

    PADDING_SLOT = 0

    def __init__(self, num_slots: int, device: torch.device | str = "cpu") -> None:
        if num_slots < 1:
            raise ValueError(f"num_slots must be >= 1, got {num_slots}")
        self.num_slots = num_slots
        self.device = torch.device(device)
        # Kept on the CPU: allocation is bookkeeping; only the resulting index tensors travel to the device.
        self._refcount = torch.zeros(num_slots + 1, dtype=torch.int32)
        self._free = torch.arange(1, num_slots + 1, dtype=torch.int64)

    @property
    def num_free(self) -> int:
        return int(self._free.numel())

    @property
    def num_used(self) -> int:
        return self.num_slots - self.num_free

    def alloc(self, n: int) -> torch.Tensor:
        """Take ``n`` free slots (reference count 1 each); returns an int64 CPU tensor of slot indices."""
        if n < 0:
            raise ValueError(f"cannot allocate a negative number of slots ({n})")
        if n > self.num_free:
            raise OutOfSlotsError(f"asked for {n} KV slots, {self.num_free} free")
        slots, self._free = self._free[:n], self._free[n:]
        self._refcount[slots] = 1
        return slots

    def retain(self, slots: torch.Tensor) -> None:
        """Add one holder to each of ``slots`` (which must be in use)."""
        if slots.numel() == 0:
            return
        slots = slots.to(torch.int64).cpu()
        if bool((self._refcount[slots] <= 0).any()):
            raise RuntimeError("retain() on a free KV slot")
        self._refcount.index_add_(0, slots, torch.ones_like(slots, dtype=torch.int32))

    def release(self, slots: torch.Tensor) -> None:
        """Drop one holder from each of ``slots``; slots with no holder left return to the free list."""
        if slots.numel() == 0:
            return
        slots = slots.to(torch.int64).cpu()
        unique, times = torch.unique(slots, return_counts=True)
        # Check before changing anything, so a rejected release leaves the allocator as it was.
        if bool((self._refcount[unique] < times).any()):
            raise RuntimeError("release() of a KV slot that was already free (double free)")
        self._refcount[unique] -= times.to(torch.int32)
        freed = unique[self._refcount[unique] == 0]
        if freed.numel():
            self._free = torch.cat([self._free, freed])

    def refcount(self, slots: torch.Tensor) -> torch.Tensor:
        return self._refcount[slots]

    def check(self) -> None:
        """Assert the allocator's invariants (used by tests and debug mode)."""
        free = self._free
        assert free.numel() == torch.unique(free).numel(), "a slot appears twice in the free list"
        assert not bool((free == self.PADDING_SLOT).any()), "the padding slot is in the free list"
        assert bool((self._refcount[free] == 0).all()), "a free slot has holders"
        used = int((self._refcount[1:] > 0).sum())
        assert used + free.numel() == self.num_slots, "free + used != pool size"
        assert int(self._refcount[self.PADDING_SLOT]) == 0, "the padding slot has holders"
