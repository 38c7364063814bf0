"""Streaming detokenization: turn generated token ids into text one token at a time.

A token can end in the middle of a UTF-8 character (byte-level BPE splits emoji and CJK across tokens), and some
decoders treat a sequence's first token specially (a leading space). So each step decodes a small window of recent
tokens twice, with and without the new one, and emits the difference once it no longer ends in U+FFFD.

Invariant: the window's first ``_read`` tokens were emitted and end at a character boundary (their text does not end
in U+FFFD), so decoding can restart there; concatenating every ``add()`` and ``flush()`` therefore gives
``tokenizer.decode(generated_ids)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

# How many prompt tokens to decode before the first generated one, for decoders whose output depends on context.
_CONTEXT_TOKENS = 4
_REPLACEMENT = "\ufffd"


class _Decoder(Protocol):
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str: ...


class IncrementalDetokenizer:
    """Decode one request's generated tokens incrementally, in O(1) work per token (a window of a few tokens)."""

    def __init__(
        self, tokenizer: _Decoder, prompt_ids: Sequence[int] | None = None, skip_special_tokens: bool = False
    ) -> None:
        """``prompt_ids``: the prompt, whose last few tokens give the first generated token its context."""
        self._tokenizer = tokenizer
        self._skip_special = skip_special_tokens
        context = list(prompt_ids or [])[-_CONTEXT_TOKENS:]
        # Context that ends mid-character would glue its broken tail onto the first generated text: drop it.
        if context and self._decode(context).endswith(_REPLACEMENT):
            context = []
        # The window: _ids[:_read] were emitted (or are prompt context) and are kept only as decoding context;
        # _ids[_read:] are generated but held back (their text so far ends in an incomplete character).
        self._ids: list[int] = context
        self._read = len(context)
        self._pieces: list[str] = []
        self._text: str | None = ""

    @property
    def text(self) -> str:
        """All text emitted so far (by ``add`` and ``flush``)."""
        if self._text is None:
            self._text = "".join(self._pieces)
            self._pieces = [self._text]
        return self._text

    def add(self, token_id: int) -> str:
        """Append one generated token; return the text it completes ("" while a character is still partial)."""
        self._ids.append(token_id)
        return self._advance(final=False)

    def flush(self) -> str:
        """Return whatever is held back (a trailing partial character becomes U+FFFD); call once generation ends."""
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        if self._read == len(self._ids):
            return ""
        before = self._decode(self._ids[: self._read])
        after = self._decode(self._ids)
        if not final and (len(after) <= len(before) or after.endswith(_REPLACEMENT)):
            return ""  # nothing new yet (e.g. a skipped special token), or a character is still incomplete
        # The window only grows at its end, so ``after`` extends ``before``.
        new = after[len(before) :]
        # The tokens just emitted become the next window's context; older ones are dropped.
        del self._ids[: self._read]
        self._read = len(self._ids)
        if new:
            self._pieces.append(new)
            self._text = None
        return new

    def _decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip_special)
