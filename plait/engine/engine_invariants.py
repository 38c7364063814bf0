"""Consistency checks of the engine's KV bookkeeping (tests run them after every step)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from plait.cache import RadixCache
from plait.engine.sequence import SeqStatus

if TYPE_CHECKING:
    from plait.engine.engine_core import EngineCore


def check_engine_invariants(core: EngineCore) -> None:
    """Slot reference counts equal their holders (sequences and tree nodes); tables agree with sequences."""
    core.allocator.check()
    held = [s.slots for seqs in core.requests.values() for s in seqs if s.slots.numel()]
    if isinstance(core.prefix_cache, RadixCache):
        core.prefix_cache.check()
        held += [n.device_slots for n in core.prefix_cache._all_nodes() if n.device_slots is not None]
    holders = torch.zeros(core.kv_slots + 1, dtype=torch.int32)
    if held:
        holders.index_add_(0, torch.cat(held), torch.ones(sum(h.numel() for h in held), dtype=torch.int32))
    # Every holder is a sequence or a tree node: reference counts must match exactly.
    assert torch.equal(holders, core.allocator.refcount(torch.arange(core.kv_slots + 1))), "refcounts != holders"
    assert set(core.grammars.requests) <= set(core.requests), "a grammar outlived its request"
    for seqs in core.requests.values():
        for seq in seqs:
            assert seq.slots.numel() == seq.num_computed, "slots and num_computed disagree"
            if seq.status is SeqStatus.RUNNING:
                row = core.req_to_token.read(seq.req_row, seq.num_computed).cpu()
                assert torch.equal(row, seq.slots), "req_to_token row differs from the sequence's slots"
