"""Engine settings: which model, on which device, with how much KV memory and what batch limits."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import torch

from plait.engine.engine_policy import EnginePolicy
from plait.engine.errors import InvalidRequestError

DEFAULT_CPU_KV_SLOTS = 16384
DEFAULT_MAX_CONTEXT = 32768
ATTENTION_BACKENDS = ("auto", "torch", "cpu", "triton")


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
    attention_backend: str = "auto"  # auto (triton on CUDA, cpu on the CPU) | torch | cpu | triton
    # GGUF Q4_0/Q4_1/Q8_0 weights multiplied packed (packed_weights.py) on the CPU: auto (unless dtype is float32,
    # which asks for the exact dequantized path) | on | off (dequantized to dtype)
    packed_weights: str = "auto"
    fused_ops: str = "auto"  # Triton RMSNorm/RoPE/SiLU kernels: auto (with the triton backend on CUDA) | on | off
    overlap: str = "auto"  # the overlap loop (inflight.py): auto (on with CUDA) | on | off
    cuda_graphs: str = "auto"  # auto (on CUDA with a backend that supports them) | on | off
    cuda_graph_max_batch: int = 0  # largest decode batch captured; 0 = min(max_running, 256)
    seed: int = 0
    prefix_cache: str = "radix"  # radix | none
    host_kv_slots: int = 0  # host (CPU) tier size in tokens; 0 = no host tier
    # Admission keeps room for the tokens running sequences will still generate: all of them for a request that
    # ignores EOS, this fraction for one that may stop early. Over-admitting only to retract later wastes prefill.
    decode_reserve_ratio: float = 0.5
    reserve_decode: bool = True  # off: admit whenever the prompt fits (tests use it to force retractions)
    # The run-time policy the engine starts with (eviction, prefix holds, affinity, aging, pins); an executor
    # replaces it with its plan's (``Engine.set_policy``).
    policy: EnginePolicy = field(default_factory=EnginePolicy)
    simulate: str = ""  # a GPU profile (simulated_gpu.PROFILES): model the forward pass's time on CPU, fixed logits
    # Ranks the model is split over (tensor_parallel.py): one process and device each (cuda:0..N-1, or CPU with gloo).
    tensor_parallel: int = 1

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

    def resolve_max_context(self, model_max_position: int) -> int:
        """The context window in tokens: ``max_context`` (0: 32k), at most the model's own window."""
        return min(self.max_context or DEFAULT_MAX_CONTEXT, model_max_position)

    def resolve_attention_backend(self, device: torch.device) -> str:
        if self.attention_backend == "auto":
            return "triton" if device.type == "cuda" else "cpu"
        return self.attention_backend

    def resolve_packed_weights(self, device: torch.device) -> bool:
        if device.type != "cpu" or self.tensor_parallel != 1 or self.packed_weights == "off":
            return False
        return self.packed_weights == "on" or self.dtype != "float32"

    def resolve_fused_ops(self, device: torch.device) -> bool:
        if self.fused_ops == "auto":
            return device.type == "cuda" and self.resolve_attention_backend(device) == "triton"
        return self.fused_ops == "on"

    def _validate_tensor_parallel(self) -> None:
        size = self.tensor_parallel
        if size < 1:
            raise InvalidRequestError("tensor_parallel", f"must be >= 1, got {size}")
        if size == 1:
            return
        if self.simulated:
            raise InvalidRequestError("tensor_parallel", "the simulated engine has no model to split; drop one")
        if self.host_kv_slots:
            raise InvalidRequestError("tensor_parallel", "a host KV tier is not available with tensor parallelism yet")
        device = self.resolve_device()
        if device.type == "cuda" and torch.cuda.device_count() < size:
            raise InvalidRequestError(
                "tensor_parallel", f"{size} ranks need {size} GPUs; this machine has {torch.cuda.device_count()}"
            )

    def validate(self) -> None:
        for name in ("max_running", "max_batch_tokens", "chunk_size"):
            if getattr(self, name) < 1:
                raise InvalidRequestError(name, f"must be >= 1, got {getattr(self, name)}")
        if self.kv_slots < 0 or self.max_context < 0:
            raise InvalidRequestError("kv_slots", "kv_slots and max_context must be >= 0 (0 = automatic)")
        if self.prefix_cache not in ("radix", "none"):
            raise InvalidRequestError("prefix_cache", f"'{self.prefix_cache}': choose radix or none")
        if self.overlap not in ("auto", "on", "off"):
            raise InvalidRequestError("overlap", f"'{self.overlap}': choose auto, on or off")
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise InvalidRequestError(
                "attention_backend", f"'{self.attention_backend}': choose {', '.join(ATTENTION_BACKENDS)}"
            )
        if self.packed_weights not in ("auto", "on", "off"):
            raise InvalidRequestError("packed_weights", f"'{self.packed_weights}': choose auto, on or off")
        if self.fused_ops not in ("auto", "on", "off"):
            raise InvalidRequestError("fused_ops", f"'{self.fused_ops}': choose auto, on or off")
        if self.cuda_graphs not in ("auto", "on", "off"):
            raise InvalidRequestError("cuda_graphs", f"'{self.cuda_graphs}': choose auto, on or off")
        if self.simulated:
            from plait.engine.simulated_gpu import gpu_profile

            gpu_profile(self.simulate)  # an unknown profile names the known ones
        if self.cuda_graph_max_batch < 0:
            raise InvalidRequestError("cuda_graph_max_batch", "must be >= 0 (0 = min(max_running, 256))")
        if self.host_kv_slots < 0:
            raise InvalidRequestError("host_kv_slots", "must be >= 0 (0 = no host tier)")
        if not 0.0 <= self.decode_reserve_ratio <= 1.0:
            raise InvalidRequestError("decode_reserve_ratio", f"must be in [0, 1], got {self.decode_reserve_ratio}")
        self.policy.validate()
        self._validate_tensor_parallel()
        if not 0.0 < self.kv_memory_fraction < 1.0:
            raise InvalidRequestError("kv_memory_fraction", f"must be in (0, 1), got {self.kv_memory_fraction}")
