"""Reading tool calls out of a sample's text as it streams, in the format the engine's grammar enforces.

``required`` and ``auto``: each call is ``<tool_call>...</tool_call>``; a call is held back until its end tag and comes
out whole, so the calls of a parallel output come out one by one as they complete (each its own ``tool_calls``
entry). In ``auto`` mode the text outside the tags streams out as content; in ``required`` mode it is only the line
breaks between calls, which are dropped. A trailing fragment that could be the start of ``<tool_call>`` is held back
too, so content never shows half a tag. Named tool choice: the whole output is one call object, held back and parsed
at the end. Outputs that do not parse (cut off by ``max_tokens``) come out as plain content.

``auto`` with a JSON response format (``json_answer``): the output is either calls, read as for ``required``, or a JSON
answer that streams out as content untouched; the first character tells which (no JSON value starts with ``<``), so a
``<tool_call>`` inside the answer's strings stays content.
"""

from __future__ import annotations

from typing import Any

from plait.engine import TOOL_CALL_BEGIN, TOOL_CALL_END, ToolCall, parse_tool_calls


class ToolCallStream:
    """Feed a sample's text pieces; get back ``(content, calls)`` ready to send."""

    def __init__(self, tool_choice: str | dict[str, Any], single_call: bool = False, json_answer: bool = False) -> None:
        self.tool_choice = tool_choice
        self.whole_output_is_call = isinstance(tool_choice, dict)
        self.calls_only = tool_choice == "required"  # the text between calls is only their separators
        # auto with a JSON response format: None until the first character says calls (False) or the answer (True).
        self._answer: bool | None = None if json_answer and tool_choice == "auto" else False
        # parallel_tool_calls=false: the grammar allows one call; any after the first would be dropped.
        self.single_call = single_call
        self.calls_made = 0
        self._buffer = ""
        self._in_call = False

    def feed(self, text: str) -> tuple[str, list[ToolCall]]:
        self._buffer += text
        if self.whole_output_is_call:
            return "", []
        if self._answer is None and self._buffer.strip():
            self._answer = not self._buffer.lstrip().startswith(TOOL_CALL_BEGIN[0])
            self.calls_only = not self._answer
        if self._answer is not False:  # the answer, or whitespace before the first character (held back)
            content, self._buffer = (self._buffer, "") if self._answer else ("", self._buffer)
            return content, []
        content: list[str] = []
        calls: list[ToolCall] = []
        while True:
            if not self._in_call:
                start = self._buffer.find(TOOL_CALL_BEGIN)
                if start < 0:
                    keep = _partial_suffix(self._buffer, TOOL_CALL_BEGIN)
                    content.append(self._buffer[: len(self._buffer) - keep])
                    self._buffer = self._buffer[len(self._buffer) - keep :]
                    break
                content.append(self._buffer[:start])
                self._buffer = self._buffer[start:]
                self._in_call = True
            end = self._buffer.find(TOOL_CALL_END)
            if end < 0:
                break
            raw = self._buffer[: end + len(TOOL_CALL_END)]
            self._buffer = self._buffer[end + len(TOOL_CALL_END) :]
            self._in_call = False
            call = self._parse(raw, "auto")
            if call is None:
                content.append(raw)
            else:
                calls.append(call)
        return self._content(content), self._keep(calls)

    def finish(self) -> tuple[str, list[ToolCall]]:
        """The held-back rest: the call of a named choice's output, or text that never became a call."""
        rest, self._buffer, self._in_call = self._buffer, "", False
        if self.whole_output_is_call:
            call = self._parse(rest, self.tool_choice)
            return ("", self._keep([call])) if call is not None else (rest, [])
        return self._content([rest]), []

    def _content(self, pieces: list[str]) -> str:
        text = "".join(pieces)
        return "" if self.calls_only and not text.strip() else text

    def _keep(self, calls: list[ToolCall]) -> list[ToolCall]:
        if self.single_call:
            calls = calls[: max(0, 1 - self.calls_made)]
        self.calls_made += len(calls)
        return calls

    @staticmethod
    def _parse(text: str, tool_choice: str | dict[str, Any]) -> ToolCall | None:
        try:
            parsed = parse_tool_calls(text, tool_choice)
        except ValueError:
            return None
        return parsed.tool_calls[0] if parsed.tool_calls else None


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for length in range(min(len(text), len(tag) - 1), 0, -1):
        if tag.startswith(text[-length:]):
            return length
    return 0
