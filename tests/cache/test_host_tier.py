"""The host tier's copies: contiguous runs of host slots, and rows that come back exactly as they were written, on the
CPU and (on the lent GPU machine) through the asynchronous, stream-ordered GPU path."""

from __future__ import annotations

import pytest
import torch

from plait.cache import KVPool
from plait.cache.host_slots import contiguous_runs
from plait.cache.host_tier import HostTier

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def test_contiguous_runs_split_where_slots_jump():
    assert contiguous_runs(torch.tensor([], dtype=torch.int64)) == []
    assert contiguous_runs(torch.tensor([4])) == [(4, 1, 0)]
    assert contiguous_runs(torch.tensor([3, 4, 5, 9, 10, 2])) == [(3, 3, 0), (9, 2, 3), (2, 1, 5)]


def _filled_pool(device: str, slots: int = 64) -> KVPool:
    pool = KVPool(3, slots, 2, 8, torch.float32, device)
    for layer in range(pool.num_layers):
        pool.k[layer].copy_(torch.randn(pool.k[layer].shape))
        pool.v[layer].copy_(torch.randn(pool.v[layer].shape))
    return pool


@pytest.mark.parametrize("device", DEVICES)
def test_rows_come_back_exactly_after_their_device_slots_were_reused(device):
    """Write back two prefixes into a fragmented host pool in one flush, overwrite their device rows at once (the
    slots are reused by the next step), load them into other slots: every row is what was written back."""
    torch.manual_seed(0)
    pool = _filled_pool(device)
    host = HostTier(pool, 40)
    spacer = host.allocator.alloc(5)  # fragment the host pool: later allocations straddle a gap
    first_rows = torch.tensor([3, 9, 4, 17, 30, 31])
    first_host = host.write_back(first_rows)
    host.free(spacer)
    second_rows = torch.tensor([40, 41, 42, 43, 44, 45, 46, 47, 48, 50])
    second_host = host.write_back(second_rows)
    assert torch.equal(first_host, torch.sort(first_host).values)  # ascending: few runs, one copy per run
    expected = [pool.read_rows(first_rows), pool.read_rows(second_rows)]
    host.flush_writes()  # both queued copies start here, before the slots are reused (RadixCache.evict's contract)
    for layer in range(pool.num_layers):  # the next step writes new KV into the freed slots
        for rows in (first_rows, second_rows):
            pool.k[layer][rows.to(device)] = 0.0
            pool.v[layer][rows.to(device)] = 0.0
    targets = [torch.tensor([55, 56, 57, 58, 59, 60]), torch.tensor([10, 11, 12, 20, 21, 22, 23, 24, 25, 26])]
    jobs = [host.load(first_host, targets[0]), host.load(second_host, targets[1])]
    for job in jobs:
        job.wait()
        assert job.done()
    for target, (keys, values) in zip(targets, expected, strict=True):
        got_keys, got_values = pool.read_rows(target.to(device))
        for layer in range(pool.num_layers):
            assert torch.equal(got_keys[layer], keys[layer]) and torch.equal(got_values[layer], values[layer])
    host.synchronize()
    assert host.bytes_moved == 2 * (6 + 10) * pool.bytes_per_token


def test_host_slots_come_in_runs_and_merge_back_when_freed():
    from plait.cache.host_slots import HostSlotAllocator

    slots = HostSlotAllocator(20)
    a, b, c = slots.alloc(5), slots.alloc(5), slots.alloc(5)
    assert a.tolist() == [1, 2, 3, 4, 5] and c.tolist() == [11, 12, 13, 14, 15] and slots.num_free == 5
    slots.release(b)
    assert slots.num_runs_free == 2 and slots.num_used == 10
    assert slots.alloc(3).tolist() == [6, 7, 8]  # first fit
    d = slots.alloc(6)  # no run of 6 is free: the longest runs, in ascending order
    assert d.tolist() == [9, 16, 17, 18, 19, 20] and slots.num_free == 1  # slot 10 is left
    with pytest.raises(MemoryError, match="2 host slots, 1 free"):
        slots.alloc(2)
    slots.release(d)
    slots.release(torch.tensor([8, 6, 7]))
    slots.release(c)
    slots.release(a)
    assert slots.num_free == 20 and slots.num_runs_free == 1
    with pytest.raises(ValueError, match="already free"):
        slots.release(torch.tensor([3]))
    with pytest.raises(ValueError, match="outside the pool"):
        slots.release(torch.tensor([21]))
