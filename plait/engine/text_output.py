"""Turns one sample's token stream into text deltas, applying stop strings.

Only text that could still be the beginning of a stop string is held back (the longest tail of the text that is
a prefix of some stop string); when a stop string appears, the text is cut right before it and the sample
finishes with reason ``stop``.
"""

from __future__ import annotations

from plait.engine.detokenizer import IncrementalDetokenizer


class TextOutput:
    def __init__(self, detokenizer: IncrementalDetokenizer, stop: list[str]) -> None:
        self.detokenizer = detokenizer
        self.stop = stop
        self._longest = max((len(s) for s in stop), default=0)
        self.text = ""  # all text so far (cut at a stop string once one is found)
        self._emitted = 0  # characters of self.text already returned

    def add(self, token_id: int) -> tuple[str, bool]:
        """Feed a token; returns ``(new_text, stop_string_hit)``."""
        self.text += self.detokenizer.add(token_id)
        if self._cut_at_stop():
            return self._take(len(self.text)), True
        return self._take(len(self.text) - self._held_back()), False

    def finish(self) -> str:
        """The rest of the text when the sample ends (held-back text and undecoded bytes)."""
        self.text += self.detokenizer.flush()
        self._cut_at_stop()
        return self._take(len(self.text))

    def _cut_at_stop(self) -> bool:
        if not self.stop:
            return False
        # A stop string not present before can only end in the new text: search from just before it.
        start = max(0, self._emitted - self._longest)
        hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
        return bool(hits)

    def _held_back(self) -> int:
        """Length of the longest tail of the unemitted text that some stop string starts with."""
        pending = self.text[self._emitted :]
        for size in range(min(len(pending), self._longest - 1), 0, -1):
            tail = pending[-size:]
            if any(s.startswith(tail) for s in self.stop):
                return size
        return 0

    def _take(self, upto: int) -> str:
        if upto <= self._emitted:
            return ""
        delta = self.text[self._emitted : upto]
        self._emitted = upto
        return delta
