"""Reference attention in plain PyTorch (CPU and GPU): correct first, vectorised where it is cheap to be.

Decodes are batched: their KV slots are gathered into one padded ``[batch, max_len]`` index per step and a single
``scaled_dot_product_attention`` call serves all of them. Extends (prefill chunks) run one sequence at a time,
since each has its own causal offset; prefill is compute-bound, so the loop costs little.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from plait.cache import KVPool, ReqToTokenPool
from plait.engine.forward_batch import ForwardBatch
from plait.engine.host_copy import to_device


@dataclass
class _ExtendSeq:
    token_start: int
    new_len: int
    kv_slots: torch.Tensor  # [prefix_len + new_len]
    mask: torch.Tensor | None  # [new_len, prefix_len + new_len] bool, None when there is no cached prefix


@dataclass
class TorchAttentionMeta:
    decode_slots: torch.Tensor | None  # [num_decode, max_len]
    decode_mask: torch.Tensor | None  # [num_decode, 1, 1, max_len] bool: True where a real key is
    extends: list[_ExtendSeq]


class TorchAttentionBackend:
    name = "torch"

    def __init__(self, kv_pool: KVPool, req_to_token: ReqToTokenPool, scale: float) -> None:
        self.kv_pool = kv_pool
        self.req_to_token = req_to_token
        self.scale = scale

    def prepare(self, batch: ForwardBatch) -> TorchAttentionMeta:
        table = self.req_to_token.table
        device = table.device
        decode_slots = decode_mask = None
        if batch.num_decode:
            decodes = batch.layouts[: batch.num_decode]
            lens = to_device([d.prefix_len + 1 for d in decodes], torch.int64, device)
            rows = to_device([d.req_row for d in decodes], torch.int64, device)
            max_len = int(lens.max())
            valid = torch.arange(max_len, device=device)[None, :] < lens[:, None]
            # Padded positions read the padding slot 0 and are masked out.
            decode_slots = torch.where(valid, table[rows, :max_len], 0)
            decode_mask = valid[:, None, None, :]
        extends = []
        start = batch.num_decode
        for layout in batch.layouts[batch.num_decode :]:
            total = layout.prefix_len + layout.new_len
            mask = None
            if layout.prefix_len:
                q_pos = torch.arange(layout.prefix_len, total, device=device)[:, None]
                mask = torch.arange(total, device=device)[None, :] <= q_pos
            extends.append(_ExtendSeq(start, layout.new_len, table[layout.req_row, :total], mask))
            start += layout.new_len
        return TorchAttentionMeta(decode_slots, decode_mask, extends)

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        layer: int,
        batch: ForwardBatch,
        kv_stored: bool = False,
    ) -> torch.Tensor:
        meta: TorchAttentionMeta = batch.attn_meta
        if not kv_stored:
            self.kv_pool.write(layer, batch.out_cache_loc, k, v)
        k_pool, v_pool = self.kv_pool.k[layer], self.kv_pool.v[layer]
        out = torch.empty_like(q)
        # The reference computes attention in float32 on every device (bfloat16 probabilities would move the
        # logits more than the kernels it checks do); the output is rounded to the model's dtype.
        compute = torch.float32
        q = q.to(compute)
        if meta.decode_slots is not None:
            n = batch.num_decode
            shape = (*meta.decode_slots.shape, *k_pool.shape[1:])
            flat = meta.decode_slots.flatten()
            # index_select is several times faster than advanced indexing for row gathers on CPU.
            keys = k_pool.index_select(0, flat).view(shape).transpose(1, 2).to(compute)  # [n, kv_heads, len, dim]
            values = v_pool.index_select(0, flat).view(shape).transpose(1, 2).to(compute)
            query = q[:n].unsqueeze(2)  # [n, heads, 1, dim]
            attn = F.scaled_dot_product_attention(
                query, keys, values, attn_mask=meta.decode_mask, scale=self.scale, enable_gqa=True
            )
            out[:n] = attn.squeeze(2).to(out.dtype)
        for seq in meta.extends:
            rows = slice(seq.token_start, seq.token_start + seq.new_len)
            keys = k_pool.index_select(0, seq.kv_slots).transpose(0, 1).unsqueeze(0).to(compute)  # [1, kvh, L, d]
            values = v_pool.index_select(0, seq.kv_slots).transpose(0, 1).unsqueeze(0).to(compute)
            query = q[rows].transpose(0, 1).unsqueeze(0)  # [1, heads, new_len, dim]
            attn = F.scaled_dot_product_attention(
                query,
                keys,
                values,
                attn_mask=seq.mask,
                is_causal=seq.mask is None,
                scale=self.scale,
                enable_gqa=True,
            )
            out[rows] = attn.squeeze(0).transpose(0, 1).to(out.dtype)
        return out
