"""The CPU backend's decode KV cache: each decoding sequence's own K/V rows, gathered head-major out of the KV pool,
kept across steps, so that a decode step copies the rows added since the previous step instead of the whole context.

Layout: per layer one K and one V buffer ``[lanes, kv_heads, capacity, head_dim]`` in the pool's dtype. Every decode of
a step has a lane, and the step's ``n`` decodes hold lanes ``0 .. n-1``: ``buffer[:n]`` is one contiguous tensor the
attention products read as it is (a strided view sends bfloat16 matrix products down a several times slower path).
Positions past a lane's length hold zeros or rows of an earlier holder; attention masks them out.

Rules:
- A lane belongs to one holder of a req_to_token row, ``(row, epoch)``, and one start of its own rows (the length of its
  group's shared prefix, which is attended apart). It holds the K/V of ``table[row, start : start + length]`` and
  records those slot ids.
- Exactness. A step keeps a lane only for the same ``(row, epoch, start)``, and only while the slot ids it recorded are
  still the table's at those positions; it then copies the positions past its length, and otherwise rebuilds the lane
  from the pool. Why a recorded row still equals the pool's: K/V are written only into slots the ``SlotAllocator`` just
  handed out (a forward pass's ``out_cache_loc``, ``import_prefix``, host-tier loads), and a running sequence holds a
  reference on every slot of its row from admission to release, so none of them is freed, reused or rewritten while it
  runs. Its row grows only at the end (a decode's commit) or is rewritten by an extend's commit (deduplication against
  the prefix cache), which the slot-id check catches, and a row freed and taken by another sequence has a new epoch.
- Bounded: the lanes of sequences that are not decodes of the current step are dropped by that step; the buffers hold at
  most ``max_rows`` token rows (headroom and padding included), past which ``plan`` empties the cache and the step
  gathers from the pool; a step without decodes empties it too.
- Per layer: a plan (one per step) lists the rows each lane gains. A layer applies a plan only right after the previous
  one; a layer that missed one (a step prepared but not run) rebuilds every lane from the pool instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from plait.cache import KVPool

# Positions per lane are allocated in multiples of this many rows.
POSITION_QUANTUM = 16
# Lanes are allocated in multiples of this many; a few spare lanes let sequences join without a reallocation.
LANE_QUANTUM = 2


def _capacity(need: int, current: int, quantum: int) -> int:
    """``current`` while it holds ``need`` with at most half again unused; otherwise ``need`` plus an eighth, rounded up
    to ``quantum``. Growth is geometric, so appending costs amortised O(1) per row; a buffer far too large shrinks."""
    if need <= current <= need + need // 2 + quantum:
        return current
    grown = need + need // 8 + quantum
    return -(-grown // quantum) * quantum


@dataclass
class DecodeKVPlan:
    """One step's use of the cache. ``order[lane]`` is the decode (its index among the step's decodes) in each lane and
    ``lane_of`` the inverse (``in_order``: each decode is in the lane of its index); lane ``l`` holds ``lengths[l]``
    own rows at the slots ``slots[l]`` (entries past its length: any slot), of which it copies those from
    ``copy_from[l]`` on (0: the lane is rebuilt)."""

    step: int
    order: torch.Tensor
    lane_of: torch.Tensor
    in_order: bool
    slots: torch.Tensor  # [n, width] int64
    lengths: torch.Tensor  # [n] int64
    copy_from: torch.Tensor  # [n] int64
    lanes: int  # the buffers' shape this step: lanes x capacity positions
    capacity: int
    kv_heads: int
    _copies: dict[bool, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False)

    def copies(self, rebuild: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Head-major pool rows and the buffer rows (``[lanes * kv_heads * capacity]`` view) they go to: the rows each
        lane gains, or with ``rebuild`` every row of every lane."""
        if rebuild not in self._copies:
            start = torch.zeros_like(self.copy_from) if rebuild else self.copy_from
            positions = torch.arange(self.slots.shape[1], device=self.slots.device)
            taken = (positions[None, :] >= start[:, None]) & (positions[None, :] < self.lengths[:, None])
            lane, position = taken.nonzero(as_tuple=True)
            heads = torch.arange(self.kv_heads, device=self.slots.device)[:, None]
            source = (self.slots[lane, position][None, :] * self.kv_heads + heads).flatten()
            target = ((lane[None, :] * self.kv_heads + heads) * self.capacity + position[None, :]).flatten()
            self._copies[rebuild] = (source, target)
        return self._copies[rebuild]


class DecodeKVCache:
    """Per layer, the head-major K/V of each decoding sequence's own rows, kept from one step to the next."""

    def __init__(self, kv_pool: KVPool, max_rows: int) -> None:
        self.kv_pool = kv_pool
        self.max_rows = max_rows
        self._step = 0
        self.clear()

    def clear(self) -> None:
        """Drop every lane and free the buffers."""
        layers = self.kv_pool.num_layers
        self._k: list[torch.Tensor | None] = [None] * layers
        self._v: list[torch.Tensor | None] = [None] * layers
        self._applied = [-1] * layers  # the last plan each layer's buffers were brought up to
        self._lane: dict[tuple[int, int, int], int] = {}  # (row, epoch, start) -> lane
        self._lengths: list[int] = []  # rows held per lane
        self._slot_ids: torch.Tensor | None = None  # [lanes, capacity]: the slot of each row held
        self._lanes = self._capacity = 0

    @property
    def num_lanes(self) -> int:
        """Lanes held for the current step's decodes."""
        return len(self._lengths)

    @property
    def holders(self) -> list[tuple[int, int, int]]:
        """The ``(row, epoch, start)`` each lane is held for."""
        return list(self._lane)

    @property
    def nbytes(self) -> int:
        """Bytes the K/V buffers take now."""
        return sum(t.nbytes for t in self._k + self._v if t is not None)

    def plan(self, keys: list[tuple[int, int, int]], slots: torch.Tensor, lengths: list[int]) -> DecodeKVPlan | None:
        """Lanes for this step's decodes: ``keys[i]`` is decode ``i``'s ``(row, epoch, start)``, ``slots[i]`` its own
        slots (``[n, max(lengths)]``) and ``lengths[i]`` how many it has. None, with the cache emptied, when the
        buffers would exceed ``max_rows``."""
        n = len(keys)
        lanes = _capacity(n, self._lanes, LANE_QUANTUM)
        capacity = _capacity(max(lengths), self._capacity, POSITION_QUANTUM)
        if lanes * capacity > self.max_rows:
            self.clear()
            return None
        lane_of, copy_from = self._kept(keys, slots, lengths)
        free = iter(sorted(set(range(n)).difference(lane_of)))
        lane_of = [lane if lane >= 0 else next(free) for lane in lane_of]
        order = [0] * n
        for i, lane in enumerate(lane_of):
            order[lane] = i
        device = slots.device
        order_t = torch.tensor(order, dtype=torch.int64, device=device)
        own = slots.index_select(0, order_t)
        if self._slot_ids is None or self._slot_ids.shape != (lanes, capacity):
            self._slot_ids = torch.zeros(lanes, capacity, dtype=torch.int64, device=device)
        self._slot_ids[:n, : own.shape[1]] = own
        self._lengths = [lengths[i] for i in order]
        self._lane = {key: lane for key, lane in zip(keys, lane_of, strict=True)}
        self._lanes, self._capacity = lanes, capacity
        self._step += 1
        return DecodeKVPlan(
            step=self._step,
            order=order_t,
            lane_of=torch.tensor(lane_of, dtype=torch.int64, device=device),
            in_order=order == list(range(n)),
            slots=own,
            lengths=torch.tensor(self._lengths, dtype=torch.int64, device=device),
            copy_from=torch.tensor([copy_from[i] for i in order], dtype=torch.int64, device=device),
            lanes=lanes,
            capacity=capacity,
            kv_heads=self.kv_pool.num_kv_heads,
        )

    def _kept(
        self, keys: list[tuple[int, int, int]], slots: torch.Tensor, lengths: list[int]
    ) -> tuple[list[int], list[int]]:
        """For each decode, the lane it keeps (-1: none) and the rows kept in it: a lane of the same key among the first
        ``n``, holding no more rows than the decode has, at the slots the table holds at those positions now."""
        n = len(keys)
        lane_of, copy_from = [-1] * n, [0] * n
        candidates = [
            (i, lane)
            for i, key in enumerate(keys)
            if (lane := self._lane.get(key, n)) < n and self._lengths[lane] <= lengths[i]
        ]
        if not candidates or self._slot_ids is None:
            return lane_of, copy_from
        device = slots.device
        decodes = torch.tensor([i for i, _ in candidates], dtype=torch.int64, device=device)
        lanes = torch.tensor([lane for _, lane in candidates], dtype=torch.int64, device=device)
        held = torch.tensor([self._lengths[lane] for _, lane in candidates], dtype=torch.int64, device=device)
        width = int(held.max())
        same = self._slot_ids[lanes, :width] == slots[decodes, :width]
        same |= torch.arange(width, device=device)[None, :] >= held[:, None]
        for (i, lane), valid in zip(candidates, same.all(dim=1).tolist(), strict=True):
            if valid:
                lane_of[i], copy_from[i] = lane, self._lengths[lane]
        return lane_of, copy_from

    def layer(self, layer: int, plan: DecodeKVPlan) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``layer``'s K and V of the plan's lanes, ``[n, kv_heads, capacity, head_dim]``, brought up to ``plan``
        (call it once the step's new K/V are in the pool)."""
        k, v = self._k[layer], self._v[layer]
        if self._applied[layer] != plan.step:
            pool_k, pool_v = self.kv_pool.k[layer], self.kv_pool.v[layer]
            kv_heads, dim = pool_k.shape[1:]
            incremental = k is not None and v is not None and self._applied[layer] == plan.step - 1
            shape = (plan.lanes, kv_heads, plan.capacity, dim)
            if k is None or v is None or k.shape != shape:
                k, v = (_resized(old, shape, pool_k, incremental) for old in (k, v))
                self._k[layer], self._v[layer] = k, v
            source, target = plan.copies(rebuild=not incremental)
            k.view(-1, dim).index_copy_(0, target, pool_k.view(-1, dim).index_select(0, source))
            v.view(-1, dim).index_copy_(0, target, pool_v.view(-1, dim).index_select(0, source))
            self._applied[layer] = plan.step
        assert k is not None and v is not None
        n = plan.order.numel()
        return k[:n], v[:n]


def _resized(old: torch.Tensor | None, shape: tuple[int, ...], pool: torch.Tensor, keep: bool) -> torch.Tensor:
    """A zeroed buffer of ``shape`` (``pool``'s dtype and device) holding, with ``keep``, what ``old`` holds in the
    lanes and positions both have. Zeros, not uninitialised memory: attention multiplies masked rows by zero, and
    zero times a NaN is not zero."""
    new = torch.zeros(shape, dtype=pool.dtype, device=pool.device)
    if keep and old is not None:
        lanes, positions = min(old.shape[0], shape[0]), min(old.shape[2], shape[2])
        new[:lanes, :, :positions] = old[:lanes, :, :positions]
    return new
