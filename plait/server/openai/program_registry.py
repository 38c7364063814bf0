"""The server's ``OpenAIPrograms`` (one per ``ServerState``) and the task that ends idle programs.

The registry is made on first use, over the executor's planner, with the server's ``program_idle_timeout_s``. A
sweep ends programs idle past that timeout every quarter of it (at most every 5 s), so an abandoned conversation
frees what it holds without any further request; the app's drain stops the sweep and ends every program.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from plait.server.openai.programs import OpenAIPrograms
from plait.server.state import ServerState

logger = logging.getLogger("plait.server")
_KEY = "openai_programs"
_SWEEP_KEY = "openai_programs_sweep"
_MAX_SWEEP_S = 5.0


def programs_of(state: ServerState) -> OpenAIPrograms:
    """The server's program registry (made, and its sweep started, on first use inside the event loop)."""
    programs = state.extras.get(_KEY)
    if programs is None:
        config = state.config
        programs = OpenAIPrograms(state.executor.planner, config.program_idle_timeout_s, config.retain_finished_s)
        state.extras[_KEY] = programs
        with contextlib.suppress(RuntimeError):  # no running loop (a synchronous caller): no sweep
            state.extras[_SWEEP_KEY] = asyncio.get_running_loop().create_task(_sweep(programs))
    return programs


async def _sweep(programs: OpenAIPrograms) -> None:
    interval = min(_MAX_SWEEP_S, programs.idle_timeout_s / 4)
    while True:
        await asyncio.sleep(interval)
        try:
            programs.expire_idle()
        except Exception:  # a bug here must not stop the sweep: idle programs would never end
            logger.exception("ending idle OpenAI-API programs failed")


def close_programs(state: ServerState) -> None:
    """Stop the sweep and end every program (at shutdown)."""
    sweep = state.extras.pop(_SWEEP_KEY, None)
    if sweep is not None:
        sweep.cancel()
    programs = state.extras.pop(_KEY, None)
    if programs is not None:
        programs.close_all()
