"""Turns a scheduled batch into model inputs, runs the forward pass, and returns the logits to sample from.

Decode-only batches replay a CUDA graph when graphs are on (see cuda_graphs.py); everything else runs eagerly.
"""

from __future__ import annotations

import torch

from plait.cache import KVPool, ReqToTokenPool
from plait.engine.attention import AttentionBackend
from plait.engine.cuda_graphs import DecodeGraphs
from plait.engine.forward_batch import ForwardBatch, SequenceLayout
from plait.engine.inflight import PENDING, InflightStep
from plait.engine.model import LlamaForCausalLM
from plait.engine.scheduler import ScheduledBatch


class ModelRunner:
    def __init__(
        self,
        model: LlamaForCausalLM,
        kv_pool: KVPool,
        req_to_token: ReqToTokenPool,
        attention: AttentionBackend,
        device: torch.device,
        graphs: DecodeGraphs | None = None,
    ) -> None:
        self.model = model
        self.kv_pool = kv_pool
        self.req_to_token = req_to_token
        self.attention = attention
        self.device = device
        self.graphs = graphs
        self.graph_steps = 0  # forwards served by a graph replay (tests and benchmarks read it)

    def prepare(self, batch: ScheduledBatch, inflight: InflightStep | None = None) -> ForwardBatch:
        """Model inputs for ``batch``. Tokens still ``PENDING`` are taken on the device from ``inflight``."""
        input_ids: list[int] = []
        positions: list[int] = []
        sample_rows: list[int] = []
        layouts: list[SequenceLayout] = []
        for item in batch.seqs:
            seq = item.seq
            start = seq.num_computed
            input_ids.extend(seq.token_ids[start : start + item.new_len])
            positions.extend(range(start, start + item.new_len))
            if item.samples:
                sample_rows.append(len(input_ids) - 1)
            layouts.append(SequenceLayout(seq.req_row, start, item.new_len))
            # The new tokens' slots must be in req_to_token before attention reads the row.
            self.req_to_token.write(seq.req_row, start, item.slots)
        device = self.device
        ids = torch.tensor(input_ids, dtype=torch.int64).to(device, non_blocking=True)
        if inflight is not None:
            self._fill_pending(ids, input_ids, batch, inflight)
        use_graph = (
            self.graphs is not None
            and not batch.extends
            and len(sample_rows) == len(layouts)
            and self.graphs.bucket(len(layouts)) is not None
        )
        forward = ForwardBatch(
            input_ids=ids,
            positions=torch.tensor(positions, dtype=torch.int64).to(device, non_blocking=True),
            out_cache_loc=torch.cat([item.slots for item in batch.seqs]).to(device, non_blocking=True),
            sample_indices=torch.tensor(sample_rows, dtype=torch.int64).to(device, non_blocking=True),
            num_decode=len(batch.decodes),
            layouts=layouts,
            attention=self.attention,
            use_graph=use_graph,
        )
        if not use_graph:  # a graph reads its metadata from static buffers filled at replay
            forward.attn_meta = self.attention.prepare(forward)
        return forward

    @staticmethod
    def _fill_pending(ids: torch.Tensor, host_ids: list[int], batch: ScheduledBatch, inflight: InflightStep) -> None:
        """Copy, on the device, the previous step's sampled tokens into the input positions that hold ``PENDING``."""
        if PENDING not in host_ids:
            return
        row_of = inflight.row_of()
        positions: list[int] = []
        rows: list[int] = []
        offset = 0
        for item in batch.seqs:
            if host_ids[offset + item.new_len - 1] == PENDING:  # only a sequence's last token can be pending
                positions.append(offset + item.new_len - 1)
                rows.append(row_of[id(item.seq)])
            offset += item.new_len
        index = torch.tensor(positions, dtype=torch.int64).to(ids.device, non_blocking=True)
        source = torch.tensor(rows, dtype=torch.int64).to(ids.device, non_blocking=True)
        ids.index_copy_(0, index, inflight.tokens.index_select(0, source))

    def forward(self, forward: ForwardBatch) -> torch.Tensor:
        """Logits ``[sampled rows, vocab]`` (float32) of a prepared batch: a graph replay or the eager model."""
        if forward.use_graph and self.graphs is not None:
            self.graph_steps += 1
            return self.graphs.run(forward.input_ids, forward.positions, forward.out_cache_loc, forward.layouts)
        if forward.attn_meta is None:
            forward.attn_meta = self.attention.prepare(forward)
        return self.model(forward)

    def run(self, batch: ScheduledBatch) -> torch.Tensor:
        """Logits ``[sampling sequences, vocab]`` (float32), in the order of ``batch.seqs`` that sample."""
        return self.forward(self.prepare(batch))
