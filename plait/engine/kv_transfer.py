"""Moving a cached prefix's KV between engines of the same model (scale-out: migration and rebalancing).

``export_prefix`` copies the K/V rows of the longest prefix of a token list that this engine holds on its device into
host memory; ``import_prefix`` writes such rows into free slots of another engine and inserts them into its radix
cache, so the next request with that prefix finds it cached and computes only what follows. Both run on the engine
thread (``Engine`` applies them as commands between steps), so the tree and the pool are never read mid-step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from plait.cache import PrefixKV, RadixCache
from plait.engine.errors import InvalidRequestError

if TYPE_CHECKING:
    from plait.engine.engine_core import EngineCore


def export_prefix(core: EngineCore, token_ids: list[int]) -> PrefixKV:
    """The KV of the longest device-resident prefix of ``token_ids`` (empty without a radix cache or a hit)."""
    cache = core.prefix_cache
    if not isinstance(cache, RadixCache) or not token_ids:
        return PrefixKV()
    match = cache.match_prefix(token_ids)
    if match.loading or match.length == 0:
        if not match.loading:
            cache.unmatch(match)
        return PrefixKV()
    try:
        k, v = core.kv_pool.read_rows(match.slots.to(core.kv_pool.k[0].device))
        return PrefixKV(tuple(token_ids[: match.length]), [t.cpu() for t in k], [t.cpu() for t in v])
    finally:
        cache.unmatch(match)


def import_prefix(core: EngineCore, kv: PrefixKV, program_id: str | None = None) -> int:
    """Insert ``kv`` as a cached prefix (attributed to ``program_id``); returns the tokens now cached from it: 0 when
    there is no radix cache or no room even after evicting what may be evicted."""
    cache = core.prefix_cache
    n = len(kv)
    if not isinstance(cache, RadixCache) or n == 0:
        return 0
    pool = core.kv_pool
    expected = (n, pool.num_kv_heads, pool.head_dim)
    if len(kv.k) != pool.num_layers or len(kv.v) != pool.num_layers or tuple(kv.k[0].shape) != expected:
        raise InvalidRequestError(
            "kv",
            f"rows of shape {tuple(kv.k[0].shape) if kv.k else ()} x {len(kv.k)} layers do not fit this engine's "
            f"pool ({expected} x {pool.num_layers} layers): export and import need the same model",
        )
    if cache.resident_length(list(kv.token_ids)) == n:
        return n  # already here
    if not core.scheduler._ensure_free(n):
        return 0
    slots = core.allocator.alloc(n)
    device_slots = slots.to(pool.k[0].device)
    for layer in range(pool.num_layers):
        pool.write(layer, device_slots, kv.k[layer].to(pool.device), kv.v[layer].to(pool.device))
    cache.insert(list(kv.token_ids), slots, program_id)  # takes over the slots' references
    return n
