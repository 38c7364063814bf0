"""A durable Python program run as its own process by ``test_durable_program.py``:
``python -m tests.durability.durable_script JOURNAL MARKS_DIR [--changed]``.

It runs ``pipeline`` with ``plait.Runtime(journal=JOURNAL)`` on the tiny dummy engine and prints one JSON line: the
result and the number of engine requests this process made (or the error). The ``slow`` tool writes
``MARKS_DIR/slow-started`` and then sleeps ``$SLOW_S`` seconds: where the test kills the first run.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import plait
from plait.engine import Engine, EngineConfig
from plait.sdk import NonDeterminismError
from tests.conftest import TINY

MARKS = Path(sys.argv[2])


@plait.tool
def mark(text: str, idempotency_key: str) -> str:
    with (MARKS / "mark.log").open("a") as file:
        file.write(idempotency_key + "\n")
    return text[:6]


@plait.tool
async def slow(text: str, idempotency_key: str) -> str:
    with (MARKS / "slow.log").open("a") as file:
        file.write(idempotency_key + "\n")
    (MARKS / "slow-started").touch()
    await asyncio.sleep(float(os.environ.get("SLOW_S", "0")))
    return text[:4]


@plait.program
async def pipeline(p: plait.Program, topic: str) -> dict[str, Any]:
    fact = p.gen("A fact about {{topic}}:", topic=topic, max_tokens=8, ignore_eos=True, name="fact")
    marked = p.tool(mark, text=fact, name="mark")
    more = p.gen("{{marked}} and more:", marked=marked, max_tokens=8, ignore_eos=True, name="more")
    slowed = p.tool(slow, text=more, name="slow")
    end = p.gen("{{slowed}} in the end:", slowed=slowed, max_tokens=8, ignore_eos=True, name="end")
    return {"fact": await fact, "more": await more, "end": await end}


@plait.program(name="pipeline")
async def pipeline_changed(p: plait.Program, topic: str) -> dict[str, Any]:
    fact = p.gen("A fact about {{topic}}:", topic=topic, max_tokens=8, ignore_eos=True, name="fact")
    more = p.gen("{{fact}} and much more:", fact=fact, max_tokens=8, ignore_eos=True, name="more")
    return {"fact": await fact, "more": await more}


async def main() -> dict[str, Any]:
    engine = Engine(EngineConfig(**TINY))
    requests = 0
    generate = engine.generate

    def counted(request: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal requests
        requests += 1
        return generate(request, *args, **kwargs)

    engine.generate = counted  # type: ignore[method-assign]
    program = pipeline_changed if "--changed" in sys.argv else pipeline
    try:
        async with plait.Runtime(engine, journal=sys.argv[1]) as runtime:
            result = await runtime.run(program, "rivers")
        return {"result": result, "requests": requests}
    except NonDeterminismError as error:
        return {"error": str(error), "requests": requests}
    finally:
        engine.close()


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main())), flush=True)
