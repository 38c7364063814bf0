"""Continuous batching: which sequences run in the next step, and how many of their tokens.

Each step: every running decode gets one token; prefill chunks (continuing partial prefills first, then waiting
sequences by ``(priority, arrival)``) fill the rest of the token budget, each at most ``chunk_size`` tokens.
Memory: a chunk is admitted only if its slots fit after reserving one slot per running decode. When decodes cannot
get their slot, the lowest-priority running sequence is retracted: its KV is released and it waits again with
its prompt plus what it generated so far, so it resumes exactly where it stopped.

Ownership: the scheduler owns ``waiting`` and ``running``, every sequence's slots and req_to_token row. A sequence
is in exactly one of ``waiting`` / ``running`` until it finishes; ``release`` is the only way out.
"""

from __future__ import annotations

import bisect
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from plait.cache import PrefixCache, ReqToTokenPool, ResidencyMark, SlotAllocator
from plait.engine.cache_affinity import affinity_order
from plait.engine.engine_config import EngineConfig
from plait.engine.engine_policy import EnginePolicy
from plait.engine.prefix_hold import InflightPrefixes
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
        # ("pinned" when counting pinned slots as free would have let the sequence in), and "held" per pass that held
        # some prompt back for a prefix in flight. A diagnostic for "why do my requests wait?".
        self.admission_stops: Counter[str] = Counter()
        self._refusal = ""  # why the last _admit returned False
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

    def _admission_room(self, seq: Sequence | None = None, reserved: bool = True) -> int:
        """Slots a new prompt (``seq``) may take: pinned ones too unless pins hold admissions, else those whose every
        pinner ``seq`` outranks (KV kept for a less important program's next call must not hold back a more
        important one). ``reserved``: less what is reserved for calls ``seq`` would go after (an admission; the
        chunks of a prompt already admitted are not held back by reservations)."""
        if seq is None:
            return self.free_slots(allow_pinned=not self.policy.pins_hold_admissions)
        if self.policy.pins_hold_admissions:
            room = self.allocator.num_free + self.prefix_cache.evictable_slots(priority=seq.sort_key[0])
        else:
            room = self.free_slots(allow_pinned=True)
        return room - self._reserved_against(seq) if reserved else room

    def _reserved_against(self, seq: Sequence | None) -> int:
        """Slots reserved for the next calls of programs waiting on tools that ``seq`` would go after. None while
        nothing runs: an idle engine does not wait for calls that are not there yet."""
        if seq is None or not self.running or not len(self.reservations):
            return 0
        return self.reservations.held_against(seq.sort_key[0], seq.program_id)

    # ---- one step --------------------------------------------------------------------------------------------------

    def _promote_starving(self, now: float) -> None:
        limit = self.policy.max_queue_wait_s
        starving = [s for s in self.waiting if not s.promoted and now - s.state.submitted_at > limit]
        if starving:
            for seq in starving:
                seq.promoted = True
            self.num_promotions += len(starving)
            self.waiting.sort(key=lambda s: s.sort_key)

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
        """One planning pass; ``retracted`` sequences were retracted this step and are not re-admitted in it (they
        would take back the memory their retraction freed and stall again)."""
        self.prefix_cache.poll()
        if self.policy.max_queue_wait_s > 0 and self.waiting:
            now = time.monotonic()
            if now >= self._next_starvation_check:  # a scan of the queue, a few times per second at most
                self._next_starvation_check = now + min(0.05, self.policy.max_queue_wait_s / 4)
                self._promote_starving(now)
        batch = ScheduledBatch()
        while True:
            decodes = [s for s in self.running if s.is_decode and not s.will_finish]
            # Pins yield before a running request is retracted: memory held for the future never stalls the present.
            if self._ensure_free(len(decodes), allow_pinned=True):
                break
            batch.retracted.append(self._retract_lowest())
        budget = self.config.max_batch_tokens
        if decodes:  # one slot each, taken in one allocator call
            slots = self._alloc(len(decodes))
            for i, seq in enumerate(decodes):
                batch.decodes.append(ScheduledSeq(seq, 1, slots[i : i + 1]))
            budget -= len(decodes)
        # Prefill budget goes by priority too: a high-priority prompt's remaining chunks before a low one's.
        partial = sorted((s for s in self.running if not s.is_decode and not s.will_finish), key=lambda s: s.sort_key)
        # With every row taken no waiting sequence can start: skip ordering the queue (affinity looks up prefixes).
        rows_free = len(self.running) < self.config.max_running and self.req_to_token.num_free_rows > 0
        candidates = partial + (self._admission_order(budget) if rows_free and self.waiting else [])
        holds_back = self.prefix_cache.shares_prefixes and self.policy.prefix_first
        inflight = None  # (built only when something may be admitted: a pass over the running sequences)
        if holds_back and candidates:
            inflight = InflightPrefixes(self.running, self.policy.prefix_hold_min_tokens)
        # Room the running sequences will still take: tokens to generate, and the rest of partial prefills' prompts
        # (admitting beside a long prefill that later fills the pool would retract a decode). Only prefills use it.
        reserve = 0
        if candidates:
            reserve = sum(self._future_decode(s) + (0 if s.is_decode else s.num_uncomputed) for s in self.running)
        excluded = retracted + batch.retracted
        stop = "" if rows_free else "rows"  # why the first waiting sequence that did not start stayed out
        any_held = False
        for seq in candidates:
            newly_admitted = seq.status is SeqStatus.WAITING
            if newly_admitted and any(seq is r for r in excluded):
                stop = "retracted"
                break  # a victim of this step: it and everything behind it in priority order wait for the next one
            # Pins hold memory for the future: they keep new prompts out (admission counts unpinned room only, and
            # what pins ``seq`` outranks hold) but yield to a running prefill that has no other room left, one chunk
            # at a time.
            unpinned = self._admission_room(seq, reserved=newly_admitted)
            takes_pinned = (unpinned <= 0 and not newly_admitted) or not self.policy.pins_hold_admissions
            # A new prompt's room leaves other programs' reservations out whether or not pins hold admissions.
            room = self.free_slots(allow_pinned=True) if takes_pinned and not newly_admitted else unpinned
            if budget <= 0 or room <= 0:
                wanted = min(seq.num_uncomputed, self.config.chunk_size)  # what pinned KV held out: its next chunk
                stop = "token_budget" if budget <= 0 else self._memory_stop(0, wanted=wanted, seq=seq)
                break
            if newly_admitted:
                own = self._future_decode(seq)
                first_chunk = min(seq.num_uncomputed, self.config.chunk_size)
                if self.config.reserve_decode and self.running and unpinned - reserve < first_chunk + own:
                    stop = self._memory_stop(reserve + first_chunk + own - 1, "decode_reserve", seq=seq)
                    break  # admitting it would leave the running sequences no room to decode (a retraction later)
                held = (inflight is not None and inflight.computes_prefix_of(seq)) or (
                    self.ready is not None and not self.ready(seq)
                )
                any_held = any_held or held
                # The whole uncached prompt must fit beside what running sequences still take. With nothing running
                # only its first chunk must fit; its later chunks may take pinned memory (a pin does not hold an
                # otherwise idle engine back for a whole prompt).
                keep = reserve + own if self.config.reserve_decode and self.running else None
                admitted = None if held else self._admit(seq, keep)
                if admitted is None:
                    continue  # its prefix is loading or being computed, or its grammar compiling: others go first
                if not admitted:
                    stop = self._refusal
                    break  # strict priority order: later sequences wait behind this one
                reserve += own
                if inflight is not None:
                    inflight.add(seq)  # admitted this step: it computes its prefix now
                # The prefix it matched is locked now, no longer free. Its chunks are those of a running request: the
                # admission above respected the reservations (with anything running, for its whole prompt).
                room = self._admission_room(seq, reserved=False)
            chunk = min(seq.num_uncomputed, budget, self.config.chunk_size, room)
            priority = seq.sort_key[0]
            self._ensure_free(chunk, allow_pinned=takes_pinned, priority=priority)
            chunk = min(chunk, self.allocator.num_free)  # what eviction could really free
            if chunk <= 0:
                stop = "memory"
                break
            # The reserve counts each prefill's remaining prompt: this chunk is no longer to come, the rest still is.
            reserve += seq.num_uncomputed - chunk if newly_admitted else -chunk
            batch.extends.append(ScheduledSeq(seq, chunk, self._alloc(chunk, takes_pinned, priority)))
            budget -= chunk
        if self.waiting:
            if stop:
                self.admission_stops[stop] += 1
            if any_held:
                self.admission_stops["held"] += 1
        return batch

    def _memory_stop(self, needed: int, reason: str = "memory", wanted: int = 0, seq: Sequence | None = None) -> str:
        """``reason``; "reserved" when the prompt ``seq`` would have fitted without other programs' reservations
        (``needed`` + 1 slots, or ``wanted`` if more); "pinned" when it would have with pinned prefixes counted. The
        cache then learns which pinned KV kept the prompt out (what those pins saved)."""
        room = self._admission_room(seq)
        reserved = self._reserved_against(seq)
        want = max(needed + 1, wanted)
        if reserved and room + reserved >= want:
            return "reserved"
        if self.free_slots(allow_pinned=True) - reserved <= needed:
            return reason
        self.prefix_cache.note_pins_held(want - room)  # what pins had to give: the reservations stay
        return "pinned"

    def _admission_order(self, budget: int) -> list[Sequence]:
        """The waiting queue in the order admission tries it: priority order, except that with cache affinity the
        sequences near the head whose priorities share a window go longest-resident-prefix first. Prompts that
        reuse KV already on the device take less new memory, so more run at once where memory is what binds (six
        agents' prompts competing for a pool that holds four, say), and fewer prefixes are evicted to be computed
        again. Promoted (starving) sequences keep their place ahead of everyone."""
        window = self.policy.affinity_window_s
        waiting = self.waiting
        if window <= 0 or len(waiting) < 2 or budget <= 0 or not self.prefix_cache.shares_prefixes:
            return list(waiting)
        if self._admission_room() <= 0:
            return list(waiting)  # no room outside pins: at most a prompt outranking them starts; skip the lookups
        return affinity_order(waiting, window, self._resident_length)

    def _resident_length(self, seq: Sequence) -> int:
        """Leading tokens of ``seq`` on the device now; the walk resumes where the last one stopped (its mark)."""
        if seq.residency_mark is None:
            seq.residency_mark = ResidencyMark()
        return self.prefix_cache.resident_length(seq.token_ids, seq.residency_mark)

    def _future_decode(self, seq: Sequence) -> int:
        """Slots ``seq`` is expected to take for tokens it has not generated yet."""
        state = seq.state  # (asked for every running sequence on every step that may admit: attributes read once)
        sampling = state.request.sampling
        remaining = state.max_new_tokens - (len(seq.token_ids) - len(state.prompt_ids))
        if remaining <= 0:
            return 0
        remaining *= sampling.n
        return remaining if sampling.ignore_eos else int(remaining * self.config.decode_reserve_ratio)

    def _admit(self, seq: Sequence, keep: int | None = None) -> bool | None:
        """Move a waiting sequence to running if a row (``n`` rows for a group about to fan out) is free and, with
        ``keep``, if the part of its prompt the prefix cache does not hold fits in the free slots less ``keep``
        (the whole prompt: admitting a prompt whose later chunks would not fit only retracts someone when they come).
        ``None``: not now, but others may go ahead (its prefix is loading or being computed by another)."""
        rows_needed = seq.state.sampling.n if seq.needs_spawn else 1
        self._refusal = "rows"
        if len(self.running) + rows_needed > self.config.max_running:
            return False
        if self.req_to_token.num_free_rows < rows_needed:
            return False
        # The last token is always computed (its logits give the next one); with prompt log-probabilities, every
        # position from prompt_logprobs_start - 1 on is computed too, since a cached prefix has no logits.
        limit = len(seq.token_ids) - 1
        if seq.state.sampling.prompt_logprobs_start is not None and seq.num_generated == 0:
            limit = min(limit, seq.state.sampling.prompt_logprobs_start - 1)
        if keep is not None and getattr(self.prefix_cache, "host", None) is None:
            # A prompt that cannot fit even with all its resident prefix counted is refused before matching (a walk
            # that splits nodes, locks the path and gathers its slots, only to be undone). Without a host tier no
            # load can start, and the match could only find less room, so the answer is the same.
            uncached = len(seq.token_ids) - min(self._resident_length(seq), limit)
            if uncached > self._admission_room(seq) - keep:
                self._refusal = self._memory_stop(uncached + keep - 1, "prompt_fit", seq=seq)
                return False
        match = self.prefix_cache.match_prefix(seq.token_ids[:limit], seq.program_id)
        if match.loading:
            return None
        # Measured after the match: the cached prefix it locked is no longer evictable, so no longer free.
        if keep is not None and len(seq.token_ids) - match.length > self._admission_room(seq) - keep:
            self._refusal = self._memory_stop(len(seq.token_ids) - match.length + keep - 1, "prompt_fit", seq=seq)
            self.prefix_cache.unmatch(match)
            return False
        seq.cache_handle = match.handle
        seq.req_row = self.req_to_token.alloc_row()
        # Rows for the siblings are taken now, so later admissions cannot leave the fan-out without any.
        seq.sibling_rows = [self.req_to_token.alloc_row() for _ in range(rows_needed - 1)]
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
        return True

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
        seq.prefix_keys = None
