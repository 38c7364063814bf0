"""Server-side tools of ``plait bench soak``: one that answers, one that sleeps, one that always raises.

The soak starts ``plait serve --tools plait.bench.soak_tools:TOOLS``; a server given with ``--target`` must have been
started with the same flag (the soak checks ``GET /v1/tools`` first). Names carry the ``soak_`` prefix so they never
collide with a server's own tools. They are plain functions (the server wraps each in a ``Tool`` with the default
timeout and no retries), so that importing this module imports no engine.
"""

from __future__ import annotations

import asyncio

TOOLS_SPEC = "plait.bench.soak_tools:TOOLS"  # what ``plait serve --tools`` is given


class SoakToolError(RuntimeError):
    """What ``soak_fail`` raises: the failure a workflow must report as its own (``failed``), never as a 5xx."""


async def soak_echo(text: str) -> str:
    """``text`` reversed: a quick tool between two LLM calls."""
    return text[::-1]


async def soak_sleep(seconds: float, text: str = "") -> str:
    """Sleeps ``seconds`` (at most 30), then returns ``text``: a tool that is still running when a cancel arrives."""
    await asyncio.sleep(min(max(seconds, 0.0), 30.0))
    return text


async def soak_fail(text: str) -> str:
    """Always raises ``SoakToolError``."""
    raise SoakToolError(f"soak_fail fails on purpose (input of {len(text)} characters)")


TOOLS = [soak_echo, soak_sleep, soak_fail]
TOOL_NAMES = tuple(tool.__name__ for tool in TOOLS)
