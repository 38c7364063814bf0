"""Server-sent events stay one line for clients that split lines like ``str.splitlines`` (httpx's ``iter_lines``)."""

from __future__ import annotations

import json

import msgspec

from plait.server.openai.stream import sse
from plait.server.responses_api.stream import sse_event
from plait.server.sse_data import one_line_json

TRICKY = "a\u2028b\u2029c\x85d é\n"


def test_line_separators_inside_strings_are_escaped_and_the_value_is_kept() -> None:
    for encoded in (json.dumps({"text": TRICKY}, ensure_ascii=False).encode(), msgspec.json.encode({"text": TRICKY})):
        line = one_line_json(encoded)
        assert len(line.decode().splitlines()) == 1
        assert json.loads(line) == {"text": TRICKY}


def test_every_stream_writes_one_data_line() -> None:
    events = [
        (sse({"choices": [{"text": TRICKY}]}), lambda body: body["choices"][0]["text"]),
        (sse_event({"type": "response.output_text.delta", "delta": TRICKY}), lambda body: body["delta"]),
    ]
    for event, text_of in events:
        (data,) = [line for line in event.decode().splitlines() if line.startswith("data: ")]
        assert text_of(json.loads(data.removeprefix("data: "))) == TRICKY
