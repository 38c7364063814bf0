"""KV memory bookkeeping: SlotAllocator refcounts, ReqToTokenPool rows, KVPool storage, NoPrefixCache."""

from __future__ import annotations

import pytest
import torch
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from plait.cache import KVPool, NoPrefixCache, OutOfSlotsError, PrefixMatch, ReqToTokenPool, SlotAllocator


def _ids(slots: torch.Tensor) -> list[int]:
    return sorted(slots.tolist())


# --- SlotAllocator -----------------------------------------------------------------------------------------------


def test_new_allocator_has_every_slot_free() -> None:
    allocator = SlotAllocator(8)
    assert allocator.num_free == 8
    assert allocator.num_used == 0
    allocator.check()


def test_num_slots_below_one_is_rejected() -> None:
    with pytest.raises(ValueError, match="num_slots"):
        SlotAllocator(0)


def test_alloc_returns_distinct_int64_cpu_slots_with_refcount_one() -> None:
    allocator = SlotAllocator(8)
    slots = allocator.alloc(5)
    assert slots.dtype == torch.int64
    assert slots.device.type == "cpu"
    assert len(set(slots.tolist())) == 5
    assert allocator.refcount(slots).tolist() == [1] * 5
    assert allocator.num_free == 3
    assert allocator.num_used == 5
    allocator.check()


def test_alloc_zero_returns_empty_tensor() -> None:
    allocator = SlotAllocator(4)
    assert allocator.alloc(0).numel() == 0
    assert allocator.num_free == 4


def test_padding_slot_is_never_handed_out() -> None:
    allocator = SlotAllocator(16)
    slots = allocator.alloc(16)
    assert SlotAllocator.PADDING_SLOT == 0
    assert _ids(slots) == list(range(1, 17))
    allocator.release(slots)
    again = allocator.alloc(16)
    assert 0 not in again.tolist()
    allocator.check()


def test_alloc_more_than_free_raises_out_of_slots() -> None:
    allocator = SlotAllocator(4)
    allocator.alloc(3)
    with pytest.raises(OutOfSlotsError):
        allocator.alloc(2)
    assert allocator.num_free == 1  # the failed call took nothing
    allocator.check()


def test_out_of_slots_is_a_runtime_error() -> None:
    assert issubclass(OutOfSlotsError, RuntimeError)


def test_release_returns_slots_to_free_list() -> None:
    allocator = SlotAllocator(4)
    slots = allocator.alloc(4)
    allocator.release(slots[:2])
    assert allocator.num_free == 2
    assert _ids(allocator.alloc(2)) == _ids(slots[:2])
    allocator.check()


def test_release_empty_tensor_is_a_no_op() -> None:
    allocator = SlotAllocator(4)
    allocator.alloc(2)
    allocator.release(torch.empty(0, dtype=torch.int64))
    assert allocator.num_free == 2
    allocator.check()


def test_release_accepts_int32_slots() -> None:
    allocator = SlotAllocator(4)
    slots = allocator.alloc(3)
    allocator.release(slots.to(torch.int32))
    assert allocator.num_free == 4
    allocator.check()


def test_retained_slot_stays_used_until_last_holder_releases() -> None:
    allocator = SlotAllocator(4)
    slots = allocator.alloc(2)
    allocator.retain(slots)
    assert allocator.refcount(slots).tolist() == [2, 2]
    allocator.release(slots)
    assert allocator.num_free == 2
    assert allocator.refcount(slots).tolist() == [1, 1]
    allocator.release(slots)
    assert allocator.num_free == 4
    allocator.check()


def test_retain_counts_a_slot_listed_twice_twice() -> None:
    allocator = SlotAllocator(4)
    slot = allocator.alloc(1)
    allocator.retain(torch.cat([slot, slot]))
    assert allocator.refcount(slot).tolist() == [3]


def test_release_of_a_slot_listed_twice_frees_it_once() -> None:
    allocator = SlotAllocator(4)
    slot = allocator.alloc(1)
    allocator.retain(slot)
    allocator.release(torch.cat([slot, slot]))
    assert allocator.num_free == 4
    allocator.check()  # the free list holds the slot once


def test_retain_of_free_slot_raises() -> None:
    allocator = SlotAllocator(4)
    slots = allocator.alloc(1)
    allocator.release(slots)
    with pytest.raises(RuntimeError, match="free"):
        allocator.retain(slots)


def test_retain_of_padding_slot_raises() -> None:
    allocator = SlotAllocator(4)
    with pytest.raises(RuntimeError):
        allocator.retain(torch.tensor([SlotAllocator.PADDING_SLOT]))


def test_retain_empty_tensor_is_a_no_op() -> None:
    allocator = SlotAllocator(4)
    allocator.retain(torch.empty(0, dtype=torch.int64))
    allocator.check()


def test_double_free_raises() -> None:
    allocator = SlotAllocator(4)
    slots = allocator.alloc(2)
    allocator.release(slots)
    with pytest.raises(RuntimeError, match="double free"):
        allocator.release(slots)


def test_release_of_never_allocated_slot_raises() -> None:
    allocator = SlotAllocator(4)
    with pytest.raises(RuntimeError, match="double free"):
        allocator.release(torch.tensor([3]))


def test_rejected_double_free_leaves_allocator_consistent() -> None:
    allocator = SlotAllocator(4)
    slots = allocator.alloc(2)
    allocator.release(slots)
    with pytest.raises(RuntimeError):
        allocator.release(slots)
    allocator.check()


def test_rejected_mixed_release_does_not_leak_the_live_slot() -> None:
    allocator = SlotAllocator(4)
    slots = allocator.alloc(2)
    allocator.release(slots[1:])
    with pytest.raises(RuntimeError):
        allocator.release(slots)  # slots[0] is live, slots[1] already free
    assert allocator.refcount(slots[:1]).tolist() == [1]
    allocator.check()


def test_alloc_negative_count_is_rejected() -> None:
    allocator = SlotAllocator(4)
    with pytest.raises((ValueError, OutOfSlotsError)):
        allocator.alloc(-1)


def test_check_detects_padding_slot_in_free_list() -> None:
    allocator = SlotAllocator(4)
    allocator._free = torch.cat([allocator._free, torch.tensor([0])])
    with pytest.raises(AssertionError, match="padding"):
        allocator.check()


def test_check_detects_duplicate_in_free_list() -> None:
    allocator = SlotAllocator(4)
    allocator.alloc(1)
    allocator._free = torch.cat([allocator._free, allocator._free[:1]])
    with pytest.raises(AssertionError, match="twice"):
        allocator.check()


def test_check_detects_free_slot_with_holders() -> None:
    allocator = SlotAllocator(4)
    allocator._refcount[int(allocator._free[0])] = 1
    with pytest.raises(AssertionError):
        allocator.check()


class SlotAllocatorMachine(RuleBasedStateMachine):
    """Random alloc / retain / release sequences against a dict model of the refcounts."""

    NUM_SLOTS = 12

    def __init__(self) -> None:
        super().__init__()
        self.allocator = SlotAllocator(self.NUM_SLOTS)
        self.holdings: list[torch.Tensor] = []  # each entry is one holder's claim on some slots
        self.model: dict[int, int] = {}  # slot -> expected refcount (absent: free)

    @initialize()
    def start_clean(self) -> None:
        self.allocator.check()

    @rule(n=st.integers(min_value=0, max_value=NUM_SLOTS + 2))
    def alloc(self, n: int) -> None:
        free_before = self.allocator.num_free
        if n > free_before:
            with pytest.raises(OutOfSlotsError):
                self.allocator.alloc(n)
            assert self.allocator.num_free == free_before
            return
        slots = self.allocator.alloc(n)
        ids = slots.tolist()
        assert len(set(ids)) == n
        for slot in ids:
            assert 1 <= slot <= self.NUM_SLOTS
            assert slot not in self.model, f"slot {slot} handed out while still held"
            self.model[slot] = 1
        self.holdings.append(slots)

    @precondition(lambda self: bool(self.holdings))
    @rule(data=st.data())
    def retain(self, data: st.DataObject) -> None:
        source = self.holdings[data.draw(st.integers(0, len(self.holdings) - 1))]
        if source.numel() == 0:
            return
        picks = data.draw(st.lists(st.integers(0, source.numel() - 1), min_size=1, max_size=source.numel()))
        slots = source[torch.tensor(picks)]
        self.allocator.retain(slots)
        for slot in slots.tolist():
            self.model[slot] += 1
        self.holdings.append(slots)

    @precondition(lambda self: bool(self.holdings))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        slots = self.holdings.pop(data.draw(st.integers(0, len(self.holdings) - 1)))
        self.allocator.release(slots)
        for slot in slots.tolist():
            self.model[slot] -= 1
            if self.model[slot] == 0:
                del self.model[slot]

    @invariant()
    def sizes_add_up(self) -> None:
        assert self.allocator.num_free + self.allocator.num_used == self.NUM_SLOTS
        assert self.allocator.num_used == len(self.model)

    @invariant()
    def free_list_is_duplicate_free(self) -> None:
        free = self.allocator._free.tolist()
        assert len(free) == len(set(free))
        assert not set(free) & set(self.model)

    @invariant()
    def refcounts_match_model(self) -> None:
        self.allocator.check()
        counts = self.allocator.refcount(torch.arange(1, self.NUM_SLOTS + 1)).tolist()
        assert counts == [self.model.get(slot, 0) for slot in range(1, self.NUM_SLOTS + 1)]

    def teardown(self) -> None:
        while self.holdings:
            self.allocator.release(self.holdings.pop())
        assert self.allocator.num_free == self.NUM_SLOTS
        assert self.allocator.num_used == 0
        self.allocator.check()


SlotAllocatorMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
TestSlotAllocatorStateful = SlotAllocatorMachine.TestCase


# --- ReqToTokenPool ----------------------------------------------------------------------------------------------


def test_req_to_token_rows_are_handed_out_until_exhausted() -> None:
    pool = ReqToTokenPool(max_requests=3, max_context=8)
    rows = [pool.alloc_row() for _ in range(3)]
    assert sorted(rows) == [0, 1, 2]
    assert pool.num_free_rows == 0
    assert pool.alloc_row() is None


def test_req_to_token_freed_row_is_recycled() -> None:
    pool = ReqToTokenPool(max_requests=2, max_context=8)
    first = pool.alloc_row()
    pool.alloc_row()
    assert first is not None
    pool.free_row(first)
    assert pool.num_free_rows == 1
    assert pool.alloc_row() == first


def test_req_to_token_epoch_names_each_holder_of_a_row() -> None:
    """A recycled row gets a new epoch, so (row, epoch) never names two holders."""
    pool = ReqToTokenPool(max_requests=1, max_context=8)
    row = pool.alloc_row()
    assert row is not None
    epoch = pool.epoch(row)
    pool.free_row(row)
    assert pool.alloc_row() == row and pool.epoch(row) == epoch + 1


def test_req_to_token_write_then_read() -> None:
    pool = ReqToTokenPool(max_requests=2, max_context=8)
    row = pool.alloc_row()
    assert row is not None
    pool.write(row, 0, torch.tensor([5, 6, 7]))
    pool.write(row, 3, torch.tensor([9, 2]))
    assert pool.read(row, 5).tolist() == [5, 6, 7, 9, 2]
    assert pool.read(row, 3).tolist() == [5, 6, 7]


def test_req_to_token_write_touches_only_its_row_and_range() -> None:
    pool = ReqToTokenPool(max_requests=2, max_context=6)
    pool.write(1, 2, torch.tensor([4, 4], dtype=torch.int32))
    assert pool.table[0].tolist() == [0] * 6
    assert pool.table[1].tolist() == [0, 0, 4, 4, 0, 0]
    assert pool.table.dtype == torch.int64


# --- KVPool ------------------------------------------------------------------------------------------------------


def test_kv_pool_has_a_padding_row_per_layer() -> None:
    pool = KVPool(num_layers=2, num_slots=5, num_kv_heads=2, head_dim=4, dtype=torch.float32, device="cpu")
    assert len(pool.k) == len(pool.v) == 2
    assert pool.k[0].shape == (6, 2, 4)


def test_kv_pool_write_round_trips_through_read_rows() -> None:
    pool = KVPool(num_layers=2, num_slots=8, num_kv_heads=2, head_dim=4, dtype=torch.float32, device="cpu")
    slots = torch.tensor([3, 7, 1])
    generator = torch.Generator().manual_seed(0)
    written = []
    for layer in range(2):
        k = torch.randn(3, 2, 4, generator=generator)
        v = torch.randn(3, 2, 4, generator=generator)
        pool.write(layer, slots, k, v)
        written.append((k, v))
    ks, vs = pool.read_rows(slots)
    for layer, (k, v) in enumerate(written):
        torch.testing.assert_close(ks[layer], k, rtol=0, atol=0)
        torch.testing.assert_close(vs[layer], v, rtol=0, atol=0)
    untouched = torch.tensor([0, 2, 4, 5, 6, 8])
    assert not pool.k[0][untouched].any()
    assert not pool.v[1][untouched].any()


def test_kv_pool_read_rows_returns_copies() -> None:
    pool = KVPool(num_layers=1, num_slots=4, num_kv_heads=1, head_dim=2, dtype=torch.float32, device="cpu")
    ks, _ = pool.read_rows(torch.tensor([1]))
    ks[0].fill_(5.0)
    assert not pool.k[0].any()


def test_kv_pool_write_casts_to_pool_dtype() -> None:
    pool = KVPool(num_layers=1, num_slots=4, num_kv_heads=1, head_dim=2, dtype=torch.bfloat16, device="cpu")
    k = torch.tensor([[[1.5, -2.0]]], dtype=torch.float32)
    pool.write(0, torch.tensor([2]), k, k * 2)
    ks, vs = pool.read_rows(torch.tensor([2]))
    assert ks[0].dtype == torch.bfloat16
    assert ks[0].float().tolist() == [[[1.5, -2.0]]]
    assert vs[0].float().tolist() == [[[3.0, -4.0]]]


def test_kv_pool_bytes_per_slot() -> None:
    # K and V, 3 layers, 2 heads, 8 dims, 2 bytes each.
    assert KVPool.bytes_per_slot(3, 2, 8, torch.float16) == 2 * 3 * 2 * 8 * 2


# --- NoPrefixCache -----------------------------------------------------------------------------------------------


def test_no_prefix_cache_matches_nothing() -> None:
    cache = NoPrefixCache(SlotAllocator(4))
    match = cache.match_prefix([1, 2, 3])
    assert isinstance(match, PrefixMatch)
    assert match.length == 0
    assert cache.evictable_slots() == 0
    assert cache.evict(10) == 0


def test_no_prefix_cache_releases_slots_on_cache_finished() -> None:
    allocator = SlotAllocator(6)
    cache = NoPrefixCache(allocator)
    slots = allocator.alloc(4)
    cache.cache_finished([10, 11, 12, 13], slots, None)
    assert allocator.num_free == 6
    allocator.check()


def test_no_prefix_cache_drops_only_one_holder() -> None:
    allocator = SlotAllocator(6)
    cache = NoPrefixCache(allocator)
    slots = allocator.alloc(2)
    allocator.retain(slots)  # a second sample still reads them
    cache.cache_finished([1, 2], slots, None)
    assert allocator.num_free == 4
    assert allocator.refcount(slots).tolist() == [1, 1]
