"""The synchronous engine: requests in, one batched step at a time, deltas out. Single-threaded by design.

``Engine`` (engine.py) runs this in its own thread and gives callers an async API; tests and benchmarks may drive
it directly, step by step, which makes scheduling deterministic.
"""

from __future__ import annotations

import gc
import itertools
import time
from dataclasses import replace

import torch

from plait.cache import (
    KVPool,
    PrefixKV,
    ReqToTokenPool,
    SlotAllocator,
)
from plait.engine.detokenizer import IncrementalDetokenizer
from plait.engine.engine_config import EngineConfig
from plait.engine.engine_invariants import check_engine_invariants
from plait.engine.engine_setup import auto_kv_slots, build_prefix_cache, build_runner
from plait.engine.engine_stats import EngineStats, ThroughputMeter, cache_stats
from plait.engine.errors import InvalidRequestError
from plait.engine.grammar.manager import GrammarManager
from plait.engine.grammar.prompt_logprobs import PromptLogprobs
from plait.engine.host_copy import to_device
from plait.engine.inflight import PENDING, InflightStep
from plait.engine.kv_transfer import export_prefix, import_prefix
from plait.engine.model_loader import build_model, resolve_model
from plait.engine.model_ops import TORCH_OPS, triton_ops
from plait.engine.prompt_tokens import request_prompt_ids
from plait.engine.request import GenerateDelta, GenerateRequest
from plait.engine.runtime_controls import RuntimeControls
from plait.engine.sampler import SampleRow, logprob_tensors, logprobs_to_host, sample_on_device
from plait.engine.sampling_params import check_max_tokens_fit
from plait.engine.scheduler import ScheduledBatch, Scheduler
from plait.engine.scoring import Scoring
from plait.engine.sequence import RequestState, SeqStatus, Sequence
from plait.engine.tensor_parallel import TensorParallel
from plait.engine.tensor_parallel_workers import MirroredReqToToken, TensorParallelGroup, WorkerSetup
from plait.engine.text_output import TextOutput
from plait.engine.tokenizer_loader import load_tokenizer


class EngineCore(RuntimeControls, Scoring):
    def __init__(self, config: EngineConfig | None = None) -> None:
        # A copy of its own: set_policy replaces the policy in it, never in the caller's config.
        self.config = config = replace(config or EngineConfig())
        config.validate()
        self.device = config.resolve_device()
        self.dtype = config.resolve_dtype(self.device)
        if self.device.type == "cuda":
            # What is alive before the engine (imported modules: torch, transformers, ...) never becomes garbage:
            # moving it out of the collector's reach stops each full collection from scanning it, which cost
            # milliseconds per step at large batches (CPU time the GPU waits for). Frozen before this engine's own
            # objects exist, so a discarded engine is still collected.
            gc.collect()
            gc.freeze()
        source = resolve_model(config.model, config.weights)
        self.model_config = source.config
        self.tokenizer = load_tokenizer(source, config.tokenizer)
        self.max_context = config.resolve_max_context(source.config.max_position)
        self.attention_backend = config.resolve_attention_backend(self.device)
        mc = source.config
        # With tensor parallelism this process is rank 0 of the group: it holds its part of the model and a KV pool
        # of its KV heads (``local``), and drives the other ranks (tensor_parallel_workers.py).
        self.tp_group = TensorParallelGroup.start(config, self.device) if config.tensor_parallel > 1 else None
        tp = self.tp_group.tp if self.tp_group is not None else TensorParallel.single()
        local = tp.local_config(mc)
        if config.simulated:  # no weights and a KV pool of one value per slot: only slot counts matter
            self.model = None
            self.kv_slots = config.kv_slots or auto_kv_slots(config, mc, self.device, self.dtype)
            self.kv_pool = KVPool(1, self.kv_slots, 1, 1, self.dtype, self.device)
        else:
            ops = triton_ops() if config.resolve_fused_ops(self.device) else TORCH_OPS
            packed = config.resolve_packed_weights(self.device)
            self.model = build_model(
                source, self.max_context, self.device, self.dtype, config.seed, ops, tp=tp, packed=packed
            )
            self.kv_slots = config.kv_slots or auto_kv_slots(config, local, self.device, self.dtype)
            self.kv_pool = KVPool(
                mc.num_layers, self.kv_slots, local.num_kv_heads, mc.head_dim, self.dtype, self.device
            )
        self.allocator = SlotAllocator(self.kv_slots)
        if self.tp_group is not None:
            self.tp_group.share_setup(WorkerSetup(self.kv_slots, self.max_context))
            self.req_to_token: ReqToTokenPool = MirroredReqToToken(
                config.max_running, self.max_context + 1, self.device
            )
        else:
            self.req_to_token = ReqToTokenPool(config.max_running, self.max_context + 1, self.device)
        self.prefix_cache, self.cache_hints = build_prefix_cache(config, self.allocator, self.kv_pool)
        self.scheduler = Scheduler(
            config,
            config.policy,
            self.allocator,
            self.req_to_token,
            self.prefix_cache,
            ready=self._can_admit,
        )
        self.runner = build_runner(self, mc, local)
        self.requests: dict[str, list[Sequence]] = {}
        self._arrivals = itertools.count()
        self._seed_source = torch.Generator().manual_seed(config.seed)
        self._hints_ignored = 0  # hints given while no prefix cache is on
        self.grammars = GrammarManager(self.tokenizer, mc.vocab_size, self.device)
        self._prompt_logprobs = PromptLogprobs()
        self._pending_deltas: list[GenerateDelta] = []  # other requests' deltas produced inside score_choices
        # The overlap loop (inflight.py): on by default where the forward pass runs asynchronously (CUDA).
        self.overlap = config.overlap == "on" or (config.overlap == "auto" and self.device.type == "cuda")
        # A step's wall time waits on the previous step's device work only where the forward pass is asynchronous.
        self.meter = ThroughputMeter(overlap=self.overlap and self.device.type == "cuda")
        self._inflight: InflightStep | None = None

    def resident_prefix_length(self, token_ids: list[int]) -> int:
        """How many leading tokens of ``token_ids`` have their KV on the device now (read-only)."""
        return self.prefix_cache.resident_length(token_ids)

    def export_prefix(self, token_ids: list[int]) -> PrefixKV:
        """The KV of the longest device-resident prefix of ``token_ids``, copied to host memory (``kv_transfer``)."""
        return export_prefix(self, token_ids)

    def import_prefix(self, kv: PrefixKV, program_id: str | None = None) -> int:
        """Insert KV another engine of the same model exported as a cached prefix; the tokens cached from it."""
        return import_prefix(self, kv, program_id)

    def close(self) -> None:
        """Stops the tensor-parallel workers, if any (the engine is not stepped again)."""
        if self.tp_group is not None:
            self.tp_group.stop()

    # ---- requests --------------------------------------------------------------------------------------------------

    def prepare(self, request: GenerateRequest, prompt_ids: list[int] | None = None) -> RequestState:
        """Validate and tokenize ``request`` (no engine state is touched, so any thread may call this);
        ``prompt_ids``: ``self.prompt_ids(request)`` when the caller has already computed it."""
        prompt_ids = self.prompt_ids(request) if prompt_ids is None else prompt_ids
        sampling = request.sampling
        sampling.validate(self.tokenizer.vocab_size)
        if len(prompt_ids) >= self.max_context:
            raise InvalidRequestError(
                "prompt", f"{len(prompt_ids)} tokens do not fit the context window of {self.max_context} tokens"
            )
        check_max_tokens_fit(sampling.max_tokens, len(prompt_ids), self.max_context)
        max_new = min(sampling.max_tokens, self.max_context - len(prompt_ids))
        kv_needed = len(prompt_ids) + sampling.n * max_new
        if kv_needed > self.kv_slots:
            raise InvalidRequestError(
                "max_tokens",
                f"the request may need {kv_needed} KV slots (prompt {len(prompt_ids)} + n {sampling.n} x "
                f"max_tokens {max_new}) but the pool has {self.kv_slots}; lower max_tokens or n",
            )
        start = sampling.prompt_logprobs_start
        if start is not None and start >= len(prompt_ids):
            raise InvalidRequestError(
                "prompt_logprobs_start", f"{start} is past the prompt's last position ({len(prompt_ids) - 1})"
            )
        if self.config.simulated and (sampling.constrained or start is not None):
            raise InvalidRequestError(
                "simulate", "the simulated engine has no model outputs to constrain or score; drop the constraint"
            )
        try:
            state = RequestState(request, prompt_ids, arrival=-1, max_new_tokens=max_new)
        except ValueError as error:
            raise InvalidRequestError("priority", str(error)) from None
        self.grammars.prepare(state)  # parses the constraint (may raise) and starts compiling it off this thread
        return state

    def prompt_ids(self, request: GenerateRequest) -> list[int]:
        """The prompt's token ids (``prompt`` tokenized, ``messages`` rendered and tokenized, ``prompt_pieces``
        assembled, or the ids given); see ``prompt_tokens.request_prompt_ids``."""
        return request_prompt_ids(request, self.tokenizer, self.model_config.vocab_size)

    def add(self, state: RequestState) -> None:
        """Queue a prepared request (engine thread only)."""
        request_id = state.request.request_id
        if request_id in self.requests:
            raise InvalidRequestError("request_id", f"'{request_id}' is already running")
        state.arrival = next(self._arrivals)
        first = self._new_sequence(state, 0)
        self.requests[request_id] = [first]
        self.grammars.add(state)
        self.scheduler.add(first)

    def add_request(self, request: GenerateRequest) -> None:
        """``prepare`` + ``add``."""
        self.add(self.prepare(request))

    def _new_sequence(self, state: RequestState, index: int) -> Sequence:
        sampling = state.sampling
        seed = (
            sampling.seed + index
            if sampling.seed is not None
            else int(torch.randint(0, 2**62, (1,), generator=self._seed_source))
        )
        detokenizer = IncrementalDetokenizer(self.tokenizer, state.prompt_ids, sampling.skip_special_tokens)
        return Sequence(
            state=state,
            index=index,
            token_ids=list(state.prompt_ids),
            generator=torch.Generator().manual_seed(seed),
            output=TextOutput(detokenizer, sampling.stop),
        )

    def abort(self, request_id: str) -> list[GenerateDelta]:
        """Cancel a request; returns an ``abort`` delta for each of its unfinished samples (none if unknown)."""
        seqs = self.requests.pop(request_id, [])
        self.grammars.release_request(request_id)
        self._prompt_logprobs.drop(request_id)
        deltas = []
        for seq in seqs:
            if seq.status is not SeqStatus.FINISHED:
                if seq.token_ids[-1] == PENDING:  # sampled but not read back: it never reaches the caller
                    seq.token_ids.pop()
                self.scheduler.release(seq)
                seq.status = SeqStatus.FINISHED
                seq.finish_reason = "abort"
                deltas.append(self._delta(seq, "", [], None))
        if seqs and seqs[0].needs_spawn:
            # Samples 1..n-1 did not exist yet; their streams still expect an end.
            first = deltas[0]
            deltas += [replace(first, index=i, completion_tokens=0) for i in range(1, seqs[0].state.sampling.n)]
        return deltas

    def has_work(self) -> bool:
        inflight = self._inflight is not None and any(
            s.status is not SeqStatus.FINISHED for s in self._inflight.targets
        )
        return self.scheduler.has_work() or bool(self._pending_deltas) or inflight

    # ---- one step --------------------------------------------------------------------------------------------------

    def step(self) -> list[GenerateDelta]:
        """Run one batched forward pass; returns the deltas produced (with overlap: those of the previous step)."""
        started = mark = time.perf_counter()
        phase = self.meter.add_phase

        def lap(name: str) -> None:
            nonlocal mark
            now = time.perf_counter()
            phase(name, now - mark)
            mark = now

        deltas, self._pending_deltas = self._pending_deltas, []
        for request_id, error in self.grammars.failed():
            deltas += self._fail_request(request_id, error)
        batch = self.scheduler.schedule()
        lap("schedule")
        if not batch:
            if self._inflight is not None:
                self.meter.cost_fit.idle()  # the device work in flight is waited for here, untimed
                return deltas + self._resolve()
            self.grammars.wait_for_compiles(timeout=0.005)  # nothing can run until a grammar is compiled
            return deltas
        forward = self.runner.prepare(batch, self._inflight)
        num_sampling = self._prompt_logprobs.add_rows(batch, forward)
        lap("prepare")
        logits = self.runner.forward(forward)  # asynchronous on CUDA: the CPU goes on while the GPU computes
        lap("forward")
        self.scheduler.commit(batch)
        if logits.shape[0] > num_sampling:
            self._prompt_logprobs.collect(logits[num_sampling:])
            logits = logits[:num_sampling]
        lap("commit")
        read_back = self._inflight is not None  # this step waits for the previous one's tokens
        deltas += self._resolve()  # the previous step's tokens (overlap): read while this step computes
        lap("resolve")
        self._inflight = self._launch_sampling(batch, logits)
        if not self.overlap:
            deltas += self._resolve()
        lap("sample")
        # Pinned slots no running request holds: what pins keep from new admissions.
        idle_pinned = self.scheduler.free_slots(allow_pinned=True) - self.scheduler.free_slots()
        self.meter.account(batch, time.perf_counter() - started, len(self.scheduler.waiting), idle_pinned, read_back)
        return deltas

    def _can_admit(self, seq: Sequence) -> bool:
        """A waiting sequence may start unless its grammar is compiling or its last token is not read back yet."""
        return seq.token_ids[-1] != PENDING and self.grammars.ready(seq)

    def _fail_request(self, request_id: str, error: str) -> list[GenerateDelta]:
        deltas = self.abort(request_id)
        for delta in deltas:
            delta.finish_reason, delta.error = "error", error
        return deltas

    def _launch_sampling(self, batch: ScheduledBatch, logits: torch.Tensor) -> InflightStep | None:
        """Mask and sample this step's rows on the device; the tokens are read back by ``_resolve``."""
        targets: list[Sequence] = []
        rows: list[int] = []
        sampling_items = [item for item in batch.seqs if item.samples]
        for row, item in enumerate(sampling_items):
            seq = item.seq
            if seq.status is SeqStatus.FINISHED:  # finished by the previous step after this one was scheduled
                continue
            group = [seq]
            if seq.needs_spawn:
                group += self._spawn_siblings(seq)
            targets += group
            rows += [row] * len(group)
        if not targets:
            return None
        if rows != list(range(logits.shape[0])):  # siblings share their parent's row; finished rows are dropped
            logits = logits.index_select(0, to_device(rows, torch.int64, logits.device))
        matchers = self.grammars.matchers(targets)
        masks = self.grammars.fill(matchers)  # CPU work while the GPU still runs the forward pass
        want_logprobs = any(s.state.sampling.logprobs for s in targets)
        raw = logits.clone() if masks is not None and want_logprobs else logits  # logprobs: the model's own
        if masks is not None:
            self.grammars.apply(logits, masks)
        tokens = sample_on_device(
            logits, [SampleRow(s.state.sampling, s.generator, s.token_ids, s.num_prompt) for s in targets]
        )
        logprobs = None
        if want_logprobs:
            logprobs = logprob_tensors(raw, tokens, [s.state.sampling.top_logprobs for s in targets])
        prompt_logprobs = [self._prompt_logprobs.take(seq) for seq in targets]
        for seq in targets:
            seq.token_ids.append(PENDING)
            # Known now, whatever the token: the scheduler must not give it another step.
            seq.will_finish = seq.num_generated >= seq.state.max_new_tokens or len(seq.token_ids) >= self.max_context
        return InflightStep(targets, tokens, matchers, logprobs, prompt_logprobs)

    def _resolve(self) -> list[GenerateDelta]:
        """Read back the in-flight step's tokens and emit its deltas (stop checks, text, grammar matchers)."""
        inflight, self._inflight = self._inflight, None
        if inflight is None:
            return []
        blocked = time.perf_counter()
        tokens = inflight.token_list()
        self.meter.add_phase("readback_wait", time.perf_counter() - blocked)
        # A sequence aborted since it was sampled has dropped its pending token and gets no delta.
        alive = [i for i, seq in enumerate(inflight.targets) if seq.status is not SeqStatus.FINISHED]
        live = set(alive)
        matchers = [m if i in live else None for i, m in enumerate(inflight.matchers)]
        accepted = self.grammars.accept(matchers, tokens)
        logprobs = None
        if inflight.logprobs is not None:
            top_n = [s.state.sampling.top_logprobs for s in inflight.targets]
            logprobs = logprobs_to_host(inflight.logprobs, tokens, top_n)
        deltas = []
        for i in alive:
            seq = inflight.targets[i]
            lp = [logprobs[i]] if logprobs is not None and seq.state.sampling.logprobs else None
            delta = self._append_token(seq, tokens[i], lp, matchers[i], accepted[i])
            delta.prompt_logprobs = inflight.prompt_logprobs[i]
            deltas.append(delta)
        return deltas

    def _spawn_siblings(self, parent: Sequence) -> list[Sequence]:
        parent.siblings_spawned = True
        children = [self._new_sequence(parent.state, i) for i in range(1, parent.state.sampling.n)]
        for child in children:
            child.siblings_spawned = True
            self.scheduler.spawn_sibling(parent, child)
        self.requests[parent.request_id] += children
        return children

    def _append_token(self, seq: Sequence, token: int, logprobs, matcher=None, accepted: bool = True) -> GenerateDelta:
        """Replace ``seq``'s pending token by ``token``; ``accepted`` says whether ``matcher`` (if any) took it."""
        sampling = seq.state.sampling
        assert seq.token_ids[-1] == PENDING, "a token was resolved twice"
        seq.token_ids[-1] = token
        if matcher is not None and not accepted:
            # Cannot happen with the mask applied; kept loud rather than emitting text that breaks the grammar.
            self._finish(seq, "error")
            delta = self._delta(seq, seq.output.finish(), [token], logprobs)
            delta.error = f"token {token} was sampled outside the grammar"
            return delta
        if matcher is not None and matcher.is_terminated():  # the grammar is complete and the model ended it
            self._finish(seq, "stop")
            return self._delta(seq, seq.output.finish(), [token], logprobs)
        finish = None
        is_stop_token = token in sampling.stop_token_ids or (
            not sampling.ignore_eos and token in self.tokenizer.stop_token_ids
        )
        if is_stop_token:
            text, finish = seq.output.finish(), "stop"
        else:
            text, hit_stop = seq.output.add(token)
            if hit_stop:
                finish = "stop"
            elif seq.num_generated >= seq.state.max_new_tokens or len(seq.token_ids) >= self.max_context:
                text += seq.output.finish()
                finish = "length"
        if finish is not None:
            self._finish(seq, finish)
        return self._delta(seq, text, [token], logprobs)

    def _finish(self, seq: Sequence, reason: str) -> None:
        self.grammars.release_sample(seq.request_id, seq.index)
        self.scheduler.release(seq)
        seq.status = SeqStatus.FINISHED
        seq.finish_reason = reason
        seq.state.num_finished += 1
        if seq.state.num_finished == seq.state.sampling.n:
            del self.requests[seq.request_id]
            self.grammars.release_request(seq.request_id)
            self._prompt_logprobs.drop(seq.request_id)

    def _delta(self, seq: Sequence, text: str, tokens: list[int], logprobs) -> GenerateDelta:
        return GenerateDelta(
            request_id=seq.request_id,
            index=seq.index,
            text=text,
            token_ids=tokens,
            logprobs=logprobs,
            finish_reason=seq.finish_reason,
            prompt_tokens=seq.num_prompt,
            completion_tokens=seq.num_generated,
            queued_s=None if seq.admitted_at is None else seq.admitted_at - seq.state.submitted_at,
            cached_tokens=seq.cached_tokens,
        )

    # ---- accounting ------------------------------------------------------------------------------------------------

    def stats(self) -> EngineStats:
        generated, prefilled, steps = self.meter.totals
        return EngineStats(
            waiting=len(self.scheduler.waiting),
            running=len(self.scheduler.running),
            kv_slots_used=self.kv_in_use(),
            kv_slots_cached=self.allocator.num_used - self.kv_in_use(),
            kv_slots_reserved=self.scheduler.reservations.total(),
            kv_slots_total=self.kv_slots,
            decode_tokens_per_s=self.meter.rate(1),
            prefill_tokens_per_s=self.meter.rate(2),
            generated_tokens=generated,
            prefill_tokens=prefilled,
            retractions=self.scheduler.num_retractions,
            promotions=self.scheduler.num_promotions,
            longest_queue_wait_s=self.scheduler.longest_queue_wait_s,
            steps=steps,
            busy_s=self.meter.busy_s,
            slow_steps=self.meter.slow_steps,
            longest_step_s=self.meter.longest_step_s,
            prefill_s_per_token_marginal=self.meter.cost_fit.prefill_s_per_token,
            step_fixed_share=self.meter.cost_fit.fixed_share,
            modelled_device_s=getattr(self.runner, "device_seconds", 0.0),
            decode_rows=self.meter.decode_rows,
            prefill_rows=self.meter.prefill_rows,
            waiting_rows=self.meter.waiting_rows,
            pinned_slot_steps=self.meter.pinned_slot_steps,
            phase_s=dict(self.meter.phase_s),
            admission_stops=dict(self.scheduler.admission_stops),
            **cache_stats(self.prefix_cache, self._hints_ignored),
        )

    def check_invariants(self) -> None:
        """Assert that the KV bookkeeping is consistent (tests call this after every step)."""
        check_engine_invariants(self)
