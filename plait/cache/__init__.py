"""KV memory: the token-slot pool, the slot allocator and the per-request ``req_to_token`` table.

Owns: where every token's K/V lives. A request's KV is a list of slot indices (one per position) written into its
``req_to_token`` row; a prefix shared between requests is the same slot indices in several rows, and KV never moves.
May import: nothing else in plait (it knows no requests, programs or workflows; hints arrive as plain data).
"""

from __future__ import annotations

from plait.cache.eviction_policy import EvictionPolicy, LRUPolicy, NextUse, NextUsePolicy
from plait.cache.hints import CacheHints
from plait.cache.host_tier import HostTier
from plait.cache.kv_pool import KVPool
from plait.cache.prefix_cache import NoPrefixCache, PrefixCache, PrefixMatch
from plait.cache.prefix_kv import PrefixKV
from plait.cache.radix import CacheCounters, RadixCache, RadixNode
from plait.cache.radix_node import CacheEvent, ResidencyMark
from plait.cache.req_to_token import ReqToTokenPool
from plait.cache.slot_allocator import OutOfSlotsError, SlotAllocator

__all__ = [
    "CacheCounters",
    "CacheEvent",
    "CacheHints",
    "EvictionPolicy",
    "HostTier",
    "KVPool",
    "LRUPolicy",
    "NextUse",
    "NextUsePolicy",
    "NoPrefixCache",
    "OutOfSlotsError",
    "PrefixCache",
    "PrefixKV",
    "PrefixMatch",
    "RadixCache",
    "RadixNode",
    "ReqToTokenPool",
    "ResidencyMark",
    "SlotAllocator",
]
