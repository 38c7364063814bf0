"""Engine settings: which model, on which device, with how much KV memory and what batch limits."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from plait.engine.errors import InvalidRequestError

DEFAULT_CPU_KV_SLOTS = 16384
DEFAULT_MAX_CONTEXT = 32768


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """True when the CPU multiplies bfloat16 natively (AVX512-BF16 or AMX): bf16 weights then halve the memory
    traffic of decode, which is what bounds it, at the precision most checkpoints are published in."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags for flag in (" avx512_bf16", " amx_bf16"))


@dataclass
class EngineConfig:
    """``model``: ``default``, a GGUF file, an HF directory, or a dummy shape name (with ``weights='dummy'``).

    ``dtype == 'auto'``: bfloat16 on CUDA and on CPUs with native bf16 arithmetic, float32 otherwise.
    ``kv_slots == 0`` sizes the KV pool automatically (a fixed count on CPU; ``kv_memory_fraction`` of the free GPU
    memory after the weights on CUDA). ``max_context == 0`` takes the model's window, capped at 32k tokens.
    """

    model: str = "default"
    weights: str = "auto"
    tokenizer: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    max_context: int = 0
    kv_slots: int = 0
    kv_memory_fraction: float = 0.85
    max_running: int = 256
    max_batch_tokens: int = 2048
    chunk_size: int = 512
    attention_backend: str = "auto"  # auto (triton on CUDA, torch elsewhere) | torch | triton
    fused_ops: str = "auto"  # Triton RMSNorm/RoPE/SiLU kernels: auto (with the triton backend on CUDA) | on | off
    overlap: str = "auto"  # the overlap loop (inflight.py): auto (on with CUDA) | on | off
    cuda_graphs: str = "auto"  # auto (on CUDA with a backend that supports them) | on | off
    cuda_graph_max_batch: int = 0  # largest decode batch captured; 0 = min(max_running, 256)
    seed: int = 0
    prefix_cache: str = "radix"  # radix | none
    eviction_policy: str = "lru"  # lru | next-use (acts on the runtime's next-use hints)
    host_kv_slots: int = 0  # host (CPU) tier size in tokens; 0 = no host tier
    pin_budget_fraction: float = 0.25  # at most this fraction of the KV pool may be pinned
    max_queue_wait_s: float = 0.0  # anti-starvation: a request waiting longer goes ahead of all priorities (0: off)
    prefix_first: bool = True  # hold a prompt back while a running prefill computes its prefix (compute it once)
    pins_hold_admissions: bool = True  # pinned KV keeps new prompts out (off: pins only order eviction)
    affinity_window_s: float = 0.0  # cache affinity: reorder admission by resident prefix within this window (0: off)
    # Decodes sharing a cached prefix attend it together, reading it once per tile (triton backend; prefix_groups.py).
    # Off by default: on an H200 it sped the attention up 1.2-2.3x at batch 48-256 on 2.5k-3.3k shared tokens but
    # slowed it at batch 64 (0.85x), and moved no workflow suite (bench/results/h200_2026-11-22g). Set at start, it
    # also captures the shared-prefix decode graphs; configure() switches it at run time.
    shared_prefix_decode: bool = False
    simulate: str = ""  # a GPU profile (simulated_gpu.PROFILES): model the forward pass's time on CPU, fixed logits

    @property
    def simulated(self) -> bool:
        return bool(self.simulate)

    def resolve_device(self) -> torch.device:
        if self.simulated:
            return torch.device("cpu")  # the simulated model computes nothing; its GPU is a cost model
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def resolve_dtype(self, device: torch.device) -> torch.dtype:
        names = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        if self.dtype not in names:
            raise InvalidRequestError("dtype", f"unknown dtype '{self.dtype}'; choose one of {', '.join(names)}")
        if names[self.dtype] is not None:
            return names[self.dtype]
        if device.type == "cuda" or cpu_has_fast_bf16():
            return torch.bfloat16
        return torch.float32

    def resolve_attention_backend(self, device: torch.device) -> str:
        if self.attention_backend == "auto":
            return "triton" if device.type == "cuda" else "torch"
        return self.attention_backend

    def resolve_fused_ops(self, device: torch.device) -> bool:
        if self.fused_ops == "auto":
            return device.type == "cuda" and self.resolve_attention_backend(device) == "triton"
        return self.fused_ops == "on"

    def validate(self) -> None:
        for name in ("max_running", "max_batch_tokens", "chunk_size"):
            if getattr(self, name) < 1:
                raise InvalidRequestError(name, f"must be >= 1, got {getattr(self, name)}")
        if self.kv_slots < 0 or self.max_context < 0:
            raise InvalidRequestError("kv_slots", "kv_slots and max_context must be >= 0 (0 = automatic)")
        if self.prefix_cache not in ("radix", "none"):
            raise InvalidRequestError("prefix_cache", f"'{self.prefix_cache}': choose radix or none")
        if self.eviction_policy not in ("lru", "next-use"):
            raise InvalidRequestError("eviction_policy", f"'{self.eviction_policy}': choose lru or next-use")
        if self.overlap not in ("auto", "on", "off"):
            raise InvalidRequestError("overlap", f"'{self.overlap}': choose auto, on or off")
        if self.attention_backend not in ("auto", "torch", "triton"):
            raise InvalidRequestError("attention_backend", f"'{self.attention_backend}': choose auto, torch or triton")
        if self.fused_ops not in ("auto", "on", "off"):
            raise InvalidRequestError("fused_ops", f"'{self.fused_ops}': choose auto, on or off")
        if self.cuda_graphs not in ("auto", "on", "off"):
            raise InvalidRequestError("cuda_graphs", f"'{self.cuda_graphs}': choose auto, on or off")
        if self.simulated:
            from plait.engine.simulated_gpu import gpu_profile

            gpu_profile(self.simulate)  # an unknown profile names the known ones
        if self.cuda_graph_max_batch < 0:
            raise InvalidRequestError("cuda_graph_max_batch", "must be >= 0 (0 = min(max_running, 256))")
        if not self.max_queue_wait_s >= 0:
            raise InvalidRequestError("max_queue_wait_s", f"must be >= 0 (0 = off), got {self.max_queue_wait_s}")
        if not self.affinity_window_s >= 0:
            raise InvalidRequestError("affinity_window_s", f"must be >= 0 (0 = off), got {self.affinity_window_s}")
        if self.host_kv_slots < 0:
            raise InvalidRequestError("host_kv_slots", "must be >= 0 (0 = no host tier)")
        if not 0.0 <= self.pin_budget_fraction <= 1.0:
            raise InvalidRequestError("pin_budget_fraction", f"must be in [0, 1], got {self.pin_budget_fraction}")
        if not 0.0 < self.kv_memory_fraction < 1.0:
            raise InvalidRequestError("kv_memory_fraction", f"must be in (0, 1), got {self.kv_memory_fraction}")
