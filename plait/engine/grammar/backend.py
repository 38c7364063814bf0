"""One xgrammar ``TokenizerInfo`` and ``GrammarCompiler`` (with its cache) per model, compiling off the engine thread.

The token strings come from plait's own tokenizer. Special tokens that do not end generation (``<|im_start|>``,
``<s>``...) and padding ids are given an empty string, which xgrammar treats as "never allowed": otherwise a
byte-level vocabulary would let the grammar spell ``<|im_start|>`` inside a JSON string with one special token.
Stop tokens (EOS, end-of-turn) are allowed exactly where the grammar may end.

Compilation runs on a small thread pool; each request gets a ``RequestGrammar`` whose future the scheduler polls
(a request whose grammar is still compiling is skipped by batch formation, like a prefix still loading).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import xgrammar as xgr

from plait.engine.tokenizer import Tokenizer

COMPILE_THREADS = 2
_TIMINGS_KEPT = 100_000


def vocab_type_of(tokenizer: Tokenizer) -> xgr.VocabType:
    """How the vocabulary spells bytes: byte-level BPE (GPT-2 alphabet), byte fallback (``<0x0A>``) or raw text."""
    try:  # the decoder's own JSON (serialising the whole tokenizer would copy the vocabulary)
        decoder = json.loads(tokenizer.backend.decoder.__getstate__()) if tokenizer.backend.decoder else {}
    except (ValueError, AttributeError, TypeError):
        return xgr.VocabType.BYTE_LEVEL
    kinds = {decoder.get("type")} | {d.get("type") for d in decoder.get("decoders") or [] if isinstance(d, dict)}
    if "ByteLevel" in kinds:
        return xgr.VocabType.BYTE_LEVEL
    if "ByteFallback" in kinds:
        return xgr.VocabType.BYTE_FALLBACK
    return xgr.VocabType.RAW


@dataclass
class GrammarTimings:
    """Compile seconds per grammar; mask-fill seconds per step and per constrained token (bounded, newest kept).

    The rows of a step are filled together (in parallel), so the per-token figure is the step's fill time divided by
    its constrained rows, recorded once per step.
    """

    compile_s: deque[float] = field(default_factory=lambda: deque(maxlen=_TIMINGS_KEPT))
    mask_s_per_token: deque[float] = field(default_factory=lambda: deque(maxlen=_TIMINGS_KEPT))
    mask_s_per_step: deque[float] = field(default_factory=lambda: deque(maxlen=_TIMINGS_KEPT))
    masked_tokens: int = 0

    def clear(self) -> None:
        self.compile_s.clear()
        self.mask_s_per_token.clear()
        self.mask_s_per_step.clear()
        self.masked_tokens = 0


class GrammarBackend:
    """Per-model grammar machinery. ``compile`` may be called from any thread; matchers are engine-thread only."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int, threads: int = COMPILE_THREADS) -> None:
        """``vocab_size``: the model's logits width. Ids the tokenizer has no string for are never allowed; tokenizer
        ids beyond the logits (a tokenizer larger than the model) cannot be sampled and are left out."""
        self.vocab_size = vocab_size
        strings = (tokenizer.token_strings() + [""] * vocab_size)[:vocab_size]
        stops = sorted(i for i in tokenizer.stop_token_ids if i < vocab_size)
        for token_id, added in tokenizer.backend.get_added_tokens_decoder().items():
            if added.special and token_id not in tokenizer.stop_token_ids and token_id < len(strings):
                strings[token_id] = ""
        self.stop_token_ids = stops
        self.info = xgr.TokenizerInfo(
            strings, vocab_type_of(tokenizer), vocab_size=self.vocab_size, stop_token_ids=stops
        )
        self.compiler = xgr.GrammarCompiler(self.info, max_threads=threads, cache_enabled=True)
        self._uncached: xgr.GrammarCompiler | None = None
        self._uncached_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="plait-grammar")
        self.timings = GrammarTimings()

    def compile(self, grammar: xgr.Grammar) -> RequestGrammar:
        """Start compiling ``grammar`` (cached by its text); returns at once."""
        return RequestGrammar(self._pool.submit(self._compile, grammar))

    def _compile(self, grammar: xgr.Grammar) -> xgr.CompiledGrammar:
        start = time.perf_counter()
        compiled = self.compile_now(grammar)
        self.timings.compile_s.append(time.perf_counter() - start)
        return compiled

    def compile_now(self, grammar: xgr.Grammar) -> xgr.CompiledGrammar:
        """Compile in the calling thread. xgrammar 0.2.8's cache fails an internal check on some grammars (e.g. a
        ``patternProperties`` key pattern with ``{1,255}``); those are compiled again without the cache."""
        try:
            return self.compiler.compile_grammar(grammar)
        except RuntimeError:
            with self._uncached_lock:
                if self._uncached is None:
                    self._uncached = xgr.GrammarCompiler(self.info, max_threads=1, cache_enabled=False)
            return self._uncached.compile_grammar(grammar)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class RequestGrammar:
    """The compiled grammar of one request (a future) and the matchers of its samples, one each."""

    def __init__(self, future: Future[xgr.CompiledGrammar]) -> None:
        self.future = future
        self.matchers: dict[int, xgr.GrammarMatcher] = {}  # sample index -> its matcher, created on first use

    @property
    def ready(self) -> bool:
        """Compiled (or failed: ``error`` says why)."""
        return self.future.done()

    @property
    def error(self) -> str | None:
        if not self.future.done() or self.future.cancelled():
            return None if not self.future.cancelled() else "grammar compilation was cancelled"
        error = self.future.exception()
        return None if error is None else f"grammar compilation failed: {error}"

    def matcher(self, index: int) -> xgr.GrammarMatcher:
        """The matcher of sample ``index`` (created from the compiled grammar the first time)."""
        matcher = self.matchers.get(index)
        if matcher is None:
            matcher = self.matchers[index] = xgr.GrammarMatcher(self.future.result())
        return matcher

    def release(self, index: int) -> None:
        self.matchers.pop(index, None)

    def cancel(self) -> None:
        self.future.cancel()
        self.matchers.clear()
