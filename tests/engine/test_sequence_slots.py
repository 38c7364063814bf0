"""A sequence's KV slots: a decode step appends one slot as a list append, and the tensor is joined on read."""

from __future__ import annotations

import torch

from plait.engine import GenerateRequest, SamplingParams
from plait.engine.sequence import RequestState, Sequence
from plait.engine.text_output import TextOutput


def make_sequence() -> Sequence:
    request = GenerateRequest(request_id="r", prompt="", sampling=SamplingParams(max_tokens=4))
    state = RequestState(request=request, prompt_ids=[1, 2, 3], arrival=0, max_new_tokens=4)
    return Sequence(state, 0, [1, 2, 3], torch.Generator(), TextOutput(None, []))  # type: ignore[arg-type]  # no text here


def test_appended_slots_join_in_order_on_read_and_a_set_replaces_them() -> None:
    seq = make_sequence()
    seq.slots = torch.tensor([7, 8, 9])
    for slot in (10, 11, 12):
        seq.append_slot(slot)
    assert seq._slot_tail == [10, 11, 12]  # plain ints, not joined yet
    assert seq.slots.tolist() == [7, 8, 9, 10, 11, 12]
    assert seq._slot_tail == []
    seq.append_slot(13)
    seq.slots = torch.tensor([1])  # a set drops what was appended before it
    assert seq.slots.tolist() == [1]


def test_a_decode_step_keeps_no_view_of_the_allocators_free_list() -> None:
    """A decode's slot comes from a view of the allocator's free list; kept as a view it would keep each free-list
    tensor the allocator has since replaced alive until the sequence ends."""
    from plait.engine.scheduler import ScheduledBatch, ScheduledSeq, Scheduler

    seq = make_sequence()
    seq.slots = torch.tensor([1, 2, 3])
    seq.num_computed = 3
    seq.token_ids.append(4)
    free_list = torch.arange(100, 200)
    batch = ScheduledBatch(decodes=[ScheduledSeq(seq, 1, free_list[5:6])])
    Scheduler.commit(None, batch)  # type: ignore[arg-type]  # decodes only: the scheduler's state is not read
    assert seq._slot_tail == [105] and seq.num_computed == 4
    assert seq.slots.tolist() == [1, 2, 3, 105]
    assert seq.slots.untyped_storage().data_ptr() != free_list.untyped_storage().data_ptr()
