"""How an ``EngineCore`` is assembled from its config: KV pool size, prefix cache, decode CUDA graphs, the runner."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from plait.cache import CacheHints, HostTier, KVPool, LRUPolicy, NextUsePolicy, NoPrefixCache, RadixCache, SlotAllocator
from plait.engine.attention import create_backend
from plait.engine.cuda_graphs import DecodeGraphs, supports_graphs
from plait.engine.engine_config import DEFAULT_CPU_KV_SLOTS, EngineConfig
from plait.engine.errors import InvalidRequestError
from plait.engine.model_config import ModelConfig
from plait.engine.model_runner import ModelRunner
from plait.engine.simulated_gpu import StepCostModel, gpu_profile
from plait.engine.simulated_runner import SimulatedRunner
from plait.engine.tensor_parallel_workers import TensorParallelRunner

if TYPE_CHECKING:
    from plait.engine.engine_core import EngineCore


def auto_kv_slots(config: EngineConfig, model: ModelConfig, device: torch.device, dtype: torch.dtype) -> int:
    """A fixed count on CPU; on CUDA, ``kv_memory_fraction`` of the memory still free after the weights."""
    if device.type != "cuda":
        return DEFAULT_CPU_KV_SLOTS
    per_slot = KVPool.bytes_per_slot(model.num_layers, model.num_kv_heads, model.head_dim, dtype)
    free, _ = torch.cuda.mem_get_info(device)
    return max(1024, int(free * config.kv_memory_fraction) // per_slot)


def eviction_policy(name: str, program_hints: dict) -> LRUPolicy | NextUsePolicy:
    """The radix cache's eviction order by name: ``lru`` or ``next-use`` (reads ``program_hints``)."""
    return NextUsePolicy(program_hints) if name == "next-use" else LRUPolicy()


def build_prefix_cache(
    config: EngineConfig, allocator: SlotAllocator, kv_pool: KVPool
) -> tuple[RadixCache | NoPrefixCache, CacheHints | None]:
    """The prefix cache the config names, and the hint interface to it (None without a radix cache)."""
    if config.prefix_cache == "none":
        return NoPrefixCache(allocator), None
    hints: dict = {}
    policy = eviction_policy(config.policy.eviction, hints)
    host = HostTier(kv_pool, config.host_kv_slots) if config.host_kv_slots else None
    cache = RadixCache(allocator, policy, host, config.policy.pin_budget_fraction, hints)
    return cache, CacheHints(cache)


def build_decode_graphs(
    config: EngineConfig, model: torch.nn.Module, attention: object, device: torch.device
) -> DecodeGraphs | None:
    """Captured decode graphs when the config asks for them (``auto``: on CUDA with a backend that supports them)."""
    mode = config.cuda_graphs
    capable = device.type == "cuda" and supports_graphs(attention)
    if mode == "off" or (mode == "auto" and not capable):
        return None
    if not capable:
        raise InvalidRequestError(
            "cuda_graphs",
            f"CUDA graphs need a CUDA device and the triton attention backend (device {device}, "
            f"backend '{config.resolve_attention_backend(device)}')",
        )
    max_batch = min(config.cuda_graph_max_batch or 256, config.max_running)
    graphs = DecodeGraphs(model, attention, max_batch, device)
    graphs.capture()
    return graphs


def build_runner(core: EngineCore, mc: ModelConfig, local: ModelConfig) -> ModelRunner:
    """The forward pass: the model on its attention backend (with decode graphs), or the simulated GPU. ``local``:
    this rank's shape of the model ``mc`` (``mc`` itself without tensor parallelism)."""
    config = core.config
    if config.simulated:
        cost = StepCostModel(mc, gpu_profile(config.simulate))
        filler = core.tokenizer.encode("x", add_special_tokens=False)  # not BOS: outputs decode to "xxx..."
        return SimulatedRunner(cost, core.kv_pool, core.req_to_token, filler[0] if filler else 0)
    assert core.model is not None
    attention = create_backend(core.attention_backend, core.kv_pool, core.req_to_token, mc.head_dim**-0.5)
    if core.device.type == "cuda" and hasattr(attention, "precompile"):
        attention.precompile(local.num_heads, core.dtype)  # no kernel compiles in the middle of serving
    graphs = build_decode_graphs(config, core.model, attention, core.device)
    if core.tp_group is not None:
        return TensorParallelRunner(
            core.model, core.kv_pool, core.req_to_token, attention, core.device, graphs, group=core.tp_group
        )
    return ModelRunner(core.model, core.kv_pool, core.req_to_token, attention, core.device, graphs)
