"""A sampled step whose tokens the host has not read yet: what the overlap loop carries from one step to the next.

The overlap loop (``EngineConfig.overlap``): step N's forward pass is launched with the tokens sampled at step N-1
still on the device (their input positions are filled on the device from ``InflightStep.tokens``); only then does
the host wait for step N-1's tokens and do its bookkeeping (stop checks, detokenization, grammar matchers, deltas),
while the GPU computes step N. A sequence that step N-1 finishes was already scheduled in step N: that row's result is
dropped, and its KV slot goes back with the rest of the sequence's.

Invariant: a sampled token is appended to ``Sequence.token_ids`` as ``PENDING`` when it is sampled and replaced by
its value when the step is resolved; a sequence whose last token is pending is never re-admitted by the scheduler
(its last token could not be prefilled).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from plait.engine.request import TokenLogprob
from plait.engine.sampler import LogprobTensors

if TYPE_CHECKING:
    from plait.engine.sequence import Sequence

PENDING = -1  # a token id that no vocabulary has: "sampled, not yet read back"


@dataclass
class InflightStep:
    targets: list[Sequence]  # the sequences that sampled, in row order
    tokens: torch.Tensor  # [len(targets)] on the model's device
    matchers: list[Any]  # each target's grammar matcher (None when unconstrained)
    logprobs: LogprobTensors | None  # device tensors, when some target asked for log-probabilities
    prompt_logprobs: list[list[TokenLogprob] | None]  # per target, complete once its prompt was prefilled
    host_tokens: torch.Tensor = field(init=False)
    _ready: torch.cuda.Event | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.tokens.device.type == "cuda":
            self.host_tokens = torch.empty(self.tokens.shape, dtype=self.tokens.dtype, pin_memory=True)
            self.host_tokens.copy_(self.tokens, non_blocking=True)
            self._ready = torch.cuda.Event()
            self._ready.record()
        else:
            self.host_tokens = self.tokens

    def row_of(self) -> dict[int, int]:
        """``id(sequence) -> row`` of each target (sequences hash by identity only through ``id``)."""
        return {id(seq): row for row, seq in enumerate(self.targets)}

    def token_list(self) -> list[int]:
        """The sampled tokens on the host; waits for the sampling kernels only, never for later work."""
        if self._ready is not None:
            self._ready.synchronize()
        return self.host_tokens.tolist()
