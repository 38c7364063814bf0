"""The text2sql suite's SQL runs for real: SQLite databases built from Spider's schemas, variants of the gold queries
that SQLite refuses or answers differently, and the check that programs ran exactly their planned queries. Needs
``../shared/data/text2sql/spider_dev`` (skipped with that reason otherwise)."""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
from pathlib import Path

import pytest

from plait.bench.workflow_suites import SuiteOptions, build_suite
from plait.bench.workflow_suites.spider_db import SpiderDatabases, create_database, format_result, run_query
from plait.bench.workflow_suites.sql_variants import broken_variant, result_key, wrong_variant

SPIDER = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "text2sql" / "spider_dev"
pytestmark = pytest.mark.skipif(not SPIDER.is_dir(), reason=f"{SPIDER} not found (Spider 1.0 dev, the shared data)")


@pytest.fixture(scope="module")
def spider():
    entries = {entry["db_id"]: entry for entry in json.loads((SPIDER / "tables.json").read_text())}
    questions = json.loads((SPIDER / "dev.json").read_text())
    return entries, questions


def test_every_gold_query_of_the_dev_set_runs_on_its_built_database(spider):
    entries, questions = spider
    databases = SpiderDatabases(entries)
    failures = []
    for question in questions:
        try:
            databases.query(question["db_id"], question["query"])
        except sqlite3.Error as exc:
            failures.append((question["db_id"], question["query"], str(exc)))
    databases.close()
    assert failures == []


def test_keys_are_distinct_and_foreign_keys_join(spider):
    entries, _ = spider
    db = create_database(entries["concert_singer"], rows_per_table=5)
    assert run_query(db, "SELECT count(DISTINCT Singer_ID), count(*) FROM singer") == [(5, 5)]
    joined = run_query(db, "SELECT count(*) FROM singer_in_concert JOIN singer USING (Singer_ID)")
    assert joined == [(5,)]  # every reference names an existing row
    assert format_result(run_query(db, "SELECT Name FROM singer ORDER BY Name"), max_rows=2).startswith(
        "5 rows (first 2)"
    )


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("DELETE FROM singer", "not authorized"),
        ("SELECT 1; SELECT 2", "one statement"),
        ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c", "interrupted"),
        ("SELECT nope FROM singer", "no such column"),
        ("PRAGMA query_only = OFF", "not authorized"),
        ("ATTACH DATABASE '/tmp/plait-spider-attack.db' AS x", "not authorized"),
        ("SELECT length(zeroblob(900000000))", "too big"),
    ],
)
def test_writes_several_statements_and_runaway_queries_are_refused(spider, sql, message):
    entries, _ = spider
    databases = SpiderDatabases(entries)
    with pytest.raises(sqlite3.Error, match=message):
        databases.query("concert_singer", sql)
    assert databases.query("concert_singer", "SELECT count(*) FROM singer") == [(5,)]  # nothing changed
    assert not Path("/tmp/plait-spider-attack.db").exists()


def test_broken_variants_fail_and_wrong_variants_answer_differently(spider):
    entries, questions = spider
    databases = SpiderDatabases(entries)
    rng = random.Random(0)
    wrong_found = 0
    for question in rng.sample(questions, 150):
        entry, gold_sql = entries[question["db_id"]], question["query"]
        run = lambda sql, db=question["db_id"]: databases.query(db, sql)  # noqa: E731
        tables = entry["table_names_original"]
        columns = [name for table, name in entry["column_names_original"] if table >= 0]
        text, error = broken_variant(gold_sql, tables, columns, run, rng)
        with pytest.raises(sqlite3.Error, match=error.split(":")[0]):
            run(text)
        gold = run(gold_sql)
        wrong = wrong_variant(gold_sql, gold, run, rng)
        if wrong is not None:
            wrong_found += 1
            assert result_key(run(wrong[0])) == result_key(wrong[1]) != result_key(gold)
    assert wrong_found > 50  # most questions have an edit that changes their result


def test_programs_are_checked_against_their_planned_queries(spider):
    suite = build_suite("text2sql", SuiteOptions(programs=3))
    tool = suite.tools[0]
    first, second = (p.workflow for p in suite.programs[:2])

    async def run_program(workflow, tamper: bool = False):
        """Run the program's execute_sql calls as the engine would, each with its SQL call's forced text."""
        for node in workflow.tool_calls():
            producer = workflow.nodes[workflow.variables["sql_" + node.id.removeprefix("exec_")].producer]
            sql = producer.constraints.choices[0]
            if tamper:
                sql = sql.replace("SELECT", "SELECT DISTINCT", 1)
            await tool.fn(**{**node.args, "sql": sql, "seconds": 0.0})

    asyncio.run(run_program(first))
    asyncio.run(run_program(second, tamper=True))
    check = suite.check()
    assert (check["programs"], check["passed"], check["incomplete"]) == (3, 1, 1)
    assert check["failed"] == 1 and check["failures"][0]["program"] == second.name
    assert 0.0 <= check["execution_accuracy"] <= 1.0


def test_both_modes_run_the_planned_queries_end_to_end():
    """On the engine (tiny shape): two programs per mode; every candidate, revision and vote runs as planned."""
    from tests.bench.suite_runs import run_both_modes

    for result in run_both_modes(lambda: build_suite("text2sql", SuiteOptions(programs=2, arrival_rate=0))):
        assert result.metrics()["completed"] == 2, result.first_error
        assert (result.check["passed"], result.check["failed"], result.check["incomplete"]) == (2, 0, 0)
