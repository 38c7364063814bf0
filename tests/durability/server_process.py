"""``plait serve`` as a subprocess that a crash test can kill: on the default model (float32, so that outputs do not
depend on batching), on 127.0.0.1 with a free port, in its own data directory, with the crash tools and optionally a
crash point (``PLAIT_CRASH_POINT``). Loopback only."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from tests.durability.crash_tools import EFFECTS_DIR_ENV
from tests.served_process import DEFAULT_MODEL_ARGS, REPO_ROOT

TOOLS = "tests/durability/crash_tools.py:TOOLS"
START_TIMEOUT_S = 120.0


class ServerProcess:
    """One run of ``plait serve``: ``start()`` returns once it is ready (or has died), ``kill()`` is ``kill -9``."""

    def __init__(self, data_dir: Path, effects_dir: Path, *, crash_point: str | None = None, log: list[str]) -> None:
        command = [sys.executable, "-m", "plait", "serve", "--host", "127.0.0.1", "--port", "0"]
        command += ["--log-level", "warning", "--data-dir", str(data_dir), "--tools", TOOLS, *DEFAULT_MODEL_ARGS]
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), EFFECTS_DIR_ENV: str(effects_dir)}
        env.pop("PLAIT_CRASH_POINT", None)
        if crash_point is not None:
            env["PLAIT_CRASH_POINT"] = crash_point
        self.command = command
        self.env = env
        self.log = log
        self.url = ""
        self.process: subprocess.Popen[str] | None = None
        self._found = threading.Event()

    def start(self) -> bool:
        """Start and wait until ``/ready``; False when the process died first (a crash point reached early)."""
        self.process = subprocess.Popen(
            self.command, stderr=subprocess.PIPE, text=True, env=self.env, cwd=REPO_ROOT, start_new_session=True
        )
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._found.wait(0.05):
            if self.process.poll() is not None:
                return False
            assert time.monotonic() < deadline, "plait serve did not start:\n" + "".join(self.log[-40:])
        while True:
            if self.process.poll() is not None:
                return False
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/ready", timeout=10).status_code == 200:
                    return True
            assert time.monotonic() < deadline, "plait serve did not get ready:\n" + "".join(self.log[-40:])
            time.sleep(0.05)

    def _read(self) -> None:  # drains stderr for the whole run (a full pipe would block the server)
        assert self.process is not None and self.process.stderr is not None
        for line in self.process.stderr:
            self.log.append(line)
            match = re.search(r"running on (http://127\.0\.0\.1:\d+)", line)
            if match and not self.url:
                self.url = match.group(1)
                self._found.set()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: nothing in the process runs after it."""
        if self.alive:
            assert self.process is not None
            self.process.send_signal(signal.SIGKILL)
        self.wait(10.0)

    def wait(self, timeout_s: float) -> int | None:
        """The exit code once the process ended within ``timeout_s``; None when it still runs."""
        assert self.process is not None
        with contextlib.suppress(subprocess.TimeoutExpired):
            return self.process.wait(timeout=timeout_s)
        return None

    def stop(self) -> int | None:
        """SIGTERM (the drain), then the exit code."""
        if self.alive:
            assert self.process is not None
            self.process.send_signal(signal.SIGTERM)
        code = self.wait(60.0)
        if code is None:
            self.kill()
        return code
