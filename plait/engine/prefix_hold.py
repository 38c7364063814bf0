"""Prefix first: a waiting prompt waits while a running prefill is still computing a long part of its prefix.

Admitting both at once computes the shared part twice; waiting for the running prefill's chunks to be cached computes
it once (a fan-out warms its shared prefix before its branches start). A hold delays the prompt by a step or more,
which only a shared part of at least ``min_tokens`` still to be computed pays back.
"""

from __future__ import annotations

from collections.abc import Iterable

from plait.engine.sequence import Sequence

SHARE_KEY = 32  # prompts sharing fewer leading tokens than this are not worth holding back for each other


class InflightPrefixes:
    """The prompts being prefilled in one planning pass, by their first ``SHARE_KEY`` tokens."""

    def __init__(self, running: Iterable[Sequence], min_tokens: int) -> None:
        self.min_tokens = max(1, min_tokens)
        self._by_head: dict[tuple[int, ...], list[Sequence]] = {}
        for seq in running:
            if seq.num_computed < seq.num_prompt:
                self.add(seq)

    def add(self, seq: Sequence) -> None:
        """``seq`` is prefilling (running, or admitted in this pass)."""
        if seq.num_prompt > SHARE_KEY:
            self._by_head.setdefault(tuple(seq.token_ids[:SHARE_KEY]), []).append(seq)

    def computes_prefix_of(self, seq: Sequence) -> bool:
        """True if a prefill in flight will still compute at least ``min_tokens`` of ``seq``'s prompt."""
        for other in self._by_head.get(tuple(seq.token_ids[:SHARE_KEY]), ()):
            done = other.num_computed
            end = done + self.min_tokens  # the shared part still to come must reach this far
            if (
                end <= min(other.num_prompt, len(seq.token_ids) - 1)
                and other.token_ids[done:end] == seq.token_ids[done:end]
                and other.token_ids[:done] == seq.token_ids[:done]
            ):
                return True
        return False
