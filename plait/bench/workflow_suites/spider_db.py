"""SQLite databases built from Spider schemas, and SQL run on them for real (the text2sql suite's tool).

Spider's dev set ships schemas (``tables.json``) but no ``.sqlite`` files, so each database is built here, in memory:
its tables with their columns, declared types, primary keys and foreign keys, and a few synthetic rows per table.

Rules:
- SQLite's internal tables that some schemas list (``sqlite_sequence``) are not created.
- Rows are deterministic for a (database, rows per table) pair. A primary key gets distinct values; a foreign-key
  column takes values of the column it references (tables are filled parents first), so joins match rows.
- Values follow the declared type: numbers are small integers, times are ISO dates, booleans 0/1, text is
  ``<column> <n>`` (so ``WHERE name = '...'`` literals of the questions rarely match: results are small, often
  empty, as on any database that is not the question's).
- ``run_query`` runs one statement that only reads: an authorizer admits reads, ``SELECT``, functions and recursive
  CTEs and denies everything else (writes, ``PRAGMA``, ``ATTACH``), and ``PRAGMA query_only`` stands behind it. Its
  work is bounded: a progress handler aborts past ``MAX_VM_STEPS`` and no string or blob may exceed
  ``MAX_VALUE_BYTES``. It returns the rows or raises ``sqlite3.Error`` with SQLite's own message, which is what an
  agent revising its query sees.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from typing import Any

MAX_VM_STEPS = 5_000_000  # SQLite virtual-machine steps one query may take (a cross join of small tables fits)
MAX_VALUE_BYTES = 1 << 20  # the longest string or blob a query may build
_READ_ACTIONS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}
_PROGRESS_PERIOD = 10_000
SQL_TYPES = {"number": "INTEGER", "text": "TEXT", "time": "TEXT", "boolean": "INTEGER", "others": "TEXT"}


@dataclass(frozen=True)
class ColumnSpec:
    table: int
    name: str
    kind: str  # Spider's type: number, text, time, boolean, others


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _value(column: ColumnSpec, row: int) -> Any:
    if column.kind in ("number", "boolean"):
        return row % 2 if column.kind == "boolean" else row + 1
    if column.kind == "time":
        return f"20{10 + row % 15:02d}-{1 + row % 12:02d}-{1 + row % 28:02d}"
    return f"{column.name} {row + 1}"


def create_database(entry: dict[str, Any], rows_per_table: int = 5) -> sqlite3.Connection:
    """A new in-memory database for one ``tables.json`` entry, filled with ``rows_per_table`` rows per table.
    The connection may be used from any thread (calls are serialised by the caller, see ``SpiderDatabases``)."""
    tables: list[str] = entry["table_names_original"]
    columns = [
        ColumnSpec(t, name, kind)
        for (t, name), kind in zip(entry["column_names_original"], entry["column_types"], strict=True)
    ]
    primary = {k for k in entry["primary_keys"] if isinstance(k, int)}
    references = {child: parent for child, parent in entry["foreign_keys"]}
    by_table: list[list[int]] = [[] for _ in tables]
    for index, column in enumerate(columns):
        if column.table >= 0:
            by_table[column.table].append(index)
    db = sqlite3.connect(":memory:", check_same_thread=False)
    for t, name in enumerate(tables):
        if name.lower().startswith("sqlite_"):  # SQLite's own tables (sqlite_sequence) are listed by some schemas
            by_table[t] = []
            continue
        keys = [columns[i].name for i in by_table[t] if i in primary]
        parts = [f"{_quote(columns[i].name)} {SQL_TYPES.get(columns[i].kind, 'TEXT')}" for i in by_table[t]]
        if keys:
            parts.append("PRIMARY KEY (" + ", ".join(map(_quote, keys)) + ")")
        for child in (i for i in by_table[t] if i in references):
            parent = columns[references[child]]
            parts.append(
                f"FOREIGN KEY ({_quote(columns[child].name)}) REFERENCES "
                f"{_quote(tables[parent.table])}({_quote(parent.name)})"
            )
        db.execute(f"CREATE TABLE {_quote(name)} ({', '.join(parts)})")
    values: dict[int, list[Any]] = {}
    for t in _parents_first(len(tables), columns, references):
        for i in by_table[t]:
            parent = references.get(i)
            if parent is not None and parent in values and i not in primary:
                column_values = [values[parent][row % len(values[parent])] for row in range(rows_per_table)]
            else:
                column_values = [_value(columns[i], row) for row in range(rows_per_table)]
            values[i] = column_values
        names = ", ".join(_quote(columns[i].name) for i in by_table[t])
        marks = ", ".join("?" for _ in by_table[t])
        rows = [tuple(values[i][row] for i in by_table[t]) for row in range(rows_per_table)]
        if by_table[t]:  # (SQLite's own tables have none left)
            db.executemany(f"INSERT INTO {_quote(tables[t])} ({names}) VALUES ({marks})", rows)
    db.commit()
    db.execute("PRAGMA query_only = ON")
    db.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
    db.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)
    db.set_authorizer(_reads_only)
    return db


def _reads_only(action: int, *_: object) -> int:
    return sqlite3.SQLITE_OK if action in _READ_ACTIONS else sqlite3.SQLITE_DENY


def _parents_first(num_tables: int, columns: list[ColumnSpec], references: dict[int, int]) -> list[int]:
    """Table indices with every referenced table before the tables that reference it (cycles: file order)."""
    parents = {t: set() for t in range(num_tables)}
    for child, parent in references.items():
        if columns[child].table != columns[parent].table:
            parents[columns[child].table].add(columns[parent].table)
    order: list[int] = []
    while len(order) < num_tables:
        ready = [t for t in range(num_tables) if t not in order and parents[t] <= set(order)]
        order.append(ready[0] if ready else next(t for t in range(num_tables) if t not in order))
    return order


def run_query(db: sqlite3.Connection, sql: str) -> list[tuple[Any, ...]]:
    """The rows of one read-only statement (``sqlite3.Error`` with SQLite's message otherwise)."""
    steps = 0

    def abort_when_too_long() -> int:
        nonlocal steps
        steps += _PROGRESS_PERIOD
        return int(steps > MAX_VM_STEPS)

    db.set_progress_handler(abort_when_too_long, _PROGRESS_PERIOD)
    try:
        return db.execute(sql).fetchall()
    except sqlite3.Warning as exc:  # e.g. more than one statement
        raise sqlite3.ProgrammingError(str(exc)) from exc
    finally:
        db.set_progress_handler(None, 0)


def format_result(rows: list[tuple[Any, ...]], max_rows: int = 5) -> str:
    """Rows as the model sees them: the row count, then the first ``max_rows`` rows."""
    shown = "; ".join(", ".join(map(str, row)) for row in rows[:max_rows])
    more = f" (first {max_rows})" if len(rows) > max_rows else ""
    return f"{len(rows)} rows{more}: {shown}" if rows else "0 rows"


class SpiderDatabases:
    """The databases of one suite build, created on first use, one lock each (a connection runs one query at a
    time; queries of different databases run in parallel)."""

    def __init__(self, entries: dict[str, dict[str, Any]], rows_per_table: int = 5) -> None:
        self._entries = entries
        self._rows = rows_per_table
        self._databases: dict[str, tuple[sqlite3.Connection, threading.Lock]] = {}
        self._lock = threading.Lock()

    def _database(self, db_id: str) -> tuple[sqlite3.Connection, threading.Lock]:
        with self._lock:
            if db_id not in self._databases:
                if db_id not in self._entries:
                    raise KeyError(f"unknown Spider database {db_id!r}")
                self._databases[db_id] = (create_database(self._entries[db_id], self._rows), threading.Lock())
            return self._databases[db_id]

    def query(self, db_id: str, sql: str) -> list[tuple[Any, ...]]:
        db, lock = self._database(db_id)
        with lock:
            return run_query(db, sql)

    def close(self) -> None:
        with self._lock:
            for db, _ in self._databases.values():
                db.close()
            self._databases.clear()
