"""A uvicorn server that drains before it stops.

uvicorn's own SIGTERM handling closes the listener first (new requests get "connection refused") and then waits,
without a bound, for open connections (an event stream stays open as long as its workflow runs) before the app's
shutdown, which is where the drain ran. ``DrainingServer`` reverses that: the first SIGTERM or SIGINT (or
``request_stop()``) runs ``drain(state)`` while the listener still answers (new work 503, ``/ready`` 503
``draining``), and only then lets uvicorn close the listener, with ``CLOSE_TIMEOUT_S`` for the connections left.
A second signal stops at once. The server also stops when the engine failed to load (``state.startup_error``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import uvicorn

from plait.server.app import drain
from plait.server.state import ServerState

logger = logging.getLogger("plait.server")
CLOSE_TIMEOUT_S = 3  # after the drain: the longest uvicorn waits for connections before it cancels them


def uvicorn_config(app: Any, **settings: Any) -> uvicorn.Config:
    """A ``uvicorn.Config`` for ``DrainingServer`` (the drain has ended the work; connections get a short bound)."""
    return uvicorn.Config(app, lifespan="on", timeout_graceful_shutdown=CLOSE_TIMEOUT_S, **settings)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: ServerState, report: Callable[[str], None] | None = None) -> None:
        """``report``: a line when the drain starts and when it ends (``plait serve`` prints them)."""
        super().__init__(config)
        self.state = state
        self.report = report or (lambda _: None)
        self._stop_requested = False
        self._drain: asyncio.Task[int] | None = None
        self._drain_started = 0.0

    def request_stop(self) -> None:
        """Drain, then stop (callable from any thread)."""
        self._stop_requested = True

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler: only flags here; on_tick (on the event loop) starts the drain. Signals are not re-raised
        # after a drained stop, so SIGTERM exits 0.
        if self._stop_requested:
            logger.warning("second signal: stopping without waiting for the drain")
            self.should_exit = self.force_exit = True
        self._stop_requested = True

    async def on_tick(self, counter: int) -> bool:
        if self.state.startup_error is not None:
            return True
        if self._stop_requested and self._drain is None:
            grace = self.state.config.shutdown_grace_s
            self.report(f"draining: new work answers 503; running work gets {grace:g} s to finish")
            self._drain_started = time.perf_counter()
            self._drain = asyncio.get_running_loop().create_task(drain(self.state))
        if self._drain is not None and self._drain.done():
            if self._drain.exception() is not None:
                logger.error("the drain failed", exc_info=self._drain.exception())
            else:
                took = time.perf_counter() - self._drain_started
                self.report(f"drained in {took:.1f} s ({self._drain.result()} program(s) cancelled)")
            return True
        return await super().on_tick(counter)
