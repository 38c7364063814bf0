"""The scheduler's view of one sample of one request: its tokens, its KV, and its place in line."""

from __future__ import annotations

import enum
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from plait.engine.request import GenerateRequest, priority_key
from plait.engine.sampling_params import SamplingParams
from plait.engine.text_output import TextOutput

_PROMOTED = (-math.inf,)


class SeqStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class RequestState:
    """Shared by the ``n`` sequences of one request."""

    request: GenerateRequest
    prompt_ids: list[int]
    arrival: int  # monotonically increasing submission number: the FCFS tie-break
    max_new_tokens: int  # max_tokens, clipped to the context window
    num_finished: int = 0
    submitted_at: float = field(default_factory=time.monotonic)
    priority: tuple[float, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.priority = priority_key(self.request.priority)

    @property
    def sampling(self) -> SamplingParams:
        return self.request.sampling


@dataclass(eq=False)
class Sequence:
    """Invariant: ``slots`` holds the KV slots of ``token_ids[:num_computed]``, in order; the same indices are in
    ``req_to_token[req_row, :num_computed]`` while the sequence is running."""

    state: RequestState
    index: int  # sample index within the request
    token_ids: list[int]
    generator: torch.Generator
    output: TextOutput
    status: SeqStatus = SeqStatus.WAITING
    num_computed: int = 0
    # ``slots`` is ``_slots`` followed by ``_slot_tail``: a decode step appends its one slot to the tail as an int
    # (no tensor view that would keep the allocator's free list alive), and the tensor is joined only when read
    # (release, retraction, a prefill chunk), not once per token.
    _slots: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.int64), repr=False)
    _slot_tail: list[int] = field(default_factory=list, repr=False)
    req_row: int | None = None
    siblings_spawned: bool = False  # n > 1: sample 0 spawns the others once the prompt is prefilled
    sibling_rows: list[int] = field(default_factory=list)  # req_to_token rows held for them until then
    cache_handle: Any = None  # the prefix cache's lock on the cached path this sequence reads
    finish_reason: str | None = None
    num_retractions: int = 0
    # Its last sampled token (still pending) ends it by length: the scheduler gives it no further step.
    will_finish: bool = False
    admitted_at: float | None = None  # first admission (monotonic seconds)
    cached_tokens: int = 0  # prompt tokens its first admission found in the prefix cache (not computed)
    # Waited longer than the scheduler's max_queue_wait_s: now ahead of every priority (anti-starvation).
    promoted: bool = False
    # The prefix cache's note of where its last residency walk of token_ids stopped (cache affinity asks every step).
    residency_mark: Any = None

    @property
    def slots(self) -> torch.Tensor:
        """The KV slots of ``token_ids[:num_computed]``, in order."""
        if self._slot_tail:
            self._slots = torch.cat([self._slots, torch.tensor(self._slot_tail, dtype=torch.int64)])
            self._slot_tail.clear()
        return self._slots

    @slots.setter
    def slots(self, value: torch.Tensor) -> None:
        self._slots = value
        self._slot_tail.clear()

    def append_slot(self, slot: int) -> None:
        """Extend ``slots`` by the slot of one newly computed token (joined lazily, on the next read)."""
        self._slot_tail.append(slot)

    @property
    def request_id(self) -> str:
        return self.state.request.request_id

    @property
    def program_id(self) -> str | None:
        return self.state.request.program_id

    @property
    def call_id(self) -> str | None:
        return self.state.request.call_id

    @property
    def sort_key(self) -> tuple[tuple[float, ...], int, int]:
        """Lower runs first: priority (promoted sequences before all), then arrival, then sample index."""
        return (_PROMOTED if self.promoted else self.state.priority, self.state.arrival, self.index)

    @property
    def num_prompt(self) -> int:
        return len(self.state.prompt_ids)

    @property
    def num_generated(self) -> int:
        return len(self.token_ids) - self.num_prompt

    @property
    def num_uncomputed(self) -> int:
        """Tokens whose KV is not in the pool yet (1 for a sequence in decode)."""
        return len(self.token_ids) - self.num_computed

    @property
    def is_decode(self) -> bool:
        return self.num_uncomputed == 1 and self.num_computed > 0

    @property
    def needs_spawn(self) -> bool:
        return self.state.sampling.n > 1 and self.index == 0 and not self.siblings_spawned
