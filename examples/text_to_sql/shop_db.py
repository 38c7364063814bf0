"""The demo's database: ``shop.sql`` loaded into SQLite, and the ``run_sql`` tool that programs call."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import plait

SCHEMA_FILE = Path(__file__).with_name("shop.sql")


def connect() -> sqlite3.Connection:
    connection = sqlite3.connect(":memory:", check_same_thread=False)
    connection.executescript(SCHEMA_FILE.read_text(encoding="utf-8"))
    return connection


_DB = connect()


def schema_text() -> str:
    """``CREATE TABLE`` statements of every table, as the model sees them."""
    rows = _DB.execute("SELECT sql FROM sqlite_master WHERE type = 'table' ORDER BY name").fetchall()
    return "\n".join(sql for (sql,) in rows)


def table_names() -> list[str]:
    return [name for (name,) in _DB.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]


@plait.tool(timeout_s=5.0)
def run_sql(sql: str) -> dict:
    """Run one read-only SQL query; returns ``{"ok": true, "rows": [...]}`` or ``{"ok": false, "error": "..."}``."""
    if not sql.lstrip().upper().startswith("SELECT"):
        return {"ok": False, "error": "only SELECT queries are allowed"}
    try:
        cursor = _DB.execute(sql)
        rows = [list(row) for row in cursor.fetchmany(50)]
    except sqlite3.Error as error:
        return {"ok": False, "error": str(error)}
    return {"ok": True, "rows": rows}
