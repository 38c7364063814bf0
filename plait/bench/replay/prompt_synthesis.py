"""Deterministic prompts from a trace's lengths: token ids, so prefix sharing is reproduced exactly.

A Mooncake request's prompt is its hash ids' blocks in order: block ``h`` is always the same ``block_tokens``
pseudo-random token ids (seeded by ``h``), and a request's last block is cut to its length. Two requests therefore
share a prompt prefix exactly as far as their leading hash ids are equal, as in the original trace. Requests without
hash ids (Azure, BurstGPT) get tokens seeded by their position in the trace, shared with no other request.

Token ids are drawn from ``[FIRST_TOKEN_ID, min(vocab_size, LAST_TOKEN_ID))``: above the special tokens that
vocabularies put first (a vocabulary under 4,000 tokens skips its first quarter instead), and below 32,000 so the ids
are valid for any common vocabulary (``--target`` servers too).
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from functools import lru_cache

from plait.bench.replay.records import TraceRequest

FIRST_TOKEN_ID = 1000
LAST_TOKEN_ID = 32_000


class PromptSynthesizer:
    """Prompt token ids for the requests of one trace (same arguments, same ids, in every run and mode)."""

    def __init__(self, vocab_size: int, block_tokens: int, seed: int = 0) -> None:
        if vocab_size < 16:
            raise ValueError(f"vocab_size must be at least 16 to synthesize prompts, got {vocab_size}")
        if block_tokens < 1:
            raise ValueError(f"block_tokens must be >= 1, got {block_tokens}")
        # Small test vocabularies: skip their first quarter instead.
        self.low, self.high = min(FIRST_TOKEN_ID, vocab_size // 4), min(vocab_size, LAST_TOKEN_ID)
        self.block_tokens = block_tokens
        self.seed = seed
        self._block = lru_cache(maxsize=65_536)(self._make_block)

    def _tokens(self, count: int, *key: object) -> list[int]:
        rng = random.Random(repr((self.seed, *key)))
        return [rng.randrange(self.low, self.high) for _ in range(count)]

    def _make_block(self, hash_id: int) -> tuple[int, ...]:
        return tuple(self._tokens(self.block_tokens, "block", hash_id))

    def prompt(self, index: int, request: TraceRequest) -> list[int]:
        """The prompt of the ``index``-th request: ``request.input_tokens`` ids."""
        if not request.hash_ids:
            return self._tokens(request.input_tokens, "request", index)
        ids: list[int] = []
        for hash_id in request.hash_ids:
            ids.extend(self._block(hash_id))
            if len(ids) >= request.input_tokens:
                break
        if len(ids) < request.input_tokens:  # more tokens than blocks: fill the tail with request-unique tokens
            ids.extend(self._tokens(request.input_tokens - len(ids), "tail", index))
        return ids[: request.input_tokens]


def expected_prefix_reuse(requests: Iterable[TraceRequest], block_tokens: int) -> float | None:
    """The fraction of prompt tokens an unbounded prefix cache would find, replaying ``requests`` in order.

    A block counts as reused when its hash id appeared earlier and every block before it in this prompt was reused
    too (a prefix cache matches prefixes only). A block seen earlier only as a shorter partial last block is reused
    only up to that length. ``None`` when the requests carry no hash ids.
    """
    seen: dict[int, int] = {}  # hash id -> most tokens of its block any earlier prompt held
    reused = total = 0
    any_hashes = False
    for request in requests:
        total += request.input_tokens
        if not request.hash_ids:
            continue
        any_hashes = True
        remaining, prefix_intact = request.input_tokens, True
        for hash_id in request.hash_ids:
            if remaining <= 0:
                break
            tokens = min(block_tokens, remaining)
            if prefix_intact:
                cached = min(tokens, seen.get(hash_id, 0))
                reused += cached
                prefix_intact = cached == tokens
            seen[hash_id] = max(seen.get(hash_id, 0), tokens)
            remaining -= tokens
    if not any_hashes or total == 0:
        return None
    return reused / total
