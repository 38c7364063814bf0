"""Run the text-to-SQL demo on the default model, showing the program's graph as it runs, then the answers."""

from __future__ import annotations

import argparse
import asyncio

from rich.console import Console

import plait
from plait.cli.program_view import watch

from .program import text_to_sql

QUESTIONS = [
    "Which customers live in Paris?",
    "Which products cost more than 20?",
]


async def main(questions: list[str]) -> None:
    console = Console()
    async with plait.Runtime() as runtime:
        for question in questions:
            console.rule(f"[bold]{question}")
            execution = runtime.submit(text_to_sql, question)
            answer = await watch(execution, console)
            console.print(f"[bold]SQL:[/] {answer['sql']}")
            console.print(
                f"[bold]Rows:[/] {answer['rows']}  ({answer['votes']} of {answer['candidates']} candidates agree)"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="plait demo: text-to-SQL over a small SQLite shop database")
    parser.add_argument("questions", nargs="*", help="questions to answer (default: two built-in ones)")
    asyncio.run(main(parser.parse_args().questions or QUESTIONS))
