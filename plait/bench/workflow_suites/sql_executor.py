"""The text2sql suite's ``execute_sql`` tool on real SQLite databases, and the check that every program ran its
queries and saw what its plan says each query gives.

The suite decides, when it builds a program, which text each SQL call is forced to and so what executing it gives:
SQLite's error message for a broken variant, the rows of a valid one. The tool runs the text the call produced (read
from the program's variables, so a call that produced anything else shows here) and logs the outcome; ``check``
compares the log with the plan.
"""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import dataclass, field
from typing import Any

from plait.bench.workflow_suites.spider_db import SpiderDatabases, format_result
from plait.bench.workflow_suites.sql_variants import result_key
from plait.bench.workflow_suites.suite import CheckReport
from plait.runtime import Tool

TOOL_NAME = "execute_sql"


@dataclass(frozen=True)
class PlannedQuery:
    """One execute_sql call as built: the text, and SQLite's error for it or the key of its result."""

    sql: str
    error: str | None
    result: list[str] | None


@dataclass
class SqlProgram:
    db_id: str
    plan: dict[str, PlannedQuery]  # call key ("k/r": candidate k, round r) -> what it runs and gives
    voted_correct: bool  # the vote picks a candidate whose result is the gold query's
    observed: dict[str, tuple[str, str | None, list[str] | None]] = field(default_factory=dict)


def outcome_text(error: str | None, rows: list[tuple[Any, ...]] | None) -> str:
    """What the model reads back from a query."""
    return f"Error: {error}" if error is not None else format_result(rows or [])


class SqlWorld:
    """The databases and programs of one suite build."""

    def __init__(self, databases: SpiderDatabases) -> None:
        self.databases = databases
        self.programs: dict[str, SqlProgram] = {}

    def run(self, db_id: str, sql: str) -> tuple[str | None, list[tuple[Any, ...]] | None]:
        """(SQLite's error, None) or (None, rows) of ``sql`` on ``db_id``."""
        try:
            return None, self.databases.query(db_id, sql)
        except sqlite3.Error as exc:
            return str(exc), None

    async def execute_sql(self, program: str, call: str, sql: str, seconds: float = 0.0, result_words: int = 0) -> str:
        """The tool: wait ``seconds`` (the database's latency), run ``sql`` on the program's database, return the
        rows or SQLite's error. ``call`` names the call in the program's plan; ``result_words`` is the suite's size
        estimate of the result, read only by its estimates."""
        entry = self.programs.get(program)
        if entry is None:
            raise ValueError(f"unknown text2sql program {program!r}")
        await asyncio.sleep(max(0.0, float(seconds)))
        # Off the event loop: a query is bounded, not free, and other programs' calls go on meanwhile.
        error, rows = await asyncio.to_thread(self.run, entry.db_id, sql)
        entry.observed[call] = (sql, error, None if rows is None else result_key(rows))
        return outcome_text(error, rows)

    def tool(self) -> Tool:
        return Tool(
            self.execute_sql,
            name=TOOL_NAME,
            description="Runs one read-only SQL query on the program's Spider database (built in SQLite).",
            timeout_s=None,
        )

    def check(self) -> dict[str, Any]:
        """Per program: every planned query ran, as the exact planned text, with the planned outcome."""
        passed, incomplete, failures, correct = 0, [], [], 0
        for name, program in self.programs.items():
            if set(program.observed) != set(program.plan):
                incomplete.append(name)
                continue
            wrong = [
                call
                for call, planned in program.plan.items()
                if program.observed[call] != (planned.sql, planned.error, planned.result)
            ]
            if wrong:
                failures.append({"program": name, "call": wrong[0], "error": "ran another query or got another result"})
            else:
                passed += 1
                correct += program.voted_correct
        accuracy = round(correct / passed, 3) if passed else None
        return CheckReport(len(self.programs), passed, incomplete, failures, {"execution_accuracy": accuracy}).to_dict()
