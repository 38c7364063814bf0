"""A cost model of one forward pass on a GPU, for the simulated engine (``EngineConfig.simulate``).

The simulated engine runs the real scheduler, prefix cache, planner and runtime, and replaces only the forward
pass: it waits as long as the named GPU would take and returns fixed logits. Scheduling policies can then be studied
on a CPU machine at a GPU's cost ratios (decode nearly free to batch, prefill bound by matmul rate), which the CPU
model cannot show: on a CPU every token costs about the same, so the batch is never free. Numbers from a simulated
engine are a model's, never a measurement; benches label them so.

A step's device time is the roofline of the step: ``max(bytes / bandwidth, flops / matmul rate) + launch``, where
``bytes`` are the weights plus every sequence's KV read (and written), and ``flops`` the matmuls of the new tokens plus
their attention. The effective rates are the ones ``plait bench engine`` measured for the Llama-3.1-8B shape on each
GPU (see ``bench/results``), not the datasheet's.
"""

from __future__ import annotations

from dataclasses import dataclass

from plait.engine.errors import InvalidRequestError
from plait.engine.forward_batch import SequenceLayout
from plait.engine.model_config import ModelConfig

BYTES_PER_VALUE = 2  # bf16 weights and KV, as on GPU


@dataclass(frozen=True)
class GPUProfile:
    """Effective rates of one GPU (what the engine reached, not the datasheet)."""

    name: str
    bandwidth_bytes_per_s: float  # HBM bytes/s that decode reaches
    matmul_flops_per_s: float  # bf16 FLOP/s that prefill reaches
    launch_s: float  # per step: kernel launches and the graph replay's fixed cost


# Each profile is (read bandwidth, matmul rate, fixed cost per step) as the engine reaches them on that GPU; how they
# were calibrated: docs/decisions.md, 2026-11-21: the simulated engine's GPU profiles.
PROFILES: dict[str, GPUProfile] = {
    "h200": GPUProfile("h200", 3.35e12, 6.7e14, 5e-4),
    "h100": GPUProfile("h100", 2.35e12, 6.0e14, 5e-4),
}


def gpu_profile(name: str) -> GPUProfile:
    """The profile called ``name``; a clear error names the known ones."""
    try:
        return PROFILES[name]
    except KeyError:
        raise InvalidRequestError(
            "simulate", f"unknown GPU profile '{name}'; choose one of {', '.join(PROFILES)}"
        ) from None


class StepCostModel:
    """Device seconds of one forward pass of ``model`` on ``profile``."""

    def __init__(self, model: ModelConfig, profile: GPUProfile) -> None:
        self.profile = profile
        self.params = model.num_parameters()
        self.weight_bytes = self.params * BYTES_PER_VALUE
        self.kv_bytes_per_token = 2 * model.num_layers * model.num_kv_heads * model.head_dim * BYTES_PER_VALUE
        # Attention FLOPs per (query token, key token) pair: QK^T and PV over every layer and head.
        self.attention_flops_per_pair = 4 * model.num_layers * model.num_heads * model.head_dim

    def seconds(self, layouts: list[SequenceLayout]) -> float:
        new_tokens = sum(layout.new_len for layout in layouts)
        kv_tokens = sum(layout.prefix_len + layout.new_len for layout in layouts)
        # A new token attends to the prefix and (causally) to half the new part on average.
        pairs = sum(layout.new_len * (layout.prefix_len + (layout.new_len + 1) / 2) for layout in layouts)
        memory = (self.weight_bytes + kv_tokens * self.kv_bytes_per_token) / self.profile.bandwidth_bytes_per_s
        compute = (
            2 * self.params * new_tokens + self.attention_flops_per_pair * pairs
        ) / self.profile.matmul_flops_per_s
        return max(memory, compute) + self.profile.launch_s
