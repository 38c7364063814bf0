"""The ``data:`` of a server-sent event: JSON on one line that every client reads as one line.

SSE ends a line at CR or LF only, but common clients split lines as ``str.splitlines`` does (httpx's ``iter_lines``),
which also ends one at U+0085, U+2028 and U+2029. JSON may carry those raw inside strings (the model can generate
them), so they are written as JSON escapes: the value is the same, and no client can cut the line.
"""

from __future__ import annotations

_LINE_BREAKS = {"\u0085": b"\\u0085", "\u2028": b"\\u2028", "\u2029": b"\\u2029"}
_RAW = {char.encode(): escaped for char, escaped in _LINE_BREAKS.items()}


def one_line_json(encoded: bytes) -> bytes:
    """``encoded`` (UTF-8 JSON) with the characters that some clients read as line breaks escaped."""
    for raw, escaped in _RAW.items():
        if raw in encoded:
            encoded = encoded.replace(raw, escaped)
    return encoded
