"""Continuous batching: which sequences run in the next step, and how many of their tokens.

Each step: every running decode gets one token; prefill chunks (continuing partial prefills first, then waiting
sequences by ``(priority, arrival)``) fill the rest of the token budget, each at most ``chunk_size`` tokens, while the
admission rules let them (``admission.py``: memory, rows, prefix holds, readiness). Memory: a chunk is admitted only
if its slots fit after reserving one slot per running decode. When decodes cannot get their slot, the lowest-priority
running sequence is retracted: its KV is released and it waits again with its prompt plus what it generated so far,
so it resumes exactly where it stopped.

Ownership: the scheduler owns ``waiting`` and ``running``, every sequence's slots and req_to_token row. A sequence
is in exactly one of ``waiting`` / ``running`` until it finishes; ``start`` moves it from one to the other (a
fan-out's other samples join ``running`` through ``spawn_sibling``), and ``release`` is the only way out.
"""

from __future__ import annotations

import bisect
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from plait.cache import PrefixCache, PrefixMatch, ReqToTokenPool, SlotAllocator
from plait.engine.admission import Admission, Stop
from plait.engine.engine_config import EngineConfig
from plait.engine.engine_policy import EnginePolicy
from plait.engine.reservations import Reservations
from plait.engine.sequence import SeqStatus, Sequence


@dataclass
class ScheduledSeq:
    seq: Sequence
    new_len: int  # tokens computed this step: token_ids[num_computed : num_computed + new_len]
    slots: torch.Tensor  # their freshly allocated KV slots
    samples: bool = field(init=False)  # the chunk reaches the last known token: its last row yields the next one

    def __post_init__(self) -> None:
        # Fixed at scheduling time: commit() advances num_computed before sampling reads this.
        self.samples = self.seq.num_computed + self.new_len == len(self.seq.token_ids)


@dataclass
class ScheduledBatch:
    decodes: list[ScheduledSeq] = field(default_factory=list)
    extends: list[ScheduledSeq] = field(default_factory=list)
    retracted: list[Sequence] = field(default_factory=list)

    @property
    def seqs(self) -> list[ScheduledSeq]:
        return self.decodes + self.extends

    @property
    def num_tokens(self) -> int:
        return sum(s.new_len for s in self.seqs)

    def __bool__(self) -> bool:
        return bool(self.decodes or self.extends)


class Scheduler:
    def __init__(
        self,
        config: EngineConfig,
        policy: EnginePolicy,
        allocator: SlotAllocator,
        req_to_token: ReqToTokenPool,
        prefix_cache: PrefixCache,
        ready: Callable[[Sequence], bool] | None = None,
    ) -> None:
        """``ready``: False for a waiting sequence that cannot start yet (its grammar is still compiling); batch
        formation skips it and lets later sequences go ahead, as for a prefix still loading from host memory."""
        self.config = config  # static limits: max_running, max_batch_tokens, chunk_size, decode reserve
        self.policy = policy  # replaced between steps by EngineCore.set_policy
        self.ready = ready
        self.allocator = allocator
        self.req_to_token = req_to_token
        self.prefix_cache = prefix_cache
        self.waiting: list[Sequence] = []  # sorted by sort_key
        self.running: list[Sequence] = []
        self.num_retractions = 0
        self.num_promotions = 0
        self.longest_queue_wait_s = 0.0  # the longest wait before a first admission seen so far
        # Why waiting sequences did not start: per planning pass with a non-empty queue, the reason admission stopped
        # (an ``admission.Stop``: "pinned" when counting pinned slots as free would have let the sequence in), and
        # "held" per pass that held some prompt back for a prefix in flight or its readiness. A diagnostic for "why do
        # my requests wait?".
        self.admission_stops: Counter[str] = Counter()
        self.reservations = Reservations()  # memory held for the next calls of programs waiting on tools
        self._next_starvation_check = 0.0

    # ---- queues ----------------------------------------------------------------------------------------------------

    def add(self, seq: Sequence) -> None:
        seq.status = SeqStatus.WAITING
        bisect.insort(self.waiting, seq, key=lambda s: s.sort_key)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def free_slots(self, allow_pinned: bool = False) -> int:
        """Slots free now or after eviction; pinned prefixes count only with ``allow_pinned`` (running requests)."""
        return self.allocator.num_free + self.prefix_cache.evictable_slots(allow_pinned)

    # ---- one step --------------------------------------------------------------------------------------------------

    def schedule(self) -> ScheduledBatch:
        """The next step's work. When nobody can move (partial prefills filled the pool), the least urgent running
        sequence is retracted and the step planned again without it, until something moves or nothing runs."""
        retracted: list[Sequence] = []
        while True:
            batch = self._schedule_once(retracted)
            retracted += batch.retracted  # victims of the decode-slot check count too
            batch.retracted = retracted
            # (Not while a sequence is about to finish: its KV comes back as soon as its last token is read.)
            if batch or not self.running or any(s.will_finish for s in self.running):
                return batch
            retracted.append(self._retract_lowest())

    def _schedule_once(self, retracted: list[Sequence]) -> ScheduledBatch:
        """One planning pass: every running decode gets a slot, then prefill chunks are admitted in priority order
        (``Admission``) until a rule stops them. ``retracted`` sequences were retracted this step and are not
        re-admitted in it."""
        self.prefix_cache.poll()
        self._promote_starving()
        batch = ScheduledBatch()
        batch.decodes = self._schedule_decodes(batch.retracted)
        budget = self.config.max_batch_tokens - len(batch.decodes)
        admission = self._admission(budget, excluded=retracted + batch.retracted)
        for seq in admission.candidates():
            chunk = admission.admit(seq)
            if isinstance(chunk, Stop):
                break  # strict priority order: later sequences wait behind this one
            if chunk is not None:
                batch.extends.append(ScheduledSeq(seq, len(chunk), chunk))
        if self.waiting:
            self.admission_stops.update(admission.stops())
        return batch

    def _schedule_decodes(self, retracted: list[Sequence]) -> list[ScheduledSeq]:
        """A slot for every running decode, taken in one allocator call; while they do not all fit, the
        lowest-priority running sequence is retracted (into ``retracted``). Pins yield before a running request is
        retracted: memory held for the future never stalls the present."""
        while True:
            decodes = [s for s in self.running if s.is_decode and not s.will_finish]
            if self._ensure_free(len(decodes), allow_pinned=True):
                break
            retracted.append(self._retract_lowest())
        if not decodes:
            return []
        slots = self._alloc(len(decodes))
        return [ScheduledSeq(seq, 1, slots[i : i + 1]) for i, seq in enumerate(decodes)]

    def _promote_starving(self) -> None:
        """Anti-starvation: sequences waiting longer than ``max_queue_wait_s`` go ahead of every priority. The queue
        is scanned a few times per second at most."""
        limit = self.policy.max_queue_wait_s
        if limit <= 0 or not self.waiting:
            return
        now = time.monotonic()
        if now < self._next_starvation_check:
            return
        self._next_starvation_check = now + min(0.05, limit / 4)
        starving = [s for s in self.waiting if not s.promoted and now - s.state.submitted_at > limit]
        if starving:
            for seq in starving:
                seq.promoted = True
            self.num_promotions += len(starving)
            self.waiting.sort(key=lambda s: s.sort_key)

    def _admission(self, token_budget: int, excluded: list[Sequence] | None = None) -> Admission:
        """The admission of one planning pass, on the scheduler's memory, rows and queues and its current policy."""
        return Admission(
            token_budget=token_budget,
            excluded=excluded or [],
            config=self.config,
            policy=self.policy,
            allocator=self.allocator,
            req_to_token=self.req_to_token,
            prefix_cache=self.prefix_cache,
            reservations=self.reservations,
            waiting=self.waiting,
            running=self.running,
            can_start=self.ready,
            start=self.start,
        )

    def _admission_order(self, budget: int) -> list[Sequence]:
        """The waiting queue in the order admission would try it now (``Admission.waiting_order``)."""
        return self._admission(budget).waiting_order()

    def start(self, seq: Sequence, match: PrefixMatch, rows: int) -> None:
        """Move waiting ``seq`` to running on the cached prefix ``match`` locked for it, with ``rows`` req_to_token
        rows: its own and, for a group about to fan out, its siblings' (taken now, so later admissions cannot leave
        the fan-out without any). ``Admission`` decides when."""
        seq.cache_handle = match.handle
        seq.req_row = self.req_to_token.alloc_row()
        seq.sibling_rows = [self.req_to_token.alloc_row() for _ in range(rows - 1)]
        seq.slots = match.slots
        seq.num_computed = match.length
        if match.length:
            self.req_to_token.write(seq.req_row, 0, match.slots)
        self.waiting.remove(seq)
        seq.status = SeqStatus.RUNNING
        self.running.append(seq)
        self.reservations.release(seq.program_id, seq.call_id)  # its memory is in use now, no longer held for it
        if seq.admitted_at is None:
            seq.admitted_at = time.monotonic()
            seq.cached_tokens = match.length
            self.longest_queue_wait_s = max(self.longest_queue_wait_s, seq.admitted_at - seq.state.submitted_at)

    def _ensure_free(self, n: int, allow_pinned: bool = False, priority: tuple[float, ...] | None = None) -> bool:
        """Evict until ``n`` slots are free, if possible: pinned KV only with ``allow_pinned`` or where its pinners
        yield to ``priority`` (an admitted prompt's)."""
        if self.allocator.num_free < n:
            self.prefix_cache.evict(n - self.allocator.num_free, allow_pinned, priority)
        return self.allocator.num_free >= n

    def _alloc(self, n: int, allow_pinned: bool = False, priority: tuple[float, ...] | None = None) -> torch.Tensor:
        self._ensure_free(n, allow_pinned, priority)
        return self.allocator.alloc(n)

    def _retract_lowest(self) -> Sequence:
        victim = max(self.running, key=lambda s: s.sort_key)
        self.release(victim)
        victim.num_retractions += 1
        self.num_retractions += 1
        self.add(victim)
        return victim

    # ---- after the forward -----------------------------------------------------------------------------------------

    def commit(self, batch: ScheduledBatch) -> None:
        """Record that the scheduled tokens' KV is now in the pool (the runner wrote their req_to_token entries),
        and offer each prefill chunk to the prefix cache so later requests can share it at once."""
        if batch.decodes:  # one slot each, read back as ints in one call
            for item, slot in zip(batch.decodes, torch.cat([d.slots for d in batch.decodes]).tolist(), strict=True):
                item.seq.append_slot(slot)
                item.seq.num_computed += 1
        for item in batch.extends:
            seq = item.seq
            seq.slots = torch.cat([seq.slots, item.slots]) if seq.slots.numel() else item.slots
            seq.num_computed += item.new_len
        for item in batch.extends:
            seq = item.seq
            slots, seq.cache_handle = self.prefix_cache.cache_unfinished(
                seq.token_ids[: seq.num_computed], seq.slots, seq.cache_handle, seq.program_id
            )
            if slots is not seq.slots:
                self.req_to_token.write(seq.req_row, 0, slots)  # duplicates were dropped for the cached copy
                seq.slots = slots

    def spawn_sibling(self, parent: Sequence, child: Sequence) -> None:
        """Start ``child`` running on ``parent``'s prompt KV (shared slots, one more holder each)."""
        child.req_row = parent.sibling_rows.pop()
        shared = parent.slots[: parent.num_prompt]
        self.allocator.retain(shared)
        child.cache_handle = parent.cache_handle
        self.prefix_cache.lock(parent.cache_handle)
        child.slots = shared.clone()
        child.num_computed = parent.num_prompt
        self.req_to_token.write(child.req_row, 0, shared)
        child.status = SeqStatus.RUNNING
        self.running.append(child)

    def release(self, seq: Sequence) -> None:
        """Take ``seq`` out of the queues and hand its KV to the prefix cache (which may keep or free it)."""
        if seq.status is SeqStatus.WAITING:
            self.waiting.remove(seq)
        elif seq.status is SeqStatus.RUNNING:
            self.running.remove(seq)
        if seq.slots.numel() or seq.cache_handle is not None:
            self.prefix_cache.cache_finished(
                seq.token_ids[: seq.num_computed], seq.slots, seq.cache_handle, seq.program_id
            )
        seq.cache_handle = None
        if seq.req_row is not None:
            self.req_to_token.free_row(seq.req_row)
        for row in seq.sibling_rows:
            self.req_to_token.free_row(row)
        seq.sibling_rows = []
        seq.slots = torch.empty(0, dtype=torch.int64)
        seq.req_row = None
        seq.num_computed = 0
