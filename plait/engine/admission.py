"""Admission: which prefill chunks join a step beside its decodes, and why the rest wait.

One ``Admission`` plans the prefill part of one planning pass (``Scheduler._schedule_once``): the decodes have their
slots, and the step's token budget, the KV memory and the running rows that are left go to prefill chunks. The
candidates come in priority order (``candidates``) and each one meets the rules in this order; the first rule it fails
ends the pass with that rule's ``Stop`` (strict priority order: nothing behind it starts in this pass either), except
the two that only say "not now", after which the next candidate is tried.

    rule                                    for                 on failure
    not retracted in this step              new prompts         stop: retracted
    within_token_budget()                   all                 stop: token_budget
    room_for(seq) > 0                       all (1)             stop: memory, pinned or reserved (memory_stop)
    keeps_decode_reserve(first chunk)       new prompts         stop: decode_reserve
    not held_for_prefix(seq), ready(seq)    new prompts         not now ("held", once per pass)
    rows_free(its rows)                     new prompts         stop: rows
    fits(seq, uncached prompt)              new prompts         stop: prompt_fit
    its prefix is not loading               new prompts         not now
    eviction frees a slot for its chunk     all                 stop: memory

    (1) a running prefill with no other room left takes pinned slots too

A new prompt that meets them all starts running (``Scheduler.start``) on the prefix the cache holds, and takes its
first chunk; a running partial prefill takes its next one.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

import torch

from plait.cache import PrefixCache, PrefixMatch, ReqToTokenPool, ResidencyMark, SlotAllocator
from plait.engine.cache_affinity import affinity_order
from plait.engine.engine_config import EngineConfig
from plait.engine.engine_policy import EnginePolicy
from plait.engine.prefix_hold import InflightPrefixes
from plait.engine.reservations import Reservations
from plait.engine.sequence import SeqStatus, Sequence


class Stop(enum.StrEnum):
    """Why admission stopped in a planning pass: the keys of ``Scheduler.admission_stops``."""

    TOKEN_BUDGET = "token_budget"  # the step's token budget is spent
    MEMORY = "memory"  # no slot for the next chunk, even after eviction
    DECODE_RESERVE = "decode_reserve"  # its first chunk would take the room running sequences still need
    PROMPT_FIT = "prompt_fit"  # its uncached prompt does not fit beside what running sequences still take
    ROWS = "rows"  # every running row is taken (max_running, or the req_to_token rows)
    PINNED = "pinned"  # a memory stop that counting pinned slots as free would have let in
    RESERVED = "reserved"  # a memory stop that other programs' reservations made
    RETRACTED = "retracted"  # the next candidate was retracted in this step
    HELD = "held"  # (not a stop) some prompt waited for a prefix in flight or for its readiness; the rest went on


@dataclass
class Admission:
    """The prefill part of one planning pass. Holds the scheduler's memory (allocator, prefix cache, reservations)
    and rows, and its queues: an admitted sequence moves into ``running`` at once (``start``), so the rules for the
    next candidate see it. Built anew for every pass, so a policy or prefix cache replaced between steps is the one
    it reads."""

    token_budget: int  # tokens the step may still compute
    # Retracted in this step: not re-admitted in it (they would take back the memory their retraction freed and stall
    # again).
    excluded: list[Sequence]
    config: EngineConfig  # static limits: max_running, chunk_size, decode reserve
    policy: EnginePolicy
    allocator: SlotAllocator
    req_to_token: ReqToTokenPool
    prefix_cache: PrefixCache
    reservations: Reservations
    waiting: list[Sequence]  # the scheduler's queues (its own lists, in sort_key order for ``waiting``)
    running: list[Sequence]
    can_start: Callable[[Sequence], bool] | None  # Scheduler.ready
    start: Callable[[Sequence, PrefixMatch, int], None]  # Scheduler.start: moves a waiting sequence to ``running``
    # Room the running sequences will still take: tokens to generate, and the rest of partial prefills' prompts
    # (admitting beside a long prefill that later fills the pool would retract a decode). Only prefills use it.
    decode_reserve: int = 0
    inflight: InflightPrefixes | None = None  # the prompts being prefilled, with prefix holds on
    stop: Stop | None = None  # why the first waiting sequence that did not start stayed out
    held: bool = False  # some prompt was held back (``held_for_prefix`` or not ``ready``)

    # ---- the candidates --------------------------------------------------------------------------------------------

    def candidates(self) -> list[Sequence]:
        """The sequences this pass tries, in order: running partial prefills by priority (a high-priority prompt's
        remaining chunks before a low one's), then the waiting queue in admission order (``waiting_order``) while a
        row is free. With every row taken no waiting sequence can start: the queue is not ordered (affinity looks up
        prefixes). With any candidate, the pass measures what the running sequences still take (``decode_reserve``)
        and which prefixes are in flight (``inflight``): a pass over the running sequences, skipped on steps that only
        decode."""
        partial = sorted((s for s in self.running if not s.is_decode and not s.will_finish), key=lambda s: s.sort_key)
        if not self.rows_free():
            self.stop = Stop.ROWS
            candidates = partial
        else:
            candidates = partial + (self.waiting_order() if self.waiting else [])
        if candidates:
            self.decode_reserve = sum(
                self.future_decode(s) + (0 if s.is_decode else s.num_uncomputed) for s in self.running
            )
            if self.prefix_cache.shares_prefixes and self.policy.prefix_first:
                self.inflight = InflightPrefixes(self.running, self.policy.prefix_hold_min_tokens)
        return candidates

    def waiting_order(self) -> list[Sequence]:
        """The waiting queue in the order admission tries it: priority order, except that with cache affinity the
        sequences near the head whose priorities share a window go longest-resident-prefix first. Prompts that
        reuse KV already on the device take less new memory, so more run at once where memory is what binds (six
        agents' prompts competing for a pool that holds four, say), and fewer prefixes are evicted to be computed
        again. Promoted (starving) sequences keep their place ahead of everyone."""
        window = self.policy.affinity_window_s
        waiting = self.waiting
        if window <= 0 or len(waiting) < 2 or self.token_budget <= 0 or not self.prefix_cache.shares_prefixes:
            return list(waiting)
        if self.room_outside_pins() <= 0:
            return list(waiting)  # no room outside pins: at most a prompt outranking them starts; skip the lookups
        return affinity_order(waiting, window, self.resident_length)

    # ---- one candidate ---------------------------------------------------------------------------------------------

    def admit(self, seq: Sequence) -> torch.Tensor | Stop | None:
        """The KV slots of ``seq``'s next chunk in this step (its tokens from ``num_computed`` on); None: not now,
        but the candidates behind it may go (a prompt held for its prefix or its readiness, or whose prefix is loading
        from host memory); a ``Stop``: neither ``seq`` nor any candidate behind it gets a chunk in this pass."""
        chunk = self._admit_prompt(seq) if seq.status is SeqStatus.WAITING else self._continue_prefill(seq)
        if isinstance(chunk, Stop):
            self.stop = chunk
        return chunk

    def _continue_prefill(self, seq: Sequence) -> torch.Tensor | Stop:
        """A running partial prefill's next chunk. Pins hold memory for the future: they keep new prompts out
        (admission counts unpinned room only, and what pins ``seq`` outranks hold) but yield to a running prefill that
        has no other room left, one chunk at a time."""
        if not self.within_token_budget():
            return Stop.TOKEN_BUDGET
        room = self.room_for(seq, reserved=False)  # the chunks of a prompt already admitted skip reservations
        takes_pinned = room <= 0 or not self.policy.pins_hold_admissions
        if takes_pinned:
            room = self.free_slots(allow_pinned=True)
        if room <= 0:
            return self.memory_stop(seq, 0, wanted=min(seq.num_uncomputed, self.config.chunk_size))
        return self._take_chunk(seq, room, takes_pinned)

    def _admit_prompt(self, seq: Sequence) -> torch.Tensor | Stop | None:
        """A waiting prompt: started running on its cached prefix, with its first chunk, if it meets every rule."""
        if any(seq is r for r in self.excluded):
            return Stop.RETRACTED  # a victim of this step: it and everything behind it wait for the next one
        if not self.within_token_budget():
            return Stop.TOKEN_BUDGET
        # A new prompt's room leaves other programs' reservations out whether or not pins hold admissions.
        room = self.room_for(seq)
        first_chunk = min(seq.num_uncomputed, self.config.chunk_size)
        if room <= 0:
            return self.memory_stop(seq, 0, wanted=first_chunk)  # what pinned KV held out: its first chunk
        own = self.future_decode(seq)
        keep = self.decode_reserve + own if self.reserves_decode() else None
        if keep is not None and not self.keeps_decode_reserve(first_chunk, room, keep):
            return self.memory_stop(seq, first_chunk + keep - 1, Stop.DECODE_RESERVE)
        if self.held_for_prefix(seq) or not self.ready(seq):
            self.held = True
            return None  # its prefix is being computed, or its grammar compiling: others go first
        rows = seq.state.sampling.n if seq.needs_spawn else 1  # a group about to fan out takes its siblings' rows
        if not self.rows_free(rows):
            return Stop.ROWS
        match = self._match(seq, keep)
        if match is None or isinstance(match, Stop):
            return match
        self.start(seq, match, rows)
        self.decode_reserve += own + seq.num_uncomputed  # it runs now; its chunks count down its prompt
        if self.inflight is not None:
            self.inflight.add(seq)  # admitted this step: it computes its prefix now
        # The prefix it matched is locked now, no longer free. Its chunks are those of a running request: the
        # admission above respected the reservations (with anything running, for its whole prompt).
        return self._take_chunk(seq, self.room_for(seq, reserved=False), not self.policy.pins_hold_admissions)

    def _match(self, seq: Sequence, keep: int | None) -> PrefixMatch | Stop | None:
        """The cached prefix of waiting ``seq``'s prompt, locked for it, if (with ``keep``) the part the cache does not
        hold fits (``fits``); None: not now, but others may go ahead (its prefix is loading from host memory)."""
        # The last token is always computed (its logits give the next one); with prompt log-probabilities, every
        # position from prompt_logprobs_start - 1 on is computed too, since a cached prefix has no logits.
        limit = len(seq.token_ids) - 1
        if seq.state.sampling.prompt_logprobs_start is not None and seq.num_generated == 0:
            limit = min(limit, seq.state.sampling.prompt_logprobs_start - 1)
        if keep is not None and getattr(self.prefix_cache, "host", None) is None:
            # A prompt that cannot fit even with all its resident prefix counted is refused before matching (a walk
            # that splits nodes, locks the path and gathers its slots, only to be undone). Without a host tier no
            # load can start, and the match could only find less room, so the answer is the same.
            uncached = len(seq.token_ids) - min(self.resident_length(seq), limit)
            if not self.fits(seq, uncached, keep):
                return self.memory_stop(seq, uncached + keep - 1, Stop.PROMPT_FIT)
        match = self.prefix_cache.match_prefix(seq.token_ids[:limit], seq.program_id)
        if match.loading:
            return None
        # Measured after the match: the cached prefix it locked is no longer evictable, so no longer free.
        uncached = len(seq.token_ids) - match.length
        if keep is not None and not self.fits(seq, uncached, keep):
            stop = self.memory_stop(seq, uncached + keep - 1, Stop.PROMPT_FIT)
            self.prefix_cache.unmatch(match)
            return stop
        return match

    def _take_chunk(self, seq: Sequence, room: int, takes_pinned: bool) -> torch.Tensor | Stop:
        """Slots for ``seq``'s next chunk: at most ``chunk_size`` tokens, within the token budget and ``room``,
        evicting for them (pinned KV only with ``takes_pinned`` or where its pinners yield to ``seq``)."""
        chunk = min(seq.num_uncomputed, self.token_budget, self.config.chunk_size, room)
        if self.allocator.num_free < chunk:
            self.prefix_cache.evict(chunk - self.allocator.num_free, takes_pinned, seq.sort_key[0])
        chunk = min(chunk, self.allocator.num_free)  # what eviction could really free
        if chunk <= 0:
            return Stop.MEMORY
        self.decode_reserve -= chunk  # this chunk is no longer to come, the rest of the prompt still is
        self.token_budget -= chunk
        return self.allocator.alloc(chunk)

    # ---- the rules -------------------------------------------------------------------------------------------------

    def rows_free(self, rows: int = 1) -> bool:
        """``rows`` more sequences may run: within ``max_running``, and with req_to_token rows free for them."""
        return len(self.running) + rows <= self.config.max_running and self.req_to_token.num_free_rows >= rows

    def within_token_budget(self) -> bool:
        return self.token_budget > 0

    def free_slots(self, allow_pinned: bool = False) -> int:
        """Slots free now or after eviction; pinned prefixes count only with ``allow_pinned`` (running requests)."""
        return self.allocator.num_free + self.prefix_cache.evictable_slots(allow_pinned)

    def room_outside_pins(self) -> int:
        """Slots a new prompt may take whoever it is: pinned ones only while pins do not hold admissions."""
        return self.free_slots(allow_pinned=not self.policy.pins_hold_admissions)

    def room_for(self, seq: Sequence, reserved: bool = True) -> int:
        """Slots a new prompt (``seq``) may take: pinned ones too unless pins hold admissions, else those whose every
        pinner ``seq`` outranks (KV kept for a less important program's next call must not hold back a more
        important one). ``reserved``: less what is reserved for calls ``seq`` would go after (an admission; the
        chunks of a prompt already admitted are not held back by reservations)."""
        if self.policy.pins_hold_admissions:
            room = self.allocator.num_free + self.prefix_cache.evictable_slots(priority=seq.sort_key[0])
        else:
            room = self.free_slots(allow_pinned=True)
        return room - self.reserved_against(seq) if reserved else room

    def reserved_against(self, seq: Sequence) -> int:
        """Slots reserved for the next calls of programs waiting on tools that ``seq`` would go after, at most the
        pin budget (``pin_budget_fraction`` of the pool, as for pins; 0 turns reservations off too): whatever the
        programs waiting on tools hold back, new work keeps the rest. None while nothing runs: an idle engine does not
        wait for calls that are not there yet."""
        if not self.running or not len(self.reservations):
            return 0
        held = self.reservations.held_against(seq.sort_key[0], seq.program_id)
        return min(held, int(self.policy.pin_budget_fraction * self.allocator.num_slots))

    def reserves_decode(self) -> bool:
        """Admissions keep room for what running sequences will still take (with nothing running there is none)."""
        return self.config.reserve_decode and bool(self.running)

    def keeps_decode_reserve(self, first_chunk: int, room: int, keep: int) -> bool:
        """A new prompt's first chunk leaves ``keep`` (the running sequences' reserve and its own decode) of its
        ``room``: admitting it otherwise leaves the running sequences no room to decode (a retraction later)."""
        return first_chunk <= room - keep

    def fits(self, seq: Sequence, uncached: int, keep: int) -> bool:
        """The ``uncached`` part of ``seq``'s prompt fits in its room less ``keep``: the whole uncached prompt must fit
        beside what running sequences still take (admitting a prompt whose later chunks would not fit only retracts
        someone when they come). With nothing running only its first chunk must fit (``keeps_decode_reserve``); its
        later chunks may take pinned memory (a pin does not hold an otherwise idle engine back for a whole prompt)."""
        return uncached <= self.room_for(seq) - keep

    def held_for_prefix(self, seq: Sequence) -> bool:
        """A running prefill is computing a long part of ``seq``'s prefix: ``seq`` waits for it (``prefix_hold``)."""
        return self.inflight is not None and self.inflight.computes_prefix_of(seq)

    def ready(self, seq: Sequence) -> bool:
        """False for a waiting sequence that cannot start yet (its grammar is still compiling): it lets later
        sequences go ahead, as for a prefix still loading from host memory."""
        return self.can_start is None or self.can_start(seq)

    def memory_stop(self, seq: Sequence, needed: int, reason: Stop = Stop.MEMORY, wanted: int = 0) -> Stop:
        """``reason``; "reserved" when the prompt ``seq`` would have fitted without other programs' reservations
        (``needed`` + 1 slots, or ``wanted`` if more); "pinned" when it would have with pinned prefixes counted. The
        cache then learns which pinned KV kept the prompt out (what those pins saved)."""
        room = self.room_for(seq)
        reserved = self.reserved_against(seq)
        want = max(needed + 1, wanted)
        if reserved and room + reserved >= want:
            return Stop.RESERVED
        if self.free_slots(allow_pinned=True) - reserved <= needed:
            return reason
        self.prefix_cache.note_pins_held(want - room)  # what pins had to give: the reservations stay
        return Stop.PINNED

    # ---- what a sequence will take ---------------------------------------------------------------------------------

    def future_decode(self, seq: Sequence) -> int:
        """Slots ``seq`` is expected to take for tokens it has not generated yet."""
        state = seq.state  # (asked for every running sequence on every step that may admit: attributes read once)
        sampling = state.request.sampling
        remaining = state.max_new_tokens - (len(seq.token_ids) - len(state.prompt_ids))
        if remaining <= 0:
            return 0
        remaining *= sampling.n
        return remaining if sampling.ignore_eos else int(remaining * self.config.decode_reserve_ratio)

    def resident_length(self, seq: Sequence) -> int:
        """Leading tokens of ``seq`` on the device now; the walk resumes where the last one stopped (its mark)."""
        if seq.residency_mark is None:
            seq.residency_mark = ResidencyMark()
        return self.prefix_cache.resident_length(seq.token_ids, seq.residency_mark)

    def stops(self) -> list[str]:
        """What this pass adds to ``Scheduler.admission_stops``: why admission stopped, and "held" if it held a
        prompt back."""
        return ([self.stop.value] if self.stop else []) + ([Stop.HELD.value] if self.held else [])
