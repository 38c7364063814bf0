"""The Mooncake trace loader (JSONL: ``timestamp`` ms, ``input_length``, ``output_length``, ``hash_ids``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from plait.bench.replay.records import MOONCAKE_BLOCK_TOKENS, Trace, TraceRequest
from plait.bench.replay.trace_common import (
    LineErrors,
    MalformedRecord,
    no_records_error,
    non_negative_int,
    non_negative_number,
    parse_json_object,
    require_keys,
)

_KEYS = ("timestamp", "input_length", "output_length", "hash_ids")


def _blocks_for(input_length: int) -> int:
    """How many ``MOONCAKE_BLOCK_TOKENS``-token blocks an ``input_length``-token prompt spans (last one partial)."""
    return -(-input_length // MOONCAKE_BLOCK_TOKENS)


def _hash_ids(value: Any, input_length: int) -> tuple[int, ...]:
    """Validate ``hash_ids``: a non-empty list of ints, exactly one per 512-token block of the prompt.

    Every line of the real conversation trace satisfies ``len(hash_ids) == ceil(input_length / 512)``, and the replay
    builds one block of prompt per id, so the rule is enforced exactly.
    """
    if not isinstance(value, list) or not value:
        raise MalformedRecord(f"hash_ids is {value!r:.60}; expected a non-empty list of integers")
    if any(isinstance(item, bool) or not isinstance(item, int) for item in value):
        raise MalformedRecord("hash_ids holds a non-integer; expected a non-empty list of integers")
    expected = _blocks_for(input_length)
    if len(value) != expected:
        raise MalformedRecord(
            f"hash_ids has {len(value)} id(s) but input_length {input_length} spans {expected} block(s) of "
            f"{MOONCAKE_BLOCK_TOKENS} tokens; expected len(hash_ids) == ceil(input_length / {MOONCAKE_BLOCK_TOKENS})"
        )
    return tuple(value)


def _parse_line(line: str) -> tuple[float, int, int, tuple[int, ...]]:
    """One line -> ``(timestamp_ms, input_length, output_length, hash_ids)``."""
    obj = parse_json_object(line)
    require_keys(obj, _KEYS)
    timestamp_ms = non_negative_number(obj["timestamp"], "timestamp")
    input_length = non_negative_int(obj["input_length"], "input_length")
    output_length = non_negative_int(obj["output_length"], "output_length")
    return timestamp_ms, input_length, output_length, _hash_ids(obj["hash_ids"], input_length)


def load_mooncake(path: Path, *, skip_malformed: bool = False) -> Trace:
    """Load a Mooncake JSONL trace; arrivals are seconds from the earliest timestamp, requests sorted by arrival."""
    errors = LineErrors(skip_malformed)
    rows: list[tuple[float, int, int, tuple[int, ...]]] = []
    with path.open(encoding="utf-8-sig") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                rows.append(_parse_line(line))
            except MalformedRecord as error:
                errors.reject(path, line_no, error)
    if not rows:
        raise no_records_error(path, "mooncake", errors.skipped)
    first_ms = min(row[0] for row in rows)
    requests = [
        TraceRequest(arrival_s=(ts - first_ms) / 1000.0, input_tokens=inp, output_tokens=out, hash_ids=ids)
        for ts, inp, out, ids in rows
    ]
    requests.sort(key=lambda request: request.arrival_s)  # stable: file order among equal arrivals
    trace = Trace(format="mooncake", path=path, requests=requests, skipped_lines=errors.skipped)
    trace.meta.update(files=[str(path)], records=len(requests), span_s=trace.span_s())
    return trace
