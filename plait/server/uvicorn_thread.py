"""Runs a FastAPI app under uvicorn in a daemon thread of this process (tests and ``plait bench serve-load``)."""

from __future__ import annotations

import threading
import time
from typing import Any

SERVER_START_TIMEOUT_S = 120.0


class UvicornThread:
    """Runs ``app`` (a plait app: ``app.state.plait`` is its ``ServerState``) under uvicorn in a daemon thread;
    ``start()`` returns once it listens, ``stop()`` drains it."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, backlog: int = 2048) -> None:
        from plait.server.draining_server import DrainingServer, uvicorn_config

        config = uvicorn_config(app, host=host, port=port, log_level="warning", timeout_keep_alive=30, backlog=backlog)
        self.server = DrainingServer(config, app.state.plait)
        self.thread = threading.Thread(target=self.server.run, name="plait-uvicorn", daemon=True)
        self.host = host

    def start(self, timeout_s: float = SERVER_START_TIMEOUT_S) -> str:
        """Start serving; the base URL (``http://HOST:PORT``, the free port the OS picked when ``port`` was 0)."""
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("uvicorn exited before it started listening")
            if time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start within {timeout_s} s")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://{self.host}:{port}"

    def stop(self, timeout_s: float = 60.0) -> None:
        """Drain (see ``DrainingServer``), stop, and wait for the thread."""
        self.server.request_stop()
        self.thread.join(timeout_s)
