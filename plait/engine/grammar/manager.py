"""The engine's side of constrained decoding: which requests have a grammar, whether it is compiled, each sample's
matcher, and the step's bitmask.

Ownership: ``prepare`` may run on any thread (it parses the constraint and starts compiling); everything else runs on
the engine thread. A request's grammar lives from ``add`` until its last sample finishes or it is aborted; a sample's
matcher from its first sampled token until that sample finishes. Retraction keeps the matcher as it is: the sample's
generated tokens stay in its ``token_ids`` and are re-prefilled, never re-fed to the matcher.
"""

from __future__ import annotations

import threading
import weakref
from concurrent.futures import FIRST_COMPLETED
from concurrent.futures import wait as wait_futures
from typing import TYPE_CHECKING

import torch
import xgrammar as xgr

from plait.engine.grammar.backend import GrammarBackend, GrammarTimings, RequestGrammar
from plait.engine.grammar.bitmask import TokenBitmask
from plait.engine.grammar.constraint import build_grammar
from plait.engine.tokenizer import Tokenizer

if TYPE_CHECKING:
    from plait.engine.sequence import RequestState, Sequence


class GrammarManager:
    def __init__(self, tokenizer: Tokenizer, vocab_size: int, device: torch.device) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.device = device
        self._backend: GrammarBackend | None = None
        self._bitmask: TokenBitmask | None = None
        self._lock = threading.Lock()  # guards the lazy backend and the prepared map (prepare runs on any thread)
        # Prepared but not yet added (keyed by the state object; an entry vanishes if the state is dropped).
        self._prepared: weakref.WeakKeyDictionary[RequestState, RequestGrammar] = weakref.WeakKeyDictionary()
        self.requests: dict[str, RequestGrammar] = {}

    @property
    def backend(self) -> GrammarBackend:
        """Built on first use: the TokenizerInfo costs a pass over the vocabulary that unconstrained serving skips."""
        with self._lock:
            if self._backend is None:
                self._backend = GrammarBackend(self.tokenizer, self.vocab_size)
            return self._backend

    @property
    def timings(self) -> GrammarTimings:
        return self.backend.timings

    # ---- submission (any thread) -----------------------------------------------------------------------------------

    def prepare(self, state: RequestState) -> None:
        """Validate the request's constraint (raises ``InvalidRequestError``) and start compiling it."""
        grammar = build_grammar(state.sampling)
        if grammar is None:
            return
        compiling = self.backend.compile(grammar)
        with self._lock:
            self._prepared[state] = compiling

    # ---- engine thread ---------------------------------------------------------------------------------------------

    def add(self, state: RequestState) -> None:
        with self._lock:
            compiling = self._prepared.pop(state, None)
        if compiling is not None:
            self.requests[state.request.request_id] = compiling

    def ready(self, seq: Sequence) -> bool:
        grammar = self.requests.get(seq.request_id)
        # A failed compilation is not ready either: the next step ends the request with the error (see ``failed``).
        return grammar is None or (grammar.ready and grammar.error is None)

    def failed(self) -> list[tuple[str, str]]:
        """``(request_id, error)`` of requests whose grammar failed to compile."""
        return [(rid, g.error) for rid, g in self.requests.items() if g.ready and g.error is not None]

    def wait_for_compiles(self, timeout: float) -> None:
        """Block up to ``timeout`` seconds for a pending compilation (called when nothing else can run)."""
        pending = [g.future for g in self.requests.values() if not g.ready]
        if pending:
            wait_futures(pending, timeout=timeout, return_when=FIRST_COMPLETED)

    def matchers(self, seqs: list[Sequence]) -> list[xgr.GrammarMatcher | None]:
        """Each sequence's matcher (None when its request is unconstrained)."""
        result: list[xgr.GrammarMatcher | None] = []
        for seq in seqs:
            grammar = self.requests.get(seq.request_id)
            result.append(grammar.matcher(seq.index) if grammar is not None else None)
        return result

    def fill(self, matchers: list[xgr.GrammarMatcher | None]) -> tuple[torch.Tensor, list[int]] | None:
        """Fill the bitmask rows of the constrained samples (CPU; run while the forward pass computes)."""
        if not any(m is not None for m in matchers):
            return None
        if self._bitmask is None:
            self._bitmask = TokenBitmask(self.backend.vocab_size, self.device)
        return self._bitmask.fill(matchers, self.backend.timings)

    def apply(self, logits: torch.Tensor, filled: tuple[torch.Tensor, list[int]]) -> None:
        assert self._bitmask is not None
        self._bitmask.apply(logits, filled)

    @staticmethod
    def accept(matchers: list[xgr.GrammarMatcher | None], tokens: list[int]) -> list[bool]:
        """Advance every constrained row's matcher by its sampled token in one call; unconstrained rows are True."""
        rows = [i for i, m in enumerate(matchers) if m is not None]
        accepted = [True] * len(matchers)
        if rows:
            results = xgr.BatchGrammarMatcher.batch_accept_token([matchers[i] for i in rows], [tokens[i] for i in rows])
            for row, ok in zip(rows, results, strict=True):
                accepted[row] = ok
        return accepted

    def release_sample(self, request_id: str, index: int) -> None:
        grammar = self.requests.get(request_id)
        if grammar is not None:
            grammar.release(index)

    def release_request(self, request_id: str) -> None:
        grammar = self.requests.pop(request_id, None)
        if grammar is not None:
            grammar.cancel()

    def num_matchers(self) -> int:
        return sum(len(g.matchers) for g in self.requests.values())
