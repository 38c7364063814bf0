"""Scoring outside generation: the logits of a whole prompt in one forward pass, and the log-probability of each
of a set of choices after a prompt (through the normal batch). Engine thread only.

``EngineCore`` inherits these; they use its model, pools, scheduler and ``step``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from plait.engine.errors import InvalidRequestError
from plait.engine.forward_batch import ForwardBatch, SequenceLayout
from plait.engine.grammar import choice_score, scoring_requests
from plait.engine.request import ChoiceScore, GenerateDelta, GenerateRequest, TokenLogprob

if TYPE_CHECKING:
    from plait.cache import ReqToTokenPool, SlotAllocator
    from plait.engine.model_runner import ModelRunner
    from plait.engine.scheduler import Scheduler
    from plait.engine.sequence import RequestState


class Scoring:
    config: Any
    max_context: int
    model: Any
    device: torch.device
    req_to_token: ReqToTokenPool
    allocator: SlotAllocator
    scheduler: Scheduler
    runner: ModelRunner
    tokenizer: Any
    _pending_deltas: list[GenerateDelta]

    if TYPE_CHECKING:  # EngineCore's

        def prompt_ids(self, request: GenerateRequest) -> list[int]: ...
        def prepare(self, request: GenerateRequest) -> RequestState: ...
        def add(self, state: RequestState) -> None: ...
        def step(self) -> list[GenerateDelta]: ...

    def prompt_logits(self, token_ids: list[int]) -> torch.Tensor:
        """Logits (float32, ``[len(token_ids), vocab]``) at every position of ``token_ids``, computed in one
        forward pass outside the batch (engine thread only; used for scoring and tests)."""
        if not token_ids or len(token_ids) >= self.max_context:
            raise InvalidRequestError("prompt_token_ids", f"need 1 to {self.max_context - 1} tokens")
        if self.model is None:
            raise InvalidRequestError("simulate", "the simulated engine computes no logits")
        if self.config.tensor_parallel > 1:
            raise InvalidRequestError(
                "tensor_parallel", "scoring outside the batch is not available with tensor parallelism yet"
            )
        row = self.req_to_token.alloc_row()
        if row is None or not self.scheduler._ensure_free(len(token_ids)):
            raise InvalidRequestError("prompt_token_ids", "the engine is full; try again when it is idle")
        slots = self.allocator.alloc(len(token_ids))
        try:
            self.req_to_token.write(row, 0, slots)
            batch = ForwardBatch(
                input_ids=torch.tensor(token_ids, device=self.device),
                positions=torch.arange(len(token_ids), device=self.device),
                out_cache_loc=slots.to(self.device),
                sample_indices=torch.arange(len(token_ids), device=self.device),
                num_decode=0,
                layouts=[SequenceLayout(row, 0, len(token_ids))],
                attention=self.runner.attention,
                samples_every_row=True,
            )
            batch.attn_meta = self.runner.attention.prepare(batch)
            return self.model(batch)
        finally:
            self.allocator.release(slots)
            self.req_to_token.free_row(row)

    def score_choices(self, request: GenerateRequest, choices: list[str]) -> list[ChoiceScore]:
        """Log-probability of each choice after ``request``'s prompt (see ``plait.engine.grammar.choice_scoring``),
        computed through the normal batch. Engine thread only: steps the core until the scores are in; deltas of
        other requests produced meanwhile are returned by the next ``step()``."""
        prompt_ids = self.prompt_ids(request)
        scoring = scoring_requests(request, prompt_ids, choices, self.tokenizer)
        states = [self.prepare(r) for r in scoring]  # all validated before any is queued
        for state in states:
            self.add(state)
        found: dict[str, list[TokenLogprob] | None] = {}
        wanted = {r.request_id for r in scoring}
        while len(found) < len(wanted):
            for delta in self.step():
                if delta.request_id not in wanted:
                    self._pending_deltas.append(delta)
                elif delta.prompt_logprobs is not None:
                    found[delta.request_id] = delta.prompt_logprobs
                elif delta.finish_reason in ("error", "abort"):
                    raise RuntimeError(f"scoring request {delta.request_id} ended: {delta.error or 'aborted'}")
        return [choice_score(c, found[r.request_id]) for c, r in zip(choices, scoring, strict=True)]
