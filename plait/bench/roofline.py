"""The physical limits of the device, measured in the same run as the benchmark they judge.

Decode is memory-bound: a step must read every weight once and each sequence's KV once, so its floor is
``(weight bytes + KV bytes) / read bandwidth``. Prefill is compute-bound: its floor is the model's FLOPs over the
measured dense bf16 matmul rate. Measuring both here (rather than quoting a datasheet) makes a "fraction of the
roofline" compare across H100 and H200 and across noisy shared machines.
"""

from __future__ import annotations

import functools
import statistics
import time
from dataclasses import asdict, dataclass

import torch

from plait.engine.model_config import ModelConfig


@dataclass
class DeviceLimits:
    read_bytes_per_s: float  # streaming read (a reduction over a large buffer): the decode pattern
    copy_bytes_per_s: float  # read + write of a copy, counted both ways (reported for reference)
    matmul_flops_per_s: float  # dense GEMM at the model's dtype

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def _median_time(fn, device: torch.device, repeats: int) -> float:
    """Median seconds of ``fn()`` (CUDA events on GPU, wall clock on CPU), after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_limits(
    device: torch.device, dtype: torch.dtype = torch.bfloat16, *, buffer_bytes: int = 1 << 30, gemm: int = 8192
) -> DeviceLimits:
    """Read and copy bandwidth over ``buffer_bytes`` and the ``gemm``-cubed matmul rate at ``dtype``."""
    if device.type == "cpu":  # keep it quick where nobody needs a roofline to the last percent
        buffer_bytes, gemm = min(buffer_bytes, 1 << 27), min(gemm, 1024)
    n = buffer_bytes // 4
    src = torch.ones(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    read_s = _median_time(src.sum, device, 10)
    copy_s = _median_time(functools.partial(dst.copy_, src), device, 10)
    del src, dst
    a = torch.randn(gemm, gemm, device=device, dtype=dtype)
    b = torch.randn(gemm, gemm, device=device, dtype=dtype)
    mm_s = _median_time(functools.partial(torch.matmul, a, b), device, 10)
    return DeviceLimits(buffer_bytes / read_s, 2 * buffer_bytes / copy_s, 2 * gemm**3 / mm_s)


def weight_bytes_read_per_step(config: ModelConfig, element_size: int) -> int:
    """Bytes of weights one forward pass reads: every matrix once; the embedding table only when it is also the
    output head (tied), since a lookup reads just the batch's rows."""
    c = config
    per_layer = (
        c.hidden_size * (c.q_size + 2 * c.kv_size)  # qkv
        + c.q_size * c.hidden_size  # o
        + 3 * c.hidden_size * c.intermediate_size  # gate, up, down
        + 2 * c.hidden_size  # norms
    )
    head = c.vocab_size * c.hidden_size
    return element_size * (c.num_layers * per_layer + head + c.hidden_size)


def kv_bytes_per_token(config: ModelConfig, element_size: int) -> int:
    return 2 * config.num_layers * config.kv_size * element_size


def decode_step_floor_s(config: ModelConfig, element_size: int, context_lens: list[int], limits: DeviceLimits) -> float:
    """The shortest possible decode step for sequences whose contexts are ``context_lens`` tokens."""
    total = weight_bytes_read_per_step(config, element_size) + kv_bytes_per_token(config, element_size) * sum(
        context_lens
    )
    return total / limits.read_bytes_per_s


def prefill_flops(config: ModelConfig, prompt_lens: list[int]) -> float:
    """FLOPs of prefilling prompts of ``prompt_lens`` from scratch: the matmuls of every token, causal attention,
    and the output head for each prompt's last token only (the engine computes no other logits)."""
    c = config
    linear_per_token = (
        2
        * c.num_layers
        * (
            c.hidden_size * (c.q_size + 2 * c.kv_size)
            + c.q_size * c.hidden_size
            + 3 * c.hidden_size * c.intermediate_size
        )
    )
    total = 0.0
    for n in prompt_lens:
        attention = 2 * 2 * c.num_layers * c.q_size * n * (n + 1) / 2  # QK^T and PV over the causal triangle
        total += linear_per_token * n + attention + 2 * c.vocab_size * c.hidden_size
    return total


def prefill_floor_s(config: ModelConfig, prompt_lens: list[int], limits: DeviceLimits) -> float:
    return prefill_flops(config, prompt_lens) / limits.matmul_flops_per_s
