"""Spider 1.0 dev questions and database schemas (``text2sql/spider_dev`` in the shared data folder).

``dev.json``: a list of ``{"db_id", "question", "query", ...}``. ``tables.json``: one entry per database with
``table_names_original``, ``column_names_original`` (``[table index, name]``, index -1 is ``*``), ``column_types``,
``primary_keys`` (column indices) and ``foreign_keys`` (``[column, referenced column]`` pairs). Prompts use the
original names, the ones SQL queries are written with.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from plait.bench.workflow_suites.suite import SuiteDataMissing

SPIDER_DIR = Path("text2sql") / "spider_dev"


@dataclass(frozen=True)
class SpiderQuestion:
    db_id: str
    question: str
    gold_sql: str


@dataclass(frozen=True)
class SpiderSchema:
    db_id: str
    tables: tuple[str, ...]
    text: str  # the schema as prompt text: one block per table, then the foreign keys


def _read_json(path: Path) -> object:
    if not path.is_file():
        raise SuiteDataMissing(
            f"{path} not found: the Spider 1.0 dev set (questions, gold SQL and schemas of 200 databases, "
            "github.com/taoyds/spider, CC BY-SA 4.0) used by the text2sql suite"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def load_questions(data_dir: Path) -> list[SpiderQuestion]:
    """The dev questions in file order."""
    rows = _read_json(data_dir / SPIDER_DIR / "dev.json")
    return [SpiderQuestion(row["db_id"], row["question"], row["query"]) for row in rows]  # type: ignore[union-attr]


def load_table_entries(data_dir: Path) -> dict[str, dict]:
    """Every database's ``tables.json`` entry, by ``db_id`` (what ``spider_db`` builds a database from)."""
    entries = _read_json(data_dir / SPIDER_DIR / "tables.json")
    return {entry["db_id"]: entry for entry in entries}  # type: ignore[union-attr]


def load_schemas(data_dir: Path) -> dict[str, SpiderSchema]:
    """Every database's schema, by ``db_id``."""
    return {db_id: _schema(entry) for db_id, entry in load_table_entries(data_dir).items()}


def _schema(entry: dict) -> SpiderSchema:
    tables = entry["table_names_original"]
    columns = entry["column_names_original"]
    types = entry["column_types"]
    primary = set(entry["primary_keys"]) if all(isinstance(k, int) for k in entry["primary_keys"]) else set()
    by_table: list[list[str]] = [[] for _ in tables]
    for index, (table, column) in enumerate(columns):
        if table < 0:  # the ``*`` pseudo-column
            continue
        key = " primary key" if index in primary else ""
        by_table[table].append(f"  {column} {types[index]}{key}")
    blocks = [f"Table {name} (\n" + ",\n".join(cols) + "\n)" for name, cols in zip(tables, by_table, strict=True)]
    links = [
        f"{tables[columns[a][0]]}.{columns[a][1]} = {tables[columns[b][0]]}.{columns[b][1]}"
        for a, b in entry["foreign_keys"]
    ]
    text = "\n".join(blocks)
    if links:
        text += "\nForeign keys: " + "; ".join(links)
    return SpiderSchema(entry["db_id"], tuple(tables), text)
