"""The host (CPU) tier of the KV cache: a second pool that evicted prefixes are written back to and loaded from.

Write-back is synchronous (it happens at eviction, when the device slots are about to be reused). Load-back is
asynchronous: on a GPU the copy runs on a side CUDA stream from page-locked memory; on the CPU a worker thread does
it. ``LoadJob.done()`` says when the device rows are ready; the radix cache polls it and never hands out a node
whose load is in flight.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import torch

from plait.cache.kv_pool import KVPool
from plait.cache.slot_allocator import SlotAllocator


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


class HostTier:
    def __init__(self, device_pool: KVPool, num_slots: int) -> None:
        self.device_pool = device_pool
        on_gpu = device_pool.device.type == "cuda"
        self.pool = KVPool(
            device_pool.num_layers,
            num_slots,
            device_pool.num_kv_heads,
            device_pool.head_dim,
            device_pool.dtype,
            "cpu",
            pin_memory=on_gpu,
        )
        self.allocator = SlotAllocator(num_slots)
        self.bytes_moved = 0
        self._stream = torch.cuda.Stream(device_pool.device) if on_gpu else None
        self._worker = None if on_gpu else ThreadPoolExecutor(max_workers=1, thread_name_prefix="plait-kv-load")

    @property
    def num_free(self) -> int:
        return self.allocator.num_free

    def write_back(self, device_slots: torch.Tensor) -> torch.Tensor:
        """Copy the rows at ``device_slots`` into newly allocated host slots (the caller checked ``num_free``)."""
        host_slots = self.allocator.alloc(int(device_slots.numel()))
        index = device_slots.to(self.device_pool.device)
        for layer in range(self.device_pool.num_layers):
            self.pool.k[layer][host_slots] = self.device_pool.k[layer].index_select(0, index).cpu()
            self.pool.v[layer][host_slots] = self.device_pool.v[layer].index_select(0, index).cpu()
        self.bytes_moved += int(device_slots.numel()) * self.pool.bytes_per_token
        return host_slots

    def load(self, host_slots: torch.Tensor, device_slots: torch.Tensor) -> LoadJob:
        """Start copying host rows into (already allocated) device slots."""
        self.bytes_moved += int(host_slots.numel()) * self.pool.bytes_per_token
        if self._stream is not None:
            index = device_slots.to(self.device_pool.device)
            with torch.cuda.stream(self._stream):
                for layer in range(self.device_pool.num_layers):
                    k = self.pool.k[layer][host_slots].pin_memory().to(index.device, non_blocking=True)
                    v = self.pool.v[layer][host_slots].pin_memory().to(index.device, non_blocking=True)
                    self.device_pool.k[layer].index_copy_(0, index, k)
                    self.device_pool.v[layer].index_copy_(0, index, v)
                event = torch.cuda.Event()
                event.record(self._stream)
            return LoadJob(event=event)
        assert self._worker is not None
        return LoadJob(future=self._worker.submit(self._copy_in, host_slots, device_slots))

    def _copy_in(self, host_slots: torch.Tensor, device_slots: torch.Tensor) -> None:
        for layer in range(self.device_pool.num_layers):
            self.device_pool.k[layer].index_copy_(0, device_slots, self.pool.k[layer][host_slots])
            self.device_pool.v[layer].index_copy_(0, device_slots, self.pool.v[layer][host_slots])

    def free(self, host_slots: torch.Tensor) -> None:
        self.allocator.release(host_slots)
