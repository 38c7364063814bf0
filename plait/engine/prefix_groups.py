"""Which decodes of a step share a cached prompt prefix, for shared-prefix decode attention.

Sequences that matched the same cached prefix hold the same KV slots for it, and a slot belongs to exactly one
position of one cached path. So two sequences share their first ``p`` positions exactly when they hold the same slot
at position ``p - 1``: comparing one slot id per ``GRANULE`` positions finds every shared prefix (rounded down to a
granule) without touching the radix tree. Each sequence keeps its slot ids at positions ``GRANULE - 1, 2 * GRANULE -
1, ...`` of its prompt (computed once while it runs).

Each sequence then joins the group of the position that saves the most reads: ``members x prefix length`` over its
prefixes that at least ``MIN_MEMBERS`` decodes share (a fan-out's four candidates also share the 2.6k-token
instructions of every program: the instructions' group of a hundred beats the fan-out's group of four).
"""

from __future__ import annotations

from plait.engine.forward_batch import DecodeGroup
from plait.engine.sequence import Sequence

GRANULE = 256  # shared prefixes are found (and used) in multiples of this many tokens
# A group pays for two more launches and a merge of more slices, which only enough decodes on a long enough prefix
# repay (docs/decisions.md, 2026-11-22: shared-prefix decode attention). Smaller groups or prefixes are left to plain
# decode attention.
MIN_MEMBERS = 8
MIN_SHARED_TOKENS = 1024


def _keys(seq: Sequence) -> list[int]:
    if seq.prefix_keys is None:
        # Prompt positions only: they are fixed while the sequence runs (generated slots are its own anyway).
        seq.prefix_keys = seq.slots[GRANULE - 1 : seq.num_prompt : GRANULE].tolist()
    return seq.prefix_keys


def decode_prefix_groups(decodes: list[Sequence]) -> list[DecodeGroup]:
    """Groups of ``decodes`` (indices into the list): at least ``MIN_MEMBERS`` sharing a prefix of at least
    ``MIN_SHARED_TOKENS`` tokens."""
    if len(decodes) < MIN_MEMBERS:
        return []
    keys = [_keys(seq) for seq in decodes]
    counts: dict[int, int] = {}
    for seq_keys in keys:
        for key in seq_keys:
            counts[key] = counts.get(key, 0) + 1
    chosen: dict[int, tuple[int, list[int]]] = {}
    for index, seq_keys in enumerate(keys):
        best, best_score, best_len = -1, 0, 0
        for position, key in enumerate(seq_keys):
            count = counts[key]
            if count < MIN_MEMBERS:
                break  # deeper positions are shared by no more sequences than this one
            score = count * (position + 1)
            if score > best_score and (position + 1) * GRANULE >= MIN_SHARED_TOKENS:
                best, best_score, best_len = key, score, (position + 1) * GRANULE
        if best_score:
            chosen.setdefault(best, (best_len, []))[1].append(index)
    return [DecodeGroup(length, members) for length, members in chosen.values() if len(members) >= MIN_MEMBERS]
