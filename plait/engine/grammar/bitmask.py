"""The token bitmask of one step: filled on the CPU from each constrained row's matcher, applied on the device.

Order inside ``EngineCore.step``: the forward pass is launched first (asynchronous on CUDA), then ``fill`` runs on the
CPU while the GPU computes, then ``apply`` masks the logits in place just before sampling (a non-blocking copy of the
mask and xgrammar's kernel, on the logits' device; its CPU kernel on CPU).
"""

from __future__ import annotations

import time

import torch
import xgrammar as xgr

from plait.engine.grammar.backend import GrammarTimings


class TokenBitmask:
    """A reusable host buffer of ``rows x ceil(vocab / 32)`` int32 words (pinned when the device is CUDA).

    Rows are filled by xgrammar's batch matcher: one call for the whole step, spread over its threads with the GIL
    released, so a large constrained batch costs about as much as its slowest rows rather than their sum.
    """

    def __init__(self, vocab_size: int, device: torch.device, rows: int = 64) -> None:
        self.vocab_size = vocab_size
        self.device = device
        self._host = self._allocate(rows)
        self._batch = xgr.BatchGrammarMatcher(max_threads="auto")

    def _allocate(self, rows: int) -> torch.Tensor:
        host = xgr.allocate_token_bitmask(rows, self.vocab_size)
        return host.pin_memory() if self.device.type == "cuda" else host

    def fill(
        self, matchers: list[xgr.GrammarMatcher | None], timings: GrammarTimings | None = None
    ) -> tuple[torch.Tensor, list[int]] | None:
        """Fill the mask of every row that has a matcher. Returns ``(host mask [len(matchers), words], rows)`` or
        None when no row is constrained."""
        rows = [i for i, m in enumerate(matchers) if m is not None]
        if not rows:
            return None
        if self._host.shape[0] < len(matchers):
            self._host = self._allocate(max(len(matchers), 2 * self._host.shape[0]))
        mask = self._host[: len(matchers)]
        start = time.perf_counter()
        self._batch.batch_fill_next_token_bitmask([matchers[row] for row in rows], mask, indices=rows)
        if timings is not None:
            elapsed = time.perf_counter() - start
            timings.mask_s_per_step.append(elapsed)
            timings.mask_s_per_token.append(elapsed / len(rows))
            timings.masked_tokens += len(rows)
        return mask, rows

    def apply(self, logits: torch.Tensor, filled: tuple[torch.Tensor, list[int]]) -> None:
        """Set the logits of disallowed tokens to -inf in the constrained rows (in place)."""
        mask, rows = filled
        if logits.device.type != "cpu":
            mask = mask.to(logits.device, non_blocking=True)
        indices = None if len(rows) == logits.shape[0] else rows
        xgr.apply_token_bitmask_inplace(logits, mask, vocab_size=min(self.vocab_size, logits.shape[1]), indices=indices)
