"""A live terminal view of a running program's graph: one row per node with its state, time and tokens. Where the
output is not a terminal (a pipe, a file, a log), the table is printed once, when the program ends."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from plait.runtime import ProgramExecution

_STATE_STYLE = {
    "pending": "dim",
    "running": "yellow",
    "done": "green",
    "failed": "bold red",
    "skipped": "red",
    "cancelled": "magenta",
}


def program_table(execution: ProgramExecution) -> Table:
    status = execution.status()
    title = escape(f"{status['name']} [{status['state']}] {status['elapsed_s']:.1f}s")  # text, not markup tags
    table = Table(title=title, title_justify="left")
    for column in ("node", "kind", "state", "time (s)", "tokens in/out", "note"):
        table.add_column(column, justify="right" if column in ("time (s)", "tokens in/out") else "left")
    for node in status["nodes"]:
        run_s = node["run_s"]
        tokens = f"{node['prompt_tokens']}/{node['completion_tokens']}" if node["kind"] == "llm" else ""
        note = node["error"] or (f"attempts {node['attempts']}" if node["attempts"] > 1 else "")
        state = node["state"]
        table.add_row(
            escape(node["node"]),
            node["kind"],
            f"[{_STATE_STYLE.get(state, '')}]{state}[/]",
            f"{run_s:.2f}" if run_s is not None else "",
            tokens,
            escape((note[:70] + "...") if len(note) > 73 else note),
        )
    return table


async def watch(execution: ProgramExecution, console: Console | None = None, refresh_s: float = 0.25) -> Any:
    """Show the program's table until it ends, then return ``execution.wait()``'s result (or raise its error)."""
    console = console or Console(stderr=True)
    if not console.is_terminal:  # no redraws: the final table, ended by a newline, once the program ends
        try:
            return await execution.wait()
        finally:
            console.print(program_table(execution))
    with Live(program_table(execution), console=console, refresh_per_second=8, transient=False) as live:
        waiter = asyncio.ensure_future(execution.wait())
        try:
            while not waiter.done():
                await asyncio.wait([waiter], timeout=refresh_s)
                live.update(program_table(execution))
        except asyncio.CancelledError:
            waiter.cancel()
            raise
        return waiter.result()
