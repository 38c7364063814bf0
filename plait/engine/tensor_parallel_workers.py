"""A tensor-parallel engine's other ranks: worker processes that run each step rank 0 schedules.

Rank 0 is the engine (scheduler, prefix cache, sampler, overlap loop); ranks 1..N-1 are spawned processes that hold
their part of the model (``tensor_parallel.py``), a KV pool of their KV heads with the same slots, a ``req_to_token``
table and decode CUDA graphs of their own. Every step, rank 0 sends the step over a gloo control group:
- the ``req_to_token`` writes the scheduler made since the last step (prefix matches, shared rows), in order;
- the packed step (``StepInputs``: the one host buffer the model runner copies to its device anyway);
then, when the step has positions whose token the previous step sampled (the overlap loop), it broadcasts the
sampled tokens over the device group, in stream order after the sampling that made them. Each rank then builds the
same ``ForwardBatch`` on its device and runs the forward pass; the collectives inside the model keep the ranks in
step. Only rank 0 samples. A ``None`` message stops the workers.

Invariant: every rank issues the same collectives in the same order: the control message, the token broadcast
(exactly when the step has pending positions), then the model's all-reduces and the vocabulary gather.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import socket
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from plait.cache import ReqToTokenPool
from plait.engine.inflight import InflightStep
from plait.engine.model_runner import ModelRunner, StepInputs, pending_tokens
from plait.engine.scheduler import ScheduledBatch
from plait.engine.tensor_parallel import TensorParallel

if TYPE_CHECKING:
    from plait.engine.engine_config import EngineConfig
    from plait.engine.forward_batch import ForwardBatch

# A rank that waits longer than this for another (a dead worker, a hung collective) fails instead of hanging.
COLLECTIVE_TIMEOUT = timedelta(minutes=10)


@dataclass
class StepMessage:
    """What rank 0 sends the workers before a step."""

    step: StepInputs
    table_writes: list[tuple[int, int, torch.Tensor]]  # (row, start, slots) in the order they were made
    pending_tokens: tuple[tuple[int, ...], torch.dtype] | None = None  # shape and dtype of the token broadcast


@dataclass
class WorkerSetup:
    """What the workers learn from rank 0 once its model is built: the sizes rank 0 chose."""

    kv_slots: int
    max_context: int


class MirroredReqToToken(ReqToTokenPool):
    """Rank 0's ``req_to_token``: every write is also recorded, for the next step's message to the workers."""

    def __init__(self, max_requests: int, max_context: int, device: torch.device | str = "cpu") -> None:
        super().__init__(max_requests, max_context, device)
        self.unsent: list[tuple[int, int, torch.Tensor]] = []

    def write(self, row: int, start: int, slots: torch.Tensor) -> None:
        super().write(row, start, slots)
        self.unsent.append((row, start, slots.detach().to("cpu", copy=True)))

    def take_unsent(self) -> list[tuple[int, int, torch.Tensor]]:
        writes, self.unsent = self.unsent, []
        return writes


@dataclass
class TensorParallelGroup:
    """Rank 0's handle on the group: its ``TensorParallel`` place, the control group and the worker processes."""

    tp: TensorParallel
    control: dist.ProcessGroup
    workers: list[multiprocessing.process.BaseProcess] = field(default_factory=list)
    stopped: bool = False

    @classmethod
    def start(cls, config: EngineConfig, device: torch.device) -> TensorParallelGroup:
        """Spawns ranks 1..N-1 and joins the group as rank 0 (NCCL on CUDA, gloo on CPU)."""
        size = config.tensor_parallel
        init_method = f"tcp://127.0.0.1:{_free_port()}"
        context = multiprocessing.get_context("spawn")
        workers = [
            context.Process(target=worker_main, args=(rank, init_method, config), daemon=True, name=f"plait-tp{rank}")
            for rank in range(1, size)
        ]
        for worker in workers:
            worker.start()
        tp, control = join_group(0, size, init_method, device)
        return cls(tp, control, workers)

    def share_setup(self, setup: WorkerSetup) -> None:
        """Tells the workers the KV pool size and context window rank 0 chose (they build theirs to match)."""
        dist.broadcast_object_list([setup], src=0, group=self.control)

    def send_step(self, message: StepMessage, pending: torch.Tensor | None) -> None:
        dist.broadcast_object_list([message], src=0, group=self.control)
        if pending is not None:
            dist.broadcast(pending, src=0, group=self.tp.group)

    def stop(self) -> None:
        """Stops the workers (they leave their loop and exit) and leaves the group."""
        if self.stopped:
            return
        self.stopped = True
        with contextlib.suppress(RuntimeError):  # a worker already gone: it is terminated below
            dist.broadcast_object_list([None], src=0, group=self.control)
        for worker in self.workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.terminate()
        dist.destroy_process_group()


class TensorParallelRunner(ModelRunner):
    """Rank 0's model runner: each step it prepares is sent to the workers before it runs here."""

    def __init__(self, *args, group: TensorParallelGroup, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.group = group

    def prepare(self, batch: ScheduledBatch, inflight: InflightStep | None = None) -> ForwardBatch:
        step = self.pack(batch, inflight)
        pending = pending_tokens(step, inflight)
        assert isinstance(self.req_to_token, MirroredReqToToken)
        shape = None if pending is None else (tuple(pending.shape), pending.dtype)
        self.group.send_step(StepMessage(step, self.req_to_token.take_unsent(), shape), pending)
        return self.unpack(step, pending)

    def close(self) -> None:
        self.group.stop()


def join_group(
    rank: int, size: int, init_method: str, device: torch.device
) -> tuple[TensorParallel, dist.ProcessGroup]:
    """Joins the default group (the model's collectives) and a gloo control group (the step messages)."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=size, timeout=COLLECTIVE_TIMEOUT)
    control = dist.new_group(backend="gloo", timeout=COLLECTIVE_TIMEOUT) if backend != "gloo" else dist.group.WORLD
    return TensorParallel(rank, size, dist.group.WORLD), control


def worker_main(rank: int, init_method: str, config: EngineConfig) -> None:
    """A worker rank: builds its part of the engine and runs every step rank 0 sends until told to stop."""
    # Imported here: the spawned process imports only what a worker needs.
    from plait.cache import KVPool
    from plait.engine.attention import create_backend
    from plait.engine.engine_setup import build_decode_graphs
    from plait.engine.model_loader import build_model, resolve_model
    from plait.engine.model_ops import TORCH_OPS, triton_ops

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # rank 0 stops the workers (a Ctrl-C reaches the whole group)
    size = config.tensor_parallel
    device = config.resolve_device()
    if device.type == "cuda":
        device = torch.device("cuda", rank)
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // size))
    dtype = config.resolve_dtype(device)
    tp, control = join_group(rank, size, init_method, device)
    source = resolve_model(config.model, config.weights)
    max_context = config.resolve_max_context(source.config.max_position)
    ops = triton_ops() if config.resolve_fused_ops(device) else TORCH_OPS
    model = build_model(source, max_context, device, dtype, config.seed, ops, tp=tp)
    received: list[WorkerSetup | None] = [None]
    dist.broadcast_object_list(received, src=0, group=control)
    setup = received[0]
    assert setup is not None
    local = model.config
    kv_pool = KVPool(local.num_layers, setup.kv_slots, local.num_kv_heads, local.head_dim, dtype, device)
    req_to_token = ReqToTokenPool(config.max_running, setup.max_context + 1, device)
    attention = create_backend(config.resolve_attention_backend(device), kv_pool, req_to_token, local.head_dim**-0.5)
    if device.type == "cuda" and hasattr(attention, "precompile"):
        attention.precompile(local.num_heads, dtype)
    graphs = build_decode_graphs(config, model, attention, device)
    runner = ModelRunner(model, kv_pool, req_to_token, attention, device, graphs)
    while True:
        message: list[StepMessage | None] = [None]
        dist.broadcast_object_list(message, src=0, group=control)
        step = message[0]
        if step is None:
            break
        for row, start, slots in step.table_writes:
            req_to_token.write(row, start, slots)
        pending = None
        if step.pending_tokens is not None:
            shape, token_dtype = step.pending_tokens
            pending = torch.empty(shape, dtype=token_dtype, device=device)
            dist.broadcast(pending, src=0, group=tp.group)
        runner.forward(runner.unpack(step.step, pending))  # the logits are rank 0's to sample
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
