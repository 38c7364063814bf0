"""Variants of a gold SQL query for the text2sql suite's forced candidates: broken ones (SQLite refuses them) and
wrong ones (they run, with another result), each confirmed by running it on the question's database.

A broken variant misspells a column or a table the query names, or breaks the syntax; a wrong variant flips an
ordering, a comparison or a conjunction, or widens a ``LIMIT``. Edits are plain text substitutions on word
boundaries; whether a variant is broken or wrong is never assumed, only observed.
"""

from __future__ import annotations

import random
import re
import sqlite3
from collections.abc import Callable
from typing import Any

Rows = list[tuple[Any, ...]]
# (pattern, replacement) edits that keep a query valid but change what it asks for.
WRONG_EDITS = (
    (r"\bDESC\b", "ASC"),
    (r"\bASC\b", "DESC"),
    (r"\bLIMIT\s+1\b", "LIMIT 3"),
    (r"(?<![<>!])=(?!=)", "!="),
    (r"\bAND\b", "OR"),
    (r">", "<"),
    (r"<(?!=)", ">"),
    (r"\bDISTINCT\s+", ""),
)


def result_key(rows: Rows) -> list[str]:
    """A query result compared as a multiset of rows (order-insensitive, as execution accuracy is)."""
    return sorted(repr(row) for row in rows)


def _names_in(sql: str, names: list[str]) -> list[str]:
    return [n for n in names if n.isidentifier() and re.search(rf"\b{re.escape(n)}\b", sql, re.IGNORECASE)]


def broken_candidates(sql: str, tables: list[str], columns: list[str]) -> list[str]:
    """Texts that should fail: a misspelled column, a misspelled table, a syntax error (in that order)."""
    out = []
    used_columns, used_tables = _names_in(sql, columns), _names_in(sql, tables)
    if used_columns:
        name = used_columns[-1]
        out.append(re.sub(rf"\b{re.escape(name)}\b", f"{name}_nm", sql, count=1, flags=re.IGNORECASE))
    if used_tables:
        name = used_tables[0]
        out.append(re.sub(rf"\b{re.escape(name)}\b", f"{name}_tbl", sql, count=1, flags=re.IGNORECASE))
    out.append(re.sub(r"\bFROM\b", "FORM", sql, count=1, flags=re.IGNORECASE))
    out.append(sql.rstrip().rstrip(";") + " WHERE")  # incomplete input: always an error
    return out


def broken_variant(
    sql: str, tables: list[str], columns: list[str], run: Callable[[str], Rows], rng: random.Random
) -> tuple[str, str]:
    """A variant SQLite refuses, and SQLite's error message for it."""
    candidates = broken_candidates(sql, tables, columns)
    first = rng.randrange(len(candidates) - 1)
    # From a random kind on; the last candidate (incomplete input, which always fails) is tried last.
    for text in candidates[first:-1] + candidates[:first] + candidates[-1:]:
        try:
            run(text)
        except sqlite3.Error as exc:
            return text, str(exc)
    raise AssertionError(f"no broken variant of {sql!r} failed")  # the incomplete-input variant always fails


def wrong_variant(sql: str, gold: Rows, run: Callable[[str], Rows], rng: random.Random) -> tuple[str, Rows] | None:
    """A variant that runs and returns another result than ``gold`` (None when no edit does)."""
    edits = list(WRONG_EDITS)
    rng.shuffle(edits)
    for pattern, replacement in edits:
        text = re.sub(pattern, replacement, sql, count=1, flags=re.IGNORECASE)
        if text == sql:
            continue
        try:
            rows = run(text)
        except sqlite3.Error:
            continue
        if result_key(rows) != result_key(gold):
            return text, rows
    return None
