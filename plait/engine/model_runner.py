"""Turns a scheduled batch into model inputs, runs the forward pass, and returns the logits to sample from.

Decode-only batches replay a CUDA graph when graphs are on (see cuda_graphs.py); everything else runs eagerly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from plait.cache import KVPool, ReqToTokenPool
from plait.engine.attention import AttentionBackend
from plait.engine.cuda_graphs import DecodeGraphs
from plait.engine.forward_batch import ForwardBatch, SequenceLayout
from plait.engine.host_copy import pinned_to_device
from plait.engine.inflight import PENDING, InflightStep
from plait.engine.model import LlamaForCausalLM
from plait.engine.scheduler import ScheduledBatch


@dataclass
class StepInputs:
    """One step's inputs as the host packs them: ``host`` holds input ids, KV slots, positions, req_to_token
    positions, sampled rows, pending positions and their rows in the previous step, in that order."""

    host: torch.Tensor  # int64
    num_tokens: int
    num_samples: int
    num_pending: int
    num_decode: int
    layouts: list[SequenceLayout]
    has_extends: bool


def pending_tokens(step: StepInputs, inflight: InflightStep | None) -> torch.Tensor | None:
    """The previous step's sampled tokens (on the device) when ``step`` has positions that take them."""
    if not step.num_pending:
        return None
    assert inflight is not None
    return inflight.tokens


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
        step = self.pack(batch, inflight)
        return self.unpack(step, pending_tokens(step, inflight))

    def pack(self, batch: ScheduledBatch, inflight: InflightStep | None = None) -> StepInputs:
        """Everything the step needs from the host, in one int64 buffer (``StepInputs``): no copy waits for the
        GPU, and a tensor-parallel group's other ranks receive the step as this buffer."""
        input_ids: list[int] = []
        positions: list[int] = []
        table_index: list[int] = []  # flat req_to_token positions of the new tokens (their slots go there)
        sample_rows: list[int] = []
        pending_at: list[int] = []  # input positions whose token is the previous step's, still on the device
        pending_rows: list[int] = []
        layouts: list[SequenceLayout] = []
        width = self.req_to_token.table.shape[1]
        row_of = inflight.row_of() if inflight is not None else {}
        for item in batch.seqs:
            seq = item.seq
            start = seq.num_computed
            input_ids.extend(seq.token_ids[start : start + item.new_len])
            positions.extend(range(start, start + item.new_len))
            base = seq.req_row * width + start
            table_index.extend(range(base, base + item.new_len))
            if input_ids[-1] == PENDING:  # only a sequence's last token can be pending
                pending_at.append(len(input_ids) - 1)
                pending_rows.append(row_of[id(seq)])
            if item.samples:
                sample_rows.append(len(input_ids) - 1)
            layouts.append(SequenceLayout(seq.req_row, start, item.new_len, self.req_to_token.epoch(seq.req_row)))
        n = len(input_ids)
        slots = torch.cat([item.slots for item in batch.seqs])
        parts = [input_ids, positions, table_index, sample_rows, pending_at, pending_rows]
        host = torch.empty(4 * n + len(sample_rows) + 2 * len(pending_at), dtype=torch.int64)
        host[:n] = torch.tensor(input_ids, dtype=torch.int64)
        host[n : 2 * n] = slots
        offset = 2 * n
        for part in parts[1:]:
            host[offset : offset + len(part)] = torch.tensor(part, dtype=torch.int64)
            offset += len(part)
        return StepInputs(host, n, len(sample_rows), len(pending_at), len(batch.decodes), layouts, bool(batch.extends))

    def unpack(self, step: StepInputs, pending_tokens: torch.Tensor | None) -> ForwardBatch:
        """The ``ForwardBatch`` of a packed step; ``pending_tokens``: the previous step's sampled tokens (on the
        device), which the step's pending positions take."""
        n, num_samples, num_pending = step.num_tokens, step.num_samples, step.num_pending
        device_values = pinned_to_device(step.host, self.device)
        ids, out_cache_loc, positions_t, table_t, samples_t, at_t, rows_t = device_values.split(
            [n, n, n, n, num_samples, num_pending, num_pending]
        )
        # The new tokens' slots must be in req_to_token before attention reads the row.
        self.req_to_token.table.view(-1).index_copy_(0, table_t, out_cache_loc)
        if num_pending:
            assert pending_tokens is not None
            ids = ids.clone()  # the packed buffer stays intact; ids is written on the device
            ids.index_copy_(0, at_t, pending_tokens.index_select(0, rows_t))
        use_graph = (
            self.graphs is not None
            and not step.has_extends
            and num_samples == len(step.layouts)
            and self.graphs.bucket(len(step.layouts)) is not None
        )
        forward = ForwardBatch(
            input_ids=ids,
            positions=positions_t,
            out_cache_loc=out_cache_loc,
            sample_indices=samples_t,
            num_decode=step.num_decode,
            layouts=step.layouts,
            attention=self.attention,
            use_graph=use_graph,
            samples_every_row=num_samples == n,
        )
        if not use_graph:  # a graph reads its metadata from static buffers filled at replay
            forward.attn_meta = self.attention.prepare(forward)
        return forward

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
