"""A text-to-SQL program: schema linking, parallel SQL candidates, execution, revision on error, and a vote.

link tables ─┬─ candidate 1 ── run_sql ── (error? revise, up to 2 times) ──┐
             ├─ candidate 2 ── run_sql ── ...                              ├─ vote on results ─ answer
             ├─ candidate 3 ── run_sql ── ...                              │
             └─ candidate 4 ── run_sql ── ...                              ┘
"""

from __future__ import annotations

import json
from collections import Counter

import plait

from .shop_db import run_sql, schema_text, table_names

CANDIDATES = 4
MAX_REVISIONS = 2
# One SELECT statement on one line, ending with ';' (enforced by grammar-constrained decoding).
SQL_REGEX = r"SELECT [A-Za-z0-9_*(),.'=<> ]{1,160};"
EXAMPLES = (
    "-- Question: How many products are there?\nSELECT COUNT(*) FROM products;\n"
    "-- Question: Which customers live in Berlin?\nSELECT name FROM customers WHERE city = 'Berlin';\n"
)


def sql_prompt(schema: str) -> str:
    """The candidates' prompt: the schema and examples first (a prefix every candidate shares), then the slots."""
    return f"{schema}\n{EXAMPLES}-- Tables to use: {{{{tables}}}}\n-- Question: {{{{question}}}}\n"


@plait.program
async def text_to_sql(p: plait.Program, question: str) -> dict:
    schema = schema_text()
    tables = p.gen(
        "Database schema:\n{{schema}}\n\nQuestion: {{question}}\nWhich tables answer the question?\nTables:",
        schema=schema,
        question=question,
        json_schema={"type": "array", "items": {"enum": table_names()}, "minItems": 1},
        max_tokens=32,
        name="link_tables",
    )
    attempts = []
    for index in range(CANDIDATES):
        sql = p.gen(
            sql_prompt(schema),
            tables=tables,
            question=question,
            regex=SQL_REGEX,
            temperature=0.0 if index == 0 else 0.8,
            seed=index,
            max_tokens=64,
            name=f"candidate_{index + 1}",
        )
        attempts.append((sql, p.tool(run_sql, sql=sql, name=f"run_{index + 1}")))
    finals = []
    for index, (sql, result) in enumerate(attempts):
        for revision in range(MAX_REVISIONS):
            if (await result)["ok"]:  # awaiting a variable: Python control flow on a generated value
                break
            sql = p.gen(
                f"{schema}\n{EXAMPLES}"
                "-- Question: {{question}}\n-- This query failed: {{sql}}\n-- Error: {{error}}\n-- Corrected query:\n",
                question=question,
                sql=sql,
                error=(await result)["error"],
                regex=SQL_REGEX,
                temperature=0.8,
                seed=100 + 10 * index + revision,
                max_tokens=64,
                name=f"revise_{index + 1}",
            )
            result = p.tool(run_sql, sql=sql, name=f"rerun_{index + 1}")
        finals.append((await sql, await result))
    return vote(question, finals)


def vote(question: str, finals: list[tuple[str, dict]]) -> dict:
    """Majority vote over the candidates' results (queries that failed do not vote)."""
    ok = [(sql, result) for sql, result in finals if result["ok"]]
    if not ok:
        return {"question": question, "sql": None, "rows": None, "votes": 0, "candidates": len(finals)}
    counts = Counter(json.dumps(result["rows"]) for _, result in ok)
    rows_key, votes = counts.most_common(1)[0]
    sql = next(sql for sql, result in ok if json.dumps(result["rows"]) == rows_key)
    return {"question": question, "sql": sql, "rows": json.loads(rows_key), "votes": votes, "candidates": len(finals)}
