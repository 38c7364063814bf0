"""The host (CPU) tier of the KV cache: a second pool that evicted prefixes are written back to and loaded from.

On a GPU both directions are asynchronous and stream-ordered, so the engine thread never waits for PCIe:

* write-back gathers the evicted rows on the *current* (compute) stream, so any later kernel that reuses those device
  slots runs after the gather; a side stream then copies the gathered rows into page-locked host memory;
* load-back copies host rows to the device and scatters them into their new slots on the same side stream, so a load
  always runs after the write-back that produced its rows (and after any earlier copy that reused its host slots).

The host pool is token-major (``[slot, layer, K/V, head, dim]``) and host slots are handed out in contiguous runs
(``HostSlotAllocator``), so a prefix's rows for every layer lie in a few contiguous runs of page-locked memory, and
each run crosses PCIe as one copy (no host-side gather or scatter, no per-call pinning); on the device a staging
buffer of the same layout is gathered from or scattered to the per-layer pool. On the CPU, write-back is a plain copy
and load-back runs on a worker thread. ``LoadJob.done()`` says when device rows are ready;
the radix cache polls it and never hands out a node whose load is in flight.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import torch

from plait.cache.host_slots import HostSlotAllocator, contiguous_runs
from plait.cache.kv_pool import KVPool


class LoadJob:
    """A host-to-device copy in flight."""

    def __init__(self, future: Future | None = None, event: torch.cuda.Event | None = None) -> None:
        self._future = future
        self._event = event

    def done(self) -> bool:
        if self._event is not None:
            return bool(self._event.query())
        return self._future is None or self._future.done()

    def wait(self) -> None:
        if self._event is not None:
            self._event.synchronize()
        elif self._future is not None:
            self._future.result()


class HostKVPool:
    """The host tier's rows, token-major: ``buffer[slot]`` holds one token's K and V for every layer, contiguous.
    ``k[layer]`` and ``v[layer]`` are ``[slot, kv_heads, head_dim]`` views, as in ``KVPool``."""

    def __init__(self, like: KVPool, num_slots: int, pin_memory: bool) -> None:
        self.num_layers, self.num_slots = like.num_layers, num_slots
        self.num_kv_heads, self.head_dim, self.dtype = like.num_kv_heads, like.head_dim, like.dtype
        shape = (num_slots + 1, like.num_layers, 2, like.num_kv_heads, like.head_dim)  # +1: slots are 1-based
        self.buffer = torch.zeros(shape, dtype=like.dtype, pin_memory=pin_memory)
        self.k = [self.buffer[:, layer, 0] for layer in range(like.num_layers)]
        self.v = [self.buffer[:, layer, 1] for layer in range(like.num_layers)]
        self.bytes_per_token = like.bytes_per_token


class HostTier:
    def __init__(self, device_pool: KVPool, num_slots: int) -> None:
        self.device_pool = device_pool
        on_gpu = device_pool.device.type == "cuda"
        self.pool = HostKVPool(device_pool, num_slots, pin_memory=on_gpu)
        self.allocator = HostSlotAllocator(num_slots)
        self.bytes_moved = 0
        self._stream = torch.cuda.Stream(device_pool.device) if on_gpu else None
        self._worker = None if on_gpu else ThreadPoolExecutor(max_workers=1, thread_name_prefix="plait-kv-load")
        self._queued: list[tuple[torch.Tensor, torch.Tensor]] = []  # (device slots, host slots) not copied yet

    @property
    def num_free(self) -> int:
        return self.allocator.num_free

    def write_back(self, device_slots: torch.Tensor) -> torch.Tensor:
        """Allocate host slots for the rows at ``device_slots`` (the caller checked ``num_free``) and queue their copy;
        returns the host slots, position by position. ``flush_writes`` must run before those device slots are
        reused (``RadixCache.evict`` calls it once for all the nodes it evicted)."""
        host_slots = self.allocator.alloc(int(device_slots.numel()))  # ascending, in few runs
        self.bytes_moved += int(device_slots.numel()) * self.pool.bytes_per_token
        self._queued.append((device_slots, host_slots))
        return host_slots

    def flush_writes(self) -> None:
        """Start the copies ``write_back`` queued. On a GPU the rows are gathered into a token-major staging buffer on
        the compute stream (kernels that later overwrite those device slots come after it), then each run of host
        slots is one copy into page-locked memory on the side stream; on the CPU plain copies."""
        if not self._queued:
            return
        device_slots = torch.cat([d for d, _ in self._queued])
        host_slots = torch.cat([h for _, h in self._queued])
        self._queued.clear()
        if self._stream is None:
            for layer in range(self.device_pool.num_layers):
                self.pool.k[layer][host_slots] = self.device_pool.k[layer][device_slots]
                self.pool.v[layer][host_slots] = self.device_pool.v[layer][device_slots]
            return
        index = device_slots.pin_memory().to(self.device_pool.device, non_blocking=True)
        staged = self._staging(int(index.numel()))
        for layer, (k, v) in enumerate(zip(self.device_pool.k, self.device_pool.v, strict=True)):
            torch.index_select(k, 0, index, out=staged[:, layer, 0])
            torch.index_select(v, 0, index, out=staged[:, layer, 1])
        self._after_compute_stream()
        with torch.cuda.stream(self._stream):
            staged.record_stream(self._stream)  # freed by the allocator only after these copies ran
            for first, length, offset in contiguous_runs(host_slots):
                self.pool.buffer[first : first + length].copy_(staged[offset : offset + length], non_blocking=True)

    def load(self, host_slots: torch.Tensor, device_slots: torch.Tensor) -> LoadJob:
        """Start copying host rows into (already allocated) device slots; load several prefixes in one call (their
        slots concatenated): each run of host slots is one copy, then one scatter per layer."""
        self.bytes_moved += int(host_slots.numel()) * self.pool.bytes_per_token
        self.flush_writes()  # a load may read rows whose write-back is still queued
        if self._stream is None:
            assert self._worker is not None
            return LoadJob(future=self._worker.submit(self._copy_in, host_slots, device_slots))
        # The new device slots may have been freed by work the compute stream has not run yet (an eviction's gather,
        # a forward pass reading a finished sequence's KV): the scatter comes after all of it.
        self._after_compute_stream()
        with torch.cuda.stream(self._stream):
            index = device_slots.pin_memory().to(self.device_pool.device, non_blocking=True)
            staged = self._staging(int(index.numel()))
            for first, length, offset in contiguous_runs(host_slots):
                staged[offset : offset + length].copy_(self.pool.buffer[first : first + length], non_blocking=True)
            for layer, (k, v) in enumerate(zip(self.device_pool.k, self.device_pool.v, strict=True)):
                k.index_copy_(0, index, staged[:, layer, 0])
                v.index_copy_(0, index, staged[:, layer, 1])
            event = torch.cuda.Event()
            event.record(self._stream)
        return LoadJob(event=event)

    def synchronize(self) -> None:
        """Start queued write-backs and wait for every copy in flight (before reading the host pool on the CPU)."""
        self.flush_writes()
        if self._stream is not None:
            self._stream.synchronize()

    def _staging(self, n: int) -> torch.Tensor:
        """A device buffer of ``n`` token-major rows (the host pool's layout)."""
        pool = self.device_pool
        shape = (n, pool.num_layers, 2, pool.num_kv_heads, pool.head_dim)
        return torch.empty(shape, dtype=pool.dtype, device=pool.device)

    def _after_compute_stream(self) -> None:
        """Make the side stream's next copies wait for everything queued on the current stream so far."""
        assert self._stream is not None
        queued = torch.cuda.Event()
        queued.record()
        self._stream.wait_event(queued)

    def _copy_in(self, host_slots: torch.Tensor, device_slots: torch.Tensor) -> None:
        for layer in range(self.device_pool.num_layers):
            self.device_pool.k[layer].index_copy_(0, device_slots, self.pool.k[layer][host_slots])
            self.device_pool.v[layer].index_copy_(0, device_slots, self.pool.v[layer][host_slots])

    def free(self, host_slots: torch.Tensor) -> None:
        self.allocator.release(host_slots)
