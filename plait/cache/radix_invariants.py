"""Consistency checks of a ``RadixCache``, for tests and debugging (``RadixCache.check`` calls this)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from plait.cache.radix import RadixCache


def check_radix(cache: RadixCache) -> None:
    """Assert the tree's invariants: node shapes and links, device KV only below device KV, the incremental
    ``evictable_size``, no slot owned by two nodes, no tree slot free, host slots accounted for."""
    nodes = cache._all_nodes()
    evictable = 0
    device: list[torch.Tensor] = []
    host: list[torch.Tensor] = []
    for node in nodes:
        assert node.key and node.parent is not None and node.parent.children[node.key[0]] is node
        assert node.lock_ref >= 0
        if node.device_slots is not None:
            assert node.device_slots.numel() == len(node)
            assert node.parent.device_slots is not None, "device KV below a node without device KV"
            device.append(node.device_slots)
            if node.on_device and node.lock_ref == 0:
                evictable += len(node)
        if node.host_slots is not None:
            assert node.host_slots.numel() == len(node)
            host.append(node.host_slots)
        assert node.device_slots is not None or node.host_slots is not None, "a node with no KV anywhere"
    assert evictable == cache.evictable_size, f"evictable_size {cache.evictable_size} != {evictable}"
    if device:
        all_device = torch.cat(device)
        assert all_device.numel() == torch.unique(all_device).numel(), "a device slot owned by two nodes"
        assert bool((cache.allocator.refcount(all_device) >= 1).all()), "a tree slot is free"
    if host:
        all_host = torch.cat(host)
        assert all_host.numel() == torch.unique(all_host).numel(), "a host slot owned by two nodes"
    if cache.host is not None:
        assert cache.host.allocator.num_used == sum(h.numel() for h in host), "host slots leaked"
