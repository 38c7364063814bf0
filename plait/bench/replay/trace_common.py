"""Helpers shared by the trace loaders: per-line validation and the malformed-line policy (raise, or skip and count).

A loader parses one line (or CSV row) at a time; the parsing function raises :class:`MalformedRecord` with a message
``"<what is wrong>; <what was expected>"`` and :class:`LineErrors` turns that into a :class:`TraceFormatError` naming
the file and line, or (with ``skip_malformed``) counts the line and moves on.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plait.bench.replay.records import TraceFormatError


class MalformedRecord(ValueError):
    """One line or row that cannot be used; the message says what is wrong and what was expected."""


@dataclass
class LineErrors:
    """The malformed-line policy of one load: raise at the first bad line, or count bad lines and go on."""

    skip_malformed: bool
    skipped: int = 0

    def reject(self, path: Path, line_no: int, error: MalformedRecord) -> None:
        """Handle one malformed line: count it when skipping, else raise a :class:`TraceFormatError`."""
        if self.skip_malformed:
            self.skipped += 1
            return
        raise TraceFormatError(
            f"{path}:{line_no}: {error} (pass skip_malformed / --skip-malformed to leave such lines out)"
        )


def parse_json_object(line: str) -> dict[str, Any]:
    """Parse one JSONL line that must hold a JSON object."""
    try:
        value = json.loads(line)
    except json.JSONDecodeError as error:
        raise MalformedRecord(
            f"not valid JSON ({error.msg} at column {error.colno}); expected one JSON object"
        ) from None
    if not isinstance(value, dict):
        raise MalformedRecord(f"a JSON {type(value).__name__}, not an object; expected one JSON object a line")
    return value


def require_keys(obj: dict[str, Any], keys: tuple[str, ...]) -> None:
    """Raise when ``obj`` lacks any of ``keys``, naming the missing ones and the expected set."""
    missing = [key for key in keys if key not in obj]
    if missing:
        raise MalformedRecord(f"missing field(s) {', '.join(missing)}; expected fields {', '.join(keys)}")


def non_negative_int(value: Any, name: str) -> int:
    """A JSON value that must be an integer >= 0 (``true``/``false`` are not integers here)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedRecord(f"{name} is {value!r}; expected an integer >= 0")
    if value < 0:
        raise MalformedRecord(f"{name} is {value}; expected an integer >= 0")
    return value


def non_negative_number(value: Any, name: str) -> float:
    """A JSON value that must be a finite number >= 0 (int or float)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MalformedRecord(f"{name} is {value!r}; expected a number >= 0")
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise MalformedRecord(f"{name} is {value}; expected a finite number >= 0")
    return number


def int_cell(text: str, name: str) -> int:
    """A CSV cell that must hold an integer >= 0; ``"12.0"`` is accepted as 12 (some exports write floats)."""
    stripped = text.strip()
    try:
        value = int(stripped)
    except ValueError:
        try:
            number = float(stripped)
        except ValueError:
            raise MalformedRecord(f"{name} is {text!r}; expected an integer >= 0") from None
        if not number.is_integer():
            raise MalformedRecord(f"{name} is {text!r}; expected an integer >= 0") from None
        value = int(number)
    if value < 0:
        raise MalformedRecord(f"{name} is {value}; expected an integer >= 0")
    return value


def number_cell(text: str, name: str) -> float:
    """A CSV cell that must hold a finite number >= 0."""
    try:
        number = float(text.strip())
    except ValueError:
        raise MalformedRecord(f"{name} is {text!r}; expected a number of seconds >= 0") from None
    if not math.isfinite(number) or number < 0:
        raise MalformedRecord(f"{name} is {text!r}; expected a finite number of seconds >= 0")
    return number


def no_records_error(path: Path, fmt: str, skipped: int, failed_dropped: int = 0) -> TraceFormatError:
    """The error for a trace that yielded nothing to replay; says whether malformed or failed rows were the cause."""
    if skipped or failed_dropped:
        reasons = []
        if skipped:
            reasons.append(f"{skipped} malformed line(s) skipped")
        if failed_dropped:
            reasons.append(f"{failed_dropped} failed request row(s) (0 response tokens) dropped")
        reason = "every record was left out: " + ", ".join(reasons)
    else:
        reason = "it holds no records (empty, or only blank lines / a header)"
    return TraceFormatError(f"{path}: no usable {fmt} records: {reason}; check the file and --format {fmt}")
