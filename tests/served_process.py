"""``plait serve`` as a subprocess of a test: started on 127.0.0.1 (a free port) with an API key in a temporary working
directory, ready when ``/ready`` says so, its stderr collected, stopped with SIGINT (its drain) afterwards; the test
fails when it did not exit 0."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_ARGS = ("--model", "tiny", "--weights", "dummy", "--device", "cpu", "--dtype", "float32")
DEFAULT_MODEL_ARGS = ("--model", "default", "--device", "cpu", "--dtype", "float32")  # SmolLM2-135M-Instruct


@dataclass
class Served:
    url: str
    log: list[str] = field(default_factory=list)  # stderr lines so far


@contextmanager
def serve(*flags: str, api_key: str, model_args: Sequence[str] = TINY_ARGS) -> Iterator[Served]:
    """``plait serve`` on ``model_args`` (the tiny shape by default) on 127.0.0.1 with ``flags``, accepting
    ``api_key``; ready; stopped (SIGINT) afterwards."""
    command = [sys.executable, "-m", "plait", "serve", "--host", "127.0.0.1", "--port", "0"]
    command += ["--api-keys", f"{api_key}=t", "--log-level", "warning", *model_args, *flags]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    # Its own working directory: what the server writes there by default (its journal, plait-data/) is its own.
    workdir = tempfile.TemporaryDirectory(prefix="plait-serve-")
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env, cwd=workdir.name)
    served = Served(url="")
    found = threading.Event()

    def read() -> None:  # drains stderr for the whole run (a full pipe would block the server)
        assert process.stderr is not None
        for line in process.stderr:
            served.log.append(line)
            match = re.search(r"running on (http://127\.0\.0\.1:\d+)", line)
            if match and not served.url:
                served.url = match.group(1)
                found.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert found.wait(60), "plait serve did not start:\n" + "".join(served.log)
        deadline = time.monotonic() + 120
        while _ready_status(served, process) != 200:
            assert process.poll() is None and time.monotonic() < deadline, "".join(served.log)
            time.sleep(0.05)
        yield served
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
        reader.join(timeout=5)
        workdir.cleanup()
    assert process.returncode == 0, "".join(served.log)


def _ready_status(served: Served, process: subprocess.Popen[str]) -> int:
    """``GET /ready``'s status. The server listens before it prints its URL, so a refused connection means it
    exited: that fails with its exit code and log."""
    try:
        return httpx.get(f"{served.url}/ready", timeout=30).status_code
    except httpx.TransportError as error:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)
        log = "".join(served.log)
        raise AssertionError(f"plait serve does not answer ({error}); exit code {process.poll()}:\n{log}") from error
