"""Host-to-device copies that never stall the GPU stream.

A copy from pageable host memory makes CUDA synchronise the stream before it starts: in the middle of a step's
preparation, that waits for the previous step's forward pass and undoes the overlap loop. Staging the values in
pinned memory (PyTorch's caching host allocator: no ``cudaHostAlloc`` per call; a block is reused only after its copy
has completed) makes the copy truly asynchronous. On CPU devices the tensor is returned as is.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def to_device(values: Sequence[int] | Sequence[float], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``torch.tensor(values, dtype)`` on ``device``, copied without synchronising the stream."""
    return pinned_to_device(torch.tensor(values, dtype=dtype), device)


def pinned_to_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``host`` (a CPU tensor) on ``device``, staged through pinned memory when the device is a GPU."""
    if device.type == "cpu":
        return host
    if not host.is_pinned():
        host = host.pin_memory()
    return host.to(device, non_blocking=True)
