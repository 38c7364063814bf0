"""Paged attention through the Triton kernels of ``plait.engine.kernels`` (the GPU fast path).

``prepare`` turns the step's layouts into device tensors once (one host-to-device copy) and picks the decode
split count; every layer's ``forward`` then writes its new K/V into the pool (unless the model stored them with the
rotation) and launches at most three kernels: decode stage 1 and 2 for the decode tokens (first in the batch) and one
extend kernel for the prefill chunks, which reads the chunks' own K/V from the step's projections and only the cached
prefixes through the page table. On a machine without CUDA the kernels run through Triton's interpreter
(``TRITON_INTERPRET=1``; slow, for tests).

Decode CUDA graphs (cuda_graphs.py): ``graph_metadata(bs)`` gives metadata whose tensors are views of static
buffers and whose split count depends only on ``bs`` and the table's width, and ``fill_graph_metadata`` writes a
step's rows and lengths into those buffers before a replay (padding rows: row 0, length 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from plait.cache import KVPool, ReqToTokenPool
from plait.engine.forward_batch import ForwardBatch, SequenceLayout
from plait.engine.host_copy import pinned_to_device, to_device
from plait.engine.kernels import decode_attention as decode_kernels
from plait.engine.kernels import extend_attention as extend_kernels
from plait.engine.kernels.attention_block import interpreter_ready

_ALIGN = 4  # int32s in 16 bytes


def _aligned(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


@dataclass
class TritonAttentionMeta:
    """Per-step tensors shared by every layer (all int32, on the model's device)."""

    num_decode: int
    decode_rows: torch.Tensor  # [num_decode] req_to_token row of each decode
    decode_lens: torch.Tensor  # [num_decode] context length including the new token
    num_kv_splits: int
    num_extend: int
    extend_rows: torch.Tensor  # [num_extend]
    extend_prefix_lens: torch.Tensor  # [num_extend] tokens already in the pool
    extend_new_lens: torch.Tensor  # [num_extend] tokens computed in this step
    extend_starts: torch.Tensor  # [num_extend] row of the first new token in the batch
    max_extend_len: int
    decode_scratch: tuple[torch.Tensor, torch.Tensor] | None = None  # stage-1 buffers, made by the first layer


class TritonAttentionBackend:
    name = "triton"

    def __init__(self, kv_pool: KVPool, req_to_token: ReqToTokenPool, scale: float) -> None:
        if kv_pool.device.type != "cuda" and not interpreter_ready(decode_kernels._decode_split_kernel):
            raise RuntimeError(
                "the triton attention backend needs a CUDA device; on CPU it runs only through Triton's interpreter, "
                "which needs TRITON_INTERPRET=1 in the environment before triton is first imported"
            )
        self.kv_pool = kv_pool
        self.req_to_token = req_to_token
        self.scale = scale
        self._graph_info: torch.Tensor | None = None  # [2, max_bs] int32: rows, lengths (decode CUDA graphs)

    def prepare(self, batch: ForwardBatch) -> TritonAttentionMeta:
        decodes = batch.layouts[: batch.num_decode]
        extends = batch.layouts[batch.num_decode :]
        starts, token = [], batch.num_decode
        for layout in extends:
            starts.append(token)
            token += layout.new_len
        nd, ne = len(decodes), len(extends)
        # One host-to-device copy of every array, each padded to a multiple of _ALIGN int32s: Triton specialises a
        # kernel on whether each pointer is 16-byte aligned, so unpadded offsets that vary with the batch would
        # compile new kernel variants in the middle of serving (a stall of up to a second each).
        nd_pad, ne_pad = _aligned(nd) - nd, _aligned(ne) - ne
        values = [
            *(d.req_row for d in decodes), *[0] * nd_pad,
            *(d.prefix_len + 1 for d in decodes), *[1] * nd_pad,
            *(e.req_row for e in extends), *[0] * ne_pad,
            *(e.prefix_len for e in extends), *[0] * ne_pad,
            *(e.new_len for e in extends), *[0] * ne_pad,
            *starts, *[0] * ne_pad,
        ]  # fmt: skip
        device = self.req_to_token.table.device
        info = to_device(values, torch.int32, device)
        decode_info = info[: 2 * _aligned(nd)].view(2, _aligned(nd))
        decode_rows, decode_lens = decode_info[0, :nd], decode_info[1, :nd]
        extend_info = info[2 * _aligned(nd) :].view(4, _aligned(ne))[:, :ne]
        rows, prefix, new, starts_t = extend_info.unbind(0)
        max_len = max((d.prefix_len + 1 for d in decodes), default=0)
        splits = decode_kernels.choose_num_kv_splits(nd, self.kv_pool.num_kv_heads, max_len, device) if nd else 1
        return TritonAttentionMeta(
            num_decode=nd,
            decode_rows=decode_rows,
            decode_lens=decode_lens,
            num_kv_splits=splits,
            num_extend=ne,
            extend_rows=rows,
            extend_prefix_lens=prefix,
            extend_new_lens=new,
            extend_starts=starts_t,
            max_extend_len=max((e.new_len for e in extends), default=0),
        )

    def precompile(self, num_heads: int, dtype: torch.dtype) -> int:
        """Compile every kernel variant serving can reach, on dummy inputs, before serving starts: decode with one
        split (direct) and with each power-of-two split bucket, and extend. Otherwise a variant met first in the
        middle of serving compiles there and stalls every running stream. Returns the launches made."""
        device = self.req_to_token.table.device
        head_dim = self.kv_pool.head_dim
        k_pool, v_pool, table = self.kv_pool.k[0], self.kv_pool.v[0], self.req_to_token.table
        q = torch.zeros(1, num_heads, head_dim, dtype=dtype, device=device)
        out = torch.empty_like(q)
        row = torch.zeros(1, dtype=torch.int32, device=device)  # row 0 / slot 0: the padding row, safe to read
        one = torch.ones(1, dtype=torch.int32, device=device)
        launches = 0
        splits = 1
        while splits <= decode_kernels.MAX_KV_SPLITS:
            decode_kernels.decode_attention(q, k_pool, v_pool, table, row, one, out, self.scale, splits)
            launches += 1
            splits *= 2
        kv = torch.zeros(1, self.kv_pool.num_kv_heads, head_dim, dtype=dtype, device=device)
        extend_kernels.extend_attention(q, kv, kv, k_pool, v_pool, table, row, row, one, row, out, self.scale, 1)
        return launches + 1

    # ---- decode CUDA graphs ------------------------------------------------------------------------------------

    def init_graph_buffers(self, max_bs: int) -> None:
        self._graph_info = torch.zeros(2, max_bs, dtype=torch.int32, device=self.req_to_token.table.device)
        self._graph_info[1].fill_(1)

    def graph_metadata(self, bs: int) -> TritonAttentionMeta:
        """Decode metadata for a graph of ``bs`` rows, reading the static buffers; the split count is chosen for
        the longest context the table holds, so it is fixed for the graph's life."""
        assert self._graph_info is not None, "init_graph_buffers first"
        device = self._graph_info.device
        max_len = self.req_to_token.max_context
        empty = self._graph_info[0, :0]
        return TritonAttentionMeta(
            num_decode=bs,
            decode_rows=self._graph_info[0, :bs],
            decode_lens=self._graph_info[1, :bs],
            num_kv_splits=decode_kernels.choose_num_kv_splits(bs, self.kv_pool.num_kv_heads, max_len, device),
            num_extend=0,
            extend_rows=empty,
            extend_prefix_lens=empty,
            extend_new_lens=empty,
            extend_starts=empty,
            max_extend_len=0,
        )

    def fill_graph_metadata(self, layouts: list[SequenceLayout], bs: int) -> None:
        """Write the rows and context lengths of ``layouts`` (decodes) into the graph buffers, padded to ``bs``."""
        assert self._graph_info is not None, "init_graph_buffers first"
        pad = bs - len(layouts)
        host = torch.tensor(
            [[*(d.req_row for d in layouts), *[0] * pad], [*(d.prefix_len + 1 for d in layouts), *[1] * pad]],
            dtype=torch.int32,
        )
        self._graph_info[:, :bs].copy_(pinned_to_device(host, self._graph_info.device))

    # ---- the step ------------------------------------------------------------------------------------------------

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        layer: int,
        batch: ForwardBatch,
        kv_stored: bool = False,
    ) -> torch.Tensor:
        meta: TritonAttentionMeta = batch.attn_meta
        if not kv_stored:
            self.kv_pool.write(layer, batch.out_cache_loc, k, v)
        k_pool, v_pool = self.kv_pool.k[layer], self.kv_pool.v[layer]
        table = self.req_to_token.table
        out = torch.empty_like(q)
        n = meta.num_decode
        if n:
            if meta.num_kv_splits > 1 and meta.decode_scratch is None:
                meta.decode_scratch = decode_kernels.alloc_decode_scratch(
                    n, q.shape[1], meta.num_kv_splits, q.shape[2], q.device
                )
            decode_kernels.decode_attention(
                q[:n],
                k_pool,
                v_pool,
                table,
                meta.decode_rows,
                meta.decode_lens,
                out[:n],
                self.scale,
                meta.num_kv_splits,
                meta.decode_scratch,
            )
        if meta.num_extend:
            extend_kernels.extend_attention(
                q,
                k,
                v,
                k_pool,
                v_pool,
                table,
                meta.extend_rows,
                meta.extend_prefix_lens,
                meta.extend_new_lens,
                meta.extend_starts,
                out,
                self.scale,
                meta.max_extend_len,
            )
        return out
