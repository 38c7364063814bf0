"""CUDA graphs for decode: the whole forward pass of a decode batch replayed as one launch.

Eager decode is bound by the CPU launching a few hundred small kernels per step; a graph replays them all at once.
One graph per bucketed batch size (a batch runs in the smallest bucket that holds it; the padding rows compute
garbage that nobody reads). Every graph reads its inputs from static buffers that ``run`` fills before replaying:
token ids, positions, the KV slot each new token writes, and the attention backend's decode metadata.

Padding rows are harmless by construction: they write their K/V to slot 0 (the pool's padding slot, never handed
out) and attend over one position of req_to_token row 0 (reading a slot is always safe).

The attention backend must provide ``init_graph_buffers(max_bs)``, ``graph_metadata(bs)`` (metadata whose tensors are
views of those buffers) and ``fill_graph_metadata(layouts, bs)``, and its decode path must not synchronise with the
host or allocate differently from one replay to the next.
"""

from __future__ import annotations

from typing import Any

import torch

from plait.engine.forward_batch import ForwardBatch, SequenceLayout

DEFAULT_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256)


def graph_buckets(max_batch: int) -> list[int]:
    """The captured batch sizes up to ``max_batch`` (which is always one of them)."""
    buckets = [b for b in DEFAULT_BUCKETS if b < max_batch]
    return [*buckets, max_batch]


def supports_graphs(backend: Any) -> bool:
    return all(hasattr(backend, name) for name in ("init_graph_buffers", "graph_metadata", "fill_graph_metadata"))


class DecodeGraphs:
    """Captured decode forwards for batch sizes ``graph_buckets(max_batch)``."""

    def __init__(self, model: torch.nn.Module, attention: Any, max_batch: int, device: torch.device) -> None:
        if not supports_graphs(attention):
            raise ValueError(f"the '{attention.name}' attention backend cannot be captured in CUDA graphs")
        self.model = model
        self.attention = attention
        self.device = device
        self.buckets = graph_buckets(max_batch)
        self.max_batch = self.buckets[-1]
        attention.init_graph_buffers(self.max_batch)
        n = self.max_batch
        self.input_ids = torch.zeros(n, dtype=torch.int64, device=device)
        self.positions = torch.zeros(n, dtype=torch.int64, device=device)
        self.out_cache_loc = torch.zeros(n, dtype=torch.int64, device=device)
        self.sample_indices = torch.arange(n, dtype=torch.int64, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        # The batch each graph was captured with. Kept alive: buffers that the forward allocates lazily on its
        # metadata during the warm-up (the decode kernel's split scratch) are baked into the graph by address, so
        # freeing them would let the allocator hand that memory to other tensors while replays still write it.
        self.batches: dict[int, ForwardBatch] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.pool: Any = None

    def _static_batch(self, bs: int) -> ForwardBatch:
        layouts = [SequenceLayout(0, 0, 1)] * bs
        return ForwardBatch(
            input_ids=self.input_ids[:bs],
            positions=self.positions[:bs],
            out_cache_loc=self.out_cache_loc[:bs],
            sample_indices=self.sample_indices[:bs],
            num_decode=bs,
            layouts=layouts,
            attention=self.attention,
            attn_meta=self.attention.graph_metadata(bs),
            samples_every_row=True,
        )

    def capture(self) -> None:
        """Capture every bucket, largest first so the smaller graphs reuse its memory pool."""
        torch.cuda.synchronize(self.device)
        for bs in reversed(self.buckets):
            batch = self._static_batch(bs)
            self.batches[bs] = batch
            self.attention.fill_graph_metadata([SequenceLayout(0, 0, 1)] * bs, bs)
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                for _ in range(2):  # warm-up outside the graph: autotuning, lazy allocations, library handles
                    self.model(batch)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                self.outputs[bs] = self.model(batch)
            if self.pool is None:
                self.pool = graph.pool()
            self.graphs[bs] = graph
        torch.cuda.synchronize(self.device)

    def bucket(self, batch_size: int) -> int | None:
        for bs in self.buckets:
            if bs >= batch_size:
                return bs
        return None

    def run(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        out_cache_loc: torch.Tensor,
        layouts: list[SequenceLayout],
    ) -> torch.Tensor:
        """Logits ``[len(layouts), vocab]`` of a decode batch (all inputs on the host or the device)."""
        n = len(layouts)
        bs = self.bucket(n)
        assert bs is not None, f"decode batch of {n} exceeds the largest graph ({self.max_batch})"
        self.input_ids[:n].copy_(input_ids, non_blocking=True)
        self.positions[:n].copy_(positions, non_blocking=True)
        self.out_cache_loc[:n].copy_(out_cache_loc, non_blocking=True)
        if bs > n:
            self.input_ids[n:bs].zero_()
            self.positions[n:bs].zero_()
            self.out_cache_loc[n:bs].zero_()
        self.attention.fill_graph_metadata(layouts, bs)
        self.graphs[bs].replay()
        return self.outputs[bs][:n]
