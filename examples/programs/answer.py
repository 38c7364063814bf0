"""Text to SQL in a few calls: python -m examples.programs.answer (the default model; a minute or less on a CPU)."""

import asyncio
import sqlite3

import plait

SCHEMA = "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT, city TEXT);"
EXAMPLE = "-- Question: Who lives in Oslo?\nSELECT name FROM customers WHERE city = 'Oslo';\n"
DB = sqlite3.connect(":memory:", check_same_thread=False)
DB.executescript(SCHEMA + "INSERT INTO customers (name, city) VALUES ('Ana', 'Paris'), ('Ben', 'Rome');")


@plait.tool(timeout_s=5, retries=1)
def run_sql(sql: str) -> dict:  # arguments and result are checked against the type hints
    try:
        return {"ok": True, "rows": DB.execute(sql).fetchall()}
    except sqlite3.Error as error:
        return {"ok": False, "error": str(error)}


@plait.program
async def answer(p: plait.Program, question: str):
    tables = p.gen(
        "Schema: {{schema}}\nQuestion: {{question}}\nTables:",
        schema=SCHEMA,
        question=question,
        json_schema={"type": "array", "items": {"enum": ["customers"]}},
        max_tokens=16,
    )
    sqls = [
        p.gen(
            "{{schema}}\n{{example}}-- Tables: {{tables}}\n-- Question: {{question}}\n",
            schema=SCHEMA,
            example=EXAMPLE,
            tables=tables,
            question=question,
            regex=r"SELECT [A-Za-z0-9_*(),.'= ]{1,60};",
            temperature=0.8,
            seed=i,
            max_tokens=32,
        )
        for i in range(4)
    ]  # 4 parallel calls
    results = [p.tool(run_sql, sql=sql) for sql in sqls]  # each runs when its sql is bound
    for sql, result in zip(sqls, results, strict=True):
        if (await result)["ok"]:  # Python control flow on a generated value
            verdict = p.select(
                "Is {{rows}} a good answer to {{question}}?", rows=result, question=question, choices=["yes", "no"]
            )  # or mode="score": ranked by log-probability
            return {"sql": sql, "result": result, "verdict": verdict}  # variables are resolved when returned
    return {"sql": None, "errors": results}


async def main() -> None:
    async with plait.Runtime() as rt:  # the default model; or Runtime(EngineConfig(...))
        print(await rt.run(answer, "Which customers live in Paris?"))
        questions = ["How many customers are there?", "Who lives in Rome?"]
        for result in await rt.run_batch(answer, [{"question": q} for q in questions]):
            print(result)


if __name__ == "__main__":
    asyncio.run(main())
