"""Prompt log-probabilities computed during prefill (``SamplingParams.prompt_logprobs_start``), for choice scoring.

The forward pass normally returns logits only at each sampling sequence's last token. For a request asking for prompt
log-probabilities from position ``S``, the rows at positions ``S-1 .. P-2`` of its prefill chunks are returned too
(appended after the sampling rows); the log-probability of token ``p`` comes from the row at ``p-1``. The scheduler
never serves positions ``>= S-1`` from the prefix cache for such a request, so every needed row is computed, in
whatever chunks the prefill takes, beside the other requests of the batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from plait.engine.host_copy import to_device
from plait.engine.request import TokenLogprob

if TYPE_CHECKING:
    from plait.engine.forward_batch import ForwardBatch
    from plait.engine.scheduler import ScheduledBatch
    from plait.engine.sequence import Sequence


class PromptLogprobs:
    def __init__(self) -> None:
        self._by_request: dict[str, dict[int, TokenLogprob]] = {}  # request id -> prompt position -> logprob
        self._rows: list[tuple[Sequence, int]] = []  # this step's extra rows: (sequence, position of the row)

    @staticmethod
    def _wants(seq: Sequence) -> bool:
        return seq.state.sampling.prompt_logprobs_start is not None and seq.index == 0 and seq.num_generated == 0

    def add_rows(self, batch: ScheduledBatch, forward: ForwardBatch) -> int:
        """Append this step's prompt-logprob rows to ``forward.sample_indices`` (before ``commit``); returns how many
        rows the model returns for sampling (the extra rows follow them)."""
        num_sampling = int(forward.sample_indices.numel())
        self._rows = []
        extra: list[int] = []
        offset = 0
        for item in batch.seqs:
            seq = item.seq
            if self._wants(seq):
                start, first = seq.num_computed, seq.state.sampling.prompt_logprobs_start or 0
                for position in range(max(start, first - 1), min(start + item.new_len, seq.num_prompt - 1)):
                    extra.append(offset + position - start)
                    self._rows.append((seq, position))
            offset += item.new_len
        if extra:
            rows = to_device(extra, torch.int64, forward.sample_indices.device)
            forward.sample_indices = torch.cat([forward.sample_indices, rows])
        return num_sampling

    def collect(self, logits: torch.Tensor) -> None:
        """Record the log-probabilities of the tokens that follow this step's extra rows (``logits``: those rows)."""
        if not self._rows:
            return
        next_tokens = to_device([seq.token_ids[p + 1] for seq, p in self._rows], torch.int64, logits.device)
        chosen = torch.log_softmax(logits, dim=-1).gather(1, next_tokens[:, None]).squeeze(1).tolist()
        for (seq, position), token, logprob in zip(self._rows, next_tokens.tolist(), chosen, strict=True):
            self._by_request.setdefault(seq.request_id, {})[position + 1] = TokenLogprob(token, logprob)
        self._rows = []

    def take(self, seq: Sequence) -> list[TokenLogprob] | None:
        """The complete prompt log-probabilities of ``seq`` once its prompt is prefilled (its first sample)."""
        if not self._wants(seq):
            return None
        found = self._by_request.pop(seq.request_id, {})
        first = seq.state.sampling.prompt_logprobs_start or 0
        missing = [p for p in range(first, seq.num_prompt) if p not in found]
        assert not missing, f"prompt log-probabilities missing at positions {missing[:5]}"
        return [found[p] for p in range(first, seq.num_prompt)]

    def drop(self, request_id: str) -> None:
        self._by_request.pop(request_id, None)

    def __len__(self) -> int:
        return len(self._by_request)
