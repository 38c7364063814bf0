"""The CSV trace loaders: Azure LLM inference (``TIMESTAMP,ContextTokens,GeneratedTokens``) and BurstGPT.

Columns are found by name (case-insensitive, surrounding whitespace ignored), so extra columns and any column order
are fine. BurstGPT has two layouts: the 6-column v1.x release (``Timestamp,Model,Request tokens,Response tokens,
Total tokens,Log Type``) and the 8-column later release that adds ``Session ID`` and ``Elapsed time`` after
``Timestamp``; both load because only ``Timestamp``, ``Request tokens`` and ``Response tokens`` are read.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from plait.bench.replay.records import Trace, TraceFormatError, TraceRequest
from plait.bench.replay.trace_common import LineErrors, MalformedRecord, int_cell, no_records_error, number_cell


@dataclass(frozen=True)
class _CsvLayout:
    """The columns one CSV format needs: roles ``arrival``, ``input``, ``output`` -> the header name expected."""

    fmt: str
    columns: dict[str, str]
    parse_time: Callable[[str, str], float]  # (cell text, column name) -> seconds on the trace's own clock


# Azure timestamps look like ``2023-11-16 18:15:46.6805900`` (7 fractional digits, more than datetime keeps), and
# the 2024 release adds an offset (``+00:00``): the fraction is split off and added back at full precision.
_DATETIME = re.compile(
    r"^\s*(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}(?::\d{2})?)(?:[.,](\d+))?\s*(Z|[+-]\d{2}(?::?\d{2})?)?\s*$"
)


def parse_datetime_s(text: str, name: str = "TIMESTAMP") -> float:
    """Seconds since the epoch of a ``YYYY-MM-DD HH:MM:SS[.fraction][offset]`` time; no offset means UTC."""
    match = _DATETIME.match(text)
    if match is None:
        raise MalformedRecord(f"{name} is {text!r}; expected a date-time like 2023-11-16 18:15:46.6805900")
    date, clock, fraction, offset = match.groups()
    offset = "+00:00" if offset in (None, "Z") else offset
    try:
        base = datetime.fromisoformat(f"{date}T{clock}{offset}")
    except ValueError:
        raise MalformedRecord(
            f"{name} is {text!r}; expected a valid date-time like 2023-11-16 18:15:46.6805900"
        ) from None
    return base.timestamp() + (int(fraction) / 10 ** len(fraction) if fraction else 0.0)


AZURE = _CsvLayout(
    "azure", {"arrival": "TIMESTAMP", "input": "ContextTokens", "output": "GeneratedTokens"}, parse_datetime_s
)
BURSTGPT = _CsvLayout(
    "burstgpt", {"arrival": "Timestamp", "input": "Request tokens", "output": "Response tokens"}, number_cell
)
_LAYOUTS = {layout.fmt: layout for layout in (AZURE, BURSTGPT)}


def _norm(name: str) -> str:
    return name.strip().lower()


def _header_hint(header: list[str], fmt: str) -> str:
    """A hint when the header looks like another format than the one asked for ('' when it does not)."""
    found = {_norm(name) for name in header}
    for other in _LAYOUTS.values():
        if other.fmt != fmt and {_norm(name) for name in other.columns.values()} <= found:
            return f"; this header looks like the {other.fmt} format: use --format {other.fmt}"
    if header and header[0].lstrip().startswith("{"):
        return "; this looks like JSON lines: use --format mooncake or --format lmcache-agent"
    return ""


def _column_indices(path: Path, header: list[str], layout: _CsvLayout) -> dict[str, int]:
    """Map each role to its column index, or raise naming the columns found and expected."""
    positions = {_norm(name): index for index, name in reversed(list(enumerate(header)))}  # first one wins
    missing = [name for name in layout.columns.values() if _norm(name) not in positions]
    if missing:
        raise TraceFormatError(
            f"{path}: the CSV header lacks column(s) {missing} needed for --format {layout.fmt}; "
            f"found columns {[name.strip() for name in header]}, expected {list(layout.columns.values())} "
            f"(other columns are allowed; names are matched case-insensitively){_header_hint(header, layout.fmt)}"
        )
    return {role: positions[_norm(name)] for role, name in layout.columns.items()}


def _parse_row(row: list[str], indices: dict[str, int], layout: _CsvLayout) -> tuple[float, int, int]:
    """One data row -> ``(time_s, input_tokens, output_tokens)``."""
    if len(row) <= max(indices.values()):
        raise MalformedRecord(f"the row has {len(row)} field(s); expected at least {max(indices.values()) + 1}")
    names = layout.columns
    return (
        layout.parse_time(row[indices["arrival"]], names["arrival"]),
        int_cell(row[indices["input"]], names["input"]),
        int_cell(row[indices["output"]], names["output"]),
    )


def load_csv_trace(path: Path, fmt: str, *, skip_malformed: bool = False) -> Trace:
    """Load an ``azure`` or ``burstgpt`` CSV trace; arrivals are seconds from the earliest row, sorted by arrival.

    BurstGPT rows with 0 response tokens are failed requests in that dataset: they are left out and counted in
    ``meta["failed_rows_dropped"]``.
    """
    layout = _LAYOUTS[fmt]
    errors = LineErrors(skip_malformed)
    rows: list[tuple[float, int, int]] = []
    failed = 0
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        header = next((row for row in reader if any(cell.strip() for cell in row)), None)
        if header is None:
            raise no_records_error(path, fmt, 0)
        indices = _column_indices(path, header, layout)
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue  # blank line
            try:
                parsed = _parse_row(row, indices, layout)
            except MalformedRecord as error:
                errors.reject(path, reader.line_num, error)
                continue
            if fmt == "burstgpt" and parsed[2] == 0:
                failed += 1
                continue
            rows.append(parsed)
    if not rows:
        raise no_records_error(path, fmt, errors.skipped, failed)
    return _build_trace(
        path, fmt, rows, errors.skipped, failed, {role: header[i].strip() for role, i in indices.items()}
    )


def _build_trace(
    path: Path, fmt: str, rows: list[tuple[float, int, int]], skipped: int, failed: int, columns: dict[str, str]
) -> Trace:
    first_s = min(row[0] for row in rows)
    requests = [TraceRequest(arrival_s=t - first_s, input_tokens=i, output_tokens=o) for t, i, o in rows]
    requests.sort(key=lambda request: request.arrival_s)  # stable: file order among equal arrivals
    trace = Trace(format=fmt, path=path, requests=requests, skipped_lines=skipped)
    trace.meta.update(files=[str(path)], records=len(requests), columns=columns, span_s=trace.span_s())
    if fmt == "burstgpt":
        trace.meta["failed_rows_dropped"] = failed
    return trace
