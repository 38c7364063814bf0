"""Programmatic dependent launch (PDL) for the small kernels of a decode step (Hopper and newer).

A batch-1 decode step of an 8B model runs about ten kernels per layer; half of them move a few KB and cost their
launch latency and the drain of the kernel before them, not their work. With PDL, a kernel is launched while the one
before it is still finishing: its programs become resident, may read what does not depend on the previous kernel
(a GEMV prefetches its first weight tile) and block in ``gdc_wait`` until the previous kernel has completed and its
writes are visible.

Invariants every kernel launched with ``launch_options`` keeps (``USE_PDL`` true):
* nothing written by an earlier kernel is read, and nothing an earlier kernel reads is written, before
  ``gdc_wait()``; weights are the only data touched before it;
* ``gdc_launch_dependents()`` comes after ``gdc_wait()``, so at most one kernel ahead is resident and waiting.
A kernel that waits completes only after its predecessor did, so the ordering is transitive along the stream.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

# Launch the decode-path kernels with programmatic dependent launch where the GPU supports it.
ENABLED = True


@functools.cache
def _supported(device_index: int) -> bool:
    return torch.cuda.get_device_capability(device_index)[0] >= 9


def use_pdl(device: torch.device) -> bool:
    """Whether kernels on ``device`` are launched with PDL (CUDA, compute capability 9.0 or newer, ``ENABLED``)."""
    if not ENABLED or device.type != "cuda":
        return False
    return _supported(device.index if device.index is not None else torch.cuda.current_device())


def launch_options(device: torch.device) -> dict[str, bool]:
    """Keyword arguments for a kernel launch: ``launch_pdl`` when ``use_pdl(device)``; pass ``USE_PDL`` to match."""
    return {"launch_pdl": True} if use_pdl(device) else {}


@triton.jit
def wait_for_previous_kernel(USE_PDL: tl.constexpr):
    """Block until the kernel before this one in the stream has completed (no-op without PDL), then let the next
    kernel be launched."""
    if USE_PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
