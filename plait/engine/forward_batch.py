"""The inputs of one forward pass, prepared by the model runner before the model code runs.

Token order inside a batch: first the decode sequences (one new token each), then the extend sequences (a prefill
chunk each, possibly after a cached prefix). ``attention`` is the backend and ``attn_meta`` its per-step metadata,
built once per step and shared by every layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from plait.engine.attention.backend import AttentionBackend


@dataclass
class SequenceLayout:
    """Where one sequence's new tokens sit in the batch and in its KV."""

    req_row: int  # row of req_to_token
    prefix_len: int  # tokens whose KV is already in the pool
    new_len: int  # tokens computed in this step
    # ReqToTokenPool.epoch(req_row) when the step was planned: which holder of the row this is (a backend keeping
    # per-sequence state across steps keys it by (req_row, row_epoch), never by the row alone)
    row_epoch: int = 0


@dataclass
class ForwardBatch:
    input_ids: torch.Tensor  # [tokens] int64
    positions: torch.Tensor  # [tokens] int64
    out_cache_loc: torch.Tensor  # [tokens] KV slot each new token writes
    sample_indices: torch.Tensor  # [rows] token rows whose logits are returned
    num_decode: int  # the first num_decode sequences are decodes (new_len == 1)
    layouts: list[SequenceLayout]
    attention: AttentionBackend
    attn_meta: Any = field(default=None)
    use_graph: bool = False  # a decode batch that ModelRunner.forward serves with a CUDA graph replay
    # sample_indices is every token row in order (a decode batch): the model skips gathering the rows
    samples_every_row: bool = False
