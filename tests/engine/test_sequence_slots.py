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
    prompt = torch.tensor([7, 8, 9])
    seq.append_slots(prompt)
    assert seq.slots is prompt  # the first chunk is taken as it is: nothing to join
    for slot in (10, 11, 12):
        seq.append_slots(torch.tensor([slot]))
    assert len(seq._slot_tail) == 3  # not joined yet
    assert seq.slots.tolist() == [7, 8, 9, 10, 11, 12]
    assert seq._slot_tail == []
    seq.append_slots(torch.tensor([13]))
    seq.slots = torch.tensor([1])  # a setter drops what was appended before it
    assert seq.slots.tolist() == [1]
    seq.slots = torch.empty(0, dtype=torch.int64)
    seq.append_slots(torch.tensor([5, 6]))
    assert seq.slots.tolist() == [5, 6]
