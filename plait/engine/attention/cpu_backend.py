"""Attention for serving on the CPU: every decode of a step in one batched computation, every extend in another.

Rules:
- Products run in the model's dtype (bfloat16 where the CPU multiplies it natively) on grouped queries, so each
  KV head's keys are read once for the query heads that share it (GQA); scores and softmax are float32.
- Decodes whose KV rows start with the same slots (a shared system prompt, one program's fan-out) attend to that
  shared prefix once for the whole batch, as one matrix product over the prefix's keys, and to the rest of each
  sequence separately; the two parts merge by their log-sum-exp, which is exact. Reading the shared keys once
  instead of once per sequence is what makes concurrent agents with one system prompt cheap.
- Each decode's own rows (after its group's shared prefix) come from the decode KV cache (``decode_kv_cache.py``),
  which keeps them head-major from one step to the next and copies only the rows added since: a decode step copies
  O(new tokens), not O(context). Decodes are attended in the cache's lane order and their outputs put back in the
  step's order. Past the cache's memory bound a step gathers every row from the pool in every layer instead.
- Extends (prefill chunks) are padded to the longest chunk and the longest context of the step and run as one
  masked float32 ``scaled_dot_product_attention`` call (tiled, so a long context needs no score matrix): a query row
  attends to its cached prefix and to its chunk up to itself.

The reference backend (``torch_backend.py``) stays the checked definition; this one is tested against it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from plait.cache import KVPool, ReqToTokenPool
from plait.engine.attention.decode_kv_cache import DecodeKVCache, DecodeKVPlan
from plait.engine.forward_batch import ForwardBatch
from plait.engine.host_copy import to_device

# The shortest slot prefix shared by every decode of a step that is attended once for all of them.
MIN_SHARED_PREFIX = 32
# The decode KV cache holds at most this many token rows per KV pool slot (its headroom and padding included).
DECODE_CACHE_ROWS_PER_SLOT = 2


def _head_major(slots: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """Rows of a pool viewed as ``[slots * kv_heads, dim]`` for ``slots`` (``[..., length]``), ordered
    ``[..., kv_heads, length]``: one ``index_select`` then yields the layout the products read, with no copy."""
    heads = torch.arange(kv_heads, device=slots.device)[:, None]
    return (slots.unsqueeze(-2) * kv_heads + heads).flatten()


def _mask_bias(visible: torch.Tensor) -> torch.Tensor:
    """The additive float32 bias ``[sequences, 1, 1, length]`` of ``visible`` ``[sequences, length]`` (True: attend)."""
    bias = torch.zeros(visible.shape, dtype=torch.float32, device=visible.device)
    return bias.masked_fill_(~visible, float("-inf"))[:, None, None, :]


@dataclass
class _Keys:
    """The KV rows of a group of sequences: slots ``[sequences, length]``, their head-major pool rows (computed
    once per step for every layer) and where each query may attend: ``mask`` ``[sequences, 1, queries, length]``
    (True: attend) or the additive float32 ``bias`` of the same."""

    slots: torch.Tensor
    rows: torch.Tensor
    bias: torch.Tensor | None = None
    mask: torch.Tensor | None = None


@dataclass
class _SharedPrefix:
    """Decodes (``members``: their indices among the step's decodes, then their lanes) whose KV rows all start with
    ``slots``."""

    members: torch.Tensor
    slots: torch.Tensor
    rows: torch.Tensor  # head-major pool rows of ``slots``


def _shared_prefixes(slots: torch.Tensor, lens: list[int], kv_heads: int) -> list[_SharedPrefix]:
    """The groups of decodes that start with the same KV slots, with the longest prefix each group shares (at least
    ``MIN_SHARED_PREFIX`` slots, and never a member's current token). ``slots``: ``[decodes, max_len]``."""
    if len(lens) < 2:
        return []
    first = slots[:, 0]
    keys, counts = torch.unique(first, return_counts=True)
    groups = []
    for key in keys[counts > 1].tolist():
        members = (first == key).nonzero().flatten()
        limit = min(lens[i] for i in members.tolist()) - 1
        if limit < MIN_SHARED_PREFIX:
            continue
        rows = slots[members, :limit]
        length = int((rows == rows[:1]).all(dim=0).cumprod(0).sum())
        if length >= MIN_SHARED_PREFIX:
            prefix = rows[0, :length].clone()
            groups.append(_SharedPrefix(members, prefix, _head_major(prefix, kv_heads)))
    return groups


@dataclass
class _Decodes:
    """The step's decodes, attended in lane order: ``order[lane]`` is the decode in each lane, ``lane_of`` the inverse
    (both None: each decode is in the lane of its index). Their own rows (after their group's shared prefix, where
    there is one) come from the decode cache (``plan``) or, without one, are gathered from the pool (``keys``);
    ``bias`` ``[decodes, 1, 1, length]`` masks each lane's positions past its rows (None: there are none)."""

    order: torch.Tensor | None
    lane_of: torch.Tensor | None
    bias: torch.Tensor | None
    plan: DecodeKVPlan | None
    keys: _Keys | None


@dataclass
class CpuAttentionMeta:
    decode: _Decodes | None
    shared: list[_SharedPrefix]
    extend: _Keys | None
    extend_rows: torch.Tensor | None  # [extend tokens] padded row of each extend token: sequence * max_new + i
    max_new: int


def _attend(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor | None, with_lse: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Grouped-query attention. ``q``: ``[b, kv_heads, rows, dim]``, already scaled (rows: the query heads of each KV
    head times the queries); ``keys``/``values``: ``[b, kv_heads, length, dim]``; ``bias`` (None: every key visible)
    broadcastable to the scores. Returns the float32 output and, with ``with_lse``, each row's log-sum-exp."""
    scores = torch.matmul(q, keys.transpose(-1, -2)).float()
    if bias is not None:
        scores += bias
    if not with_lse:
        return torch.matmul(torch.softmax(scores, dim=-1).to(values.dtype), values).float(), None
    lse = torch.logsumexp(scores, dim=-1, keepdim=True)
    probs = torch.exp(scores - lse).to(values.dtype)
    return torch.matmul(probs, values).float(), lse


class CpuAttentionBackend:
    name = "cpu"

    def __init__(self, kv_pool: KVPool, req_to_token: ReqToTokenPool, scale: float) -> None:
        self.kv_pool = kv_pool
        self.req_to_token = req_to_token
        self.scale = scale
        self.decode_cache = DecodeKVCache(kv_pool, DECODE_CACHE_ROWS_PER_SLOT * kv_pool.num_slots)

    # ---- per step ----------------------------------------------------------------------------------------------

    def prepare(self, batch: ForwardBatch) -> CpuAttentionMeta:
        table = self.req_to_token.table
        decode = extend = extend_rows = None
        shared: list[_SharedPrefix] = []
        max_new = 0
        kv_heads = self.kv_pool.k[0].shape[1]
        if batch.num_decode:
            decode, shared = self._prepare_decodes(batch, table, kv_heads)
        else:
            self.decode_cache.clear()  # no sequence decodes now: none keeps its rows
        if len(batch.layouts) > batch.num_decode:
            extend, extend_rows, max_new = self._prepare_extends(batch, table, kv_heads)
        return CpuAttentionMeta(decode, shared, extend, extend_rows, max_new)

    def _prepare_decodes(
        self, batch: ForwardBatch, table: torch.Tensor, kv_heads: int
    ) -> tuple[_Decodes, list[_SharedPrefix]]:
        decodes = batch.layouts[: batch.num_decode]
        device = table.device
        lens_list = [d.prefix_len + 1 for d in decodes]
        lens = to_device(lens_list, torch.int64, device)
        rows = to_device([d.req_row for d in decodes], torch.int64, device)
        max_len = max(lens_list)
        slots = table[rows, :max_len]
        shared = _shared_prefixes(slots, lens_list, kv_heads)
        start = torch.zeros(len(decodes), dtype=torch.int64, device=device)
        for prefix in shared:
            start[prefix.members] = prefix.slots.numel()
        # Each decode's own rows begin after its group's shared prefix; padding reads slot 0 and is masked out.
        own_len = int((lens - start).max())
        positions = start[:, None] + torch.arange(own_len, device=device)[None, :]
        valid = positions < lens[:, None]
        own = torch.where(valid, slots.gather(1, positions.clamp(max=max_len - 1)), 0)
        keys = [(d.req_row, d.row_epoch, first) for d, first in zip(decodes, start.tolist(), strict=True)]
        plan = self.decode_cache.plan(keys, own, (lens - start).tolist())
        if plan is None:
            bias = None if bool(valid.all()) else _mask_bias(valid)
            return _Decodes(None, None, bias, None, _Keys(own, _head_major(own, kv_heads))), shared
        held = torch.arange(plan.capacity, device=device)[None, :] < plan.lengths[:, None]
        bias = _mask_bias(held)
        if plan.in_order:
            return _Decodes(None, None, bias, plan, None), shared
        shared = [replace(prefix, members=plan.lane_of[prefix.members]) for prefix in shared]
        return _Decodes(plan.order, plan.lane_of, bias, plan, None), shared

    @staticmethod
    def _prepare_extends(batch: ForwardBatch, table: torch.Tensor, kv_heads: int) -> tuple[_Keys, torch.Tensor, int]:
        extends = batch.layouts[batch.num_decode :]
        device = table.device
        max_new = max(e.new_len for e in extends)
        max_total = max(e.prefix_len + e.new_len for e in extends)
        prefix = to_device([e.prefix_len for e in extends], torch.int64, device)
        new = to_device([e.new_len for e in extends], torch.int64, device)
        rows = to_device([e.req_row for e in extends], torch.int64, device)
        key_pos = torch.arange(max_total, device=device)
        query = torch.arange(max_new, device=device)
        total = prefix + new
        # A query i of a chunk sees keys up to its own position prefix + i; rows past the chunk see key 0 only.
        visible = key_pos[None, None, :] <= (prefix[:, None, None] + query[None, :, None])
        visible &= key_pos[None, None, :] < total[:, None, None]
        visible[:, :, 0] |= query[None, :] >= new[:, None]
        slots = torch.where(key_pos[None, :] < total[:, None], table[rows, :max_total], 0)
        token_rows = torch.cat([s * max_new + torch.arange(e.new_len, device=device) for s, e in enumerate(extends)])
        return _Keys(slots, _head_major(slots, kv_heads), mask=visible[:, None, :, :]), token_rows, max_new

    # ---- per layer ---------------------------------------------------------------------------------------------

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        layer: int,
        batch: ForwardBatch,
        kv_stored: bool = False,
    ) -> torch.Tensor:
        meta: CpuAttentionMeta = batch.attn_meta
        if not kv_stored:
            self.kv_pool.write(layer, batch.out_cache_loc, k, v)
        k_pool, v_pool = self.kv_pool.k[layer], self.kv_pool.v[layer]
        out = torch.empty_like(q)
        n = batch.num_decode
        if meta.decode is not None:
            out[:n] = self._decode(q[:n], layer, k_pool, v_pool, meta).to(out.dtype)
        if meta.extend is not None:
            out[n:] = self._extend(q[n:], k_pool, v_pool, meta).to(out.dtype)
        return out

    @staticmethod
    def _gather(pool: torch.Tensor, rows: torch.Tensor, slots: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The pool rows ``rows`` (``_head_major`` of ``slots``) as ``[..., kv_heads, length, dim]`` in ``dtype``."""
        kv_heads, dim = pool.shape[1:]
        gathered = pool.view(-1, dim).index_select(0, rows)
        return gathered.view(*slots.shape[:-1], kv_heads, slots.shape[-1], dim).to(dtype)

    def _decode(
        self, q: torch.Tensor, layer: int, k_pool: torch.Tensor, v_pool: torch.Tensor, meta: CpuAttentionMeta
    ) -> torch.Tensor:
        n, heads, dim = q.shape
        kv_heads = k_pool.shape[1]
        group = heads // kv_heads
        decodes = meta.decode
        assert decodes is not None
        grouped = (q * self.scale).view(n, kv_heads, group, dim)
        if decodes.order is not None:
            grouped = grouped.index_select(0, decodes.order)  # lane order
        if decodes.plan is not None:
            keys, values = (t.to(q.dtype) for t in self.decode_cache.layer(layer, decodes.plan))
        else:
            assert decodes.keys is not None
            keys = self._gather(k_pool, decodes.keys.rows, decodes.keys.slots, q.dtype)  # [n, kv_heads, len, dim]
            values = self._gather(v_pool, decodes.keys.rows, decodes.keys.slots, q.dtype)
        out, lse = _attend(grouped, keys, values, decodes.bias, with_lse=bool(meta.shared))
        for prefix in meta.shared:
            # The members' query heads against the shared keys at once: [kv_heads, members * group, dim] rows.
            m = prefix.members.numel()
            shared_k = self._gather(k_pool, prefix.rows, prefix.slots, q.dtype)  # [kv_heads, shared, dim]
            shared_v = self._gather(v_pool, prefix.rows, prefix.slots, q.dtype)
            rows = grouped[prefix.members].transpose(0, 1).reshape(kv_heads, m * group, dim)
            common, common_lse = _attend(rows, shared_k, shared_v, None, with_lse=True)
            common = common.view(kv_heads, m, group, dim).transpose(0, 1)
            common_lse = common_lse.view(kv_heads, m, group, 1).transpose(0, 1)
            own, own_lse = out[prefix.members], lse[prefix.members]
            total = torch.logaddexp(own_lse, common_lse)
            out[prefix.members] = own * torch.exp(own_lse - total) + common * torch.exp(common_lse - total)
        if decodes.lane_of is not None:
            out = out.index_select(0, decodes.lane_of)  # the step's order
        return out.view(n, heads, dim)

    def _extend(self, q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, meta: CpuAttentionMeta):
        heads, dim = q.shape[1:]
        sequences = meta.extend.slots.shape[0]
        padded = q.new_zeros(sequences * meta.max_new, heads, dim, dtype=torch.float32)
        padded[meta.extend_rows] = q.float()
        query = padded.view(sequences, meta.max_new, heads, dim).transpose(1, 2)  # [seq, heads, max_new, dim]
        keys = self._gather(k_pool, meta.extend.rows, meta.extend.slots, torch.float32)  # [seq, kv_heads, total, dim]
        values = self._gather(v_pool, meta.extend.rows, meta.extend.slots, torch.float32)
        out = F.scaled_dot_product_attention(
            query, keys, values, attn_mask=meta.extend.mask, scale=self.scale, enable_gqa=True
        )
        return out.transpose(1, 2).reshape(sequences * meta.max_new, heads, dim)[meta.extend_rows]
