"""Resuming journaled workflows as soon as ``plait serve`` has loaded its engine, without waiting for a request.

``plait serve`` listens first and loads the engine in the background (``app.py``); the workflows the journal holds
can only resume once the engine is attached. ``ResumeOnStart`` wraps the application: at start-up (the ASGI lifespan)
it starts a task that waits for the engine and then calls ``serving.resume_workflows``. The workflow routes also
resume on their first use (``serving.workflows_of``), so no request sees the registry before the resumption.
"""

from __future__ import annotations

import asyncio
from typing import Any

from plait.server.state import ServerState

POLL_S = 0.02  # how often the task looks whether the engine is attached (start-up only)


class ResumeOnStart:
    """An ASGI application: ``app``, plus the resumption of ``state``'s journaled workflows once its engine loads."""

    def __init__(self, app: Any, state: ServerState) -> None:
        self.app = app
        self.state = state
        self._task: asyncio.Task[None] | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan" and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._resume_when_loaded(), name="plait-resume")
        await self.app(scope, receive, send)

    async def _resume_when_loaded(self) -> None:
        state = self.state
        while not (state.loaded and state.ready):
            if state.startup_error is not None or state.draining:
                return
            await asyncio.sleep(POLL_S)
        from plait.server.workflows.serving import resume_workflows  # the runtime: imported once the engine is

        resume_workflows(state)
