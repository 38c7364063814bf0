"""Turns one sample's token stream into text deltas, applying stop strings.

Text that could still be the beginning of a stop string is held back until it cannot be; when a stop string
appears, the text is cut right before it and the sample finishes with reason ``stop``.
"""

from __future__ import annotations

from plait.engine.detokenizer import IncrementalDetokenizer


class TextOutput:
    def __init__(self, detokenizer: IncrementalDetokenizer, stop: list[str]) -> None:
        self.detokenizer = detokenizer
        self.stop = stop
        self._hold = max((len(s) for s in stop), default=1) - 1
        self.text = ""  # all text so far (before any stop cut)
        self._emitted = 0  # characters of self.text already returned

    def add(self, token_id: int) -> tuple[str, bool]:
        """Feed a token; returns ``(new_text, stop_string_hit)``."""
        self.text += self.detokenizer.add(token_id)
        if self.stop:
            # Only the new tail (plus the held-back part) can contain a stop string that was not there before.
            search_from = max(0, self._emitted - self._hold)
            hits = [i for i in (self.text.find(s, search_from) for s in self.stop) if i >= 0]
            if hits:
                cut = min(hits)
                self.text = self.text[:cut]
                return self._take(len(self.text)), True
        return self._take(len(self.text) - self._hold), False

    def finish(self) -> str:
        """The held-back rest of the text when the sample ends for another reason."""
        self.text += self.detokenizer.flush()
        if self.stop:
            hits = [i for i in (self.text.find(s, max(0, self._emitted - self._hold)) for s in self.stop) if i >= 0]
            if hits:
                self.text = self.text[: min(hits)]
        return self._take(len(self.text))

    def _take(self, upto: int) -> str:
        if upto <= self._emitted:
            return ""
        delta = self.text[self._emitted : upto]
        self._emitted = upto
        return delta
