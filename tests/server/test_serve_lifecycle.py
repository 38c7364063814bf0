"""``plait serve`` as a process: it listens before the model is loaded (``/health`` 200, ``/ready`` and the API 503
``starting``), says what it loads, exits non-zero when loading fails, and drains on SIGTERM (new work 503 while
running work gets ``shutdown_grace_s``, then open streams end with a final event and the process exits)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY_FLAGS = ["--model", "tiny", "--weights", "dummy", "--device", "cpu", "--dtype", "float32"]
TOOL_IMPORT_S = 5.0  # the slow tool module's import: the server must answer meanwhile


class ServeProcess:
    """A ``plait serve`` subprocess on 127.0.0.1 with its stderr collected by a thread."""

    def __init__(self, args: list[str], cwd: Path, port: int = 0) -> None:
        command = [sys.executable, "-m", "plait", "serve", "--host", "127.0.0.1", "--port", str(port), *args]
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def url(self, timeout_s: float = 120.0) -> str:
        """The base URL, from the first "running on http://..." line."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = re.search(r"running on (http://[\d.]+:\d+)", self.stderr)
            if found:
                return found.group(1)
            if self.process.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(f"plait serve printed no URL:\n{self.stderr}")

    def wait_ready(self, url: str, timeout_s: float = 240.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.process.poll() is None:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/ready", timeout=10).status_code == 200:
                    return
            time.sleep(0.1)
        raise AssertionError(f"plait serve did not become ready:\n{self.stderr}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._reader.join(timeout=10)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator:
    started: list[ServeProcess] = []

    def start(*args: str, port: int = 0) -> ServeProcess:
        started.append(ServeProcess(list(args), tmp_path, port))
        return started[-1]

    yield start
    for process in started:
        process.stop()


def _slow_tools(tmp_path: Path, *, fail: bool = False) -> Path:
    path = tmp_path / "slow_tools.py"
    reverse = "def reverse(text: str) -> str:\n    return text[::-1]\n"
    body = "raise ImportError('no such backend')\n" if fail else reverse
    path.write_text(f"import time\n\ntime.sleep({TOOL_IMPORT_S})\n\n{body}")
    return path


def test_serve_answers_while_loading_then_becomes_ready(tmp_path: Path, serve) -> None:
    tools = _slow_tools(tmp_path)
    server = serve("--tools", f"{tools}:reverse", "--api-keys", "k1=team", *TINY_FLAGS)
    url = server.url()
    headers = {"Authorization": "Bearer k1"}
    body = {"workflow": {"inputs": {"w": "abc"}, "nodes": [_reverse("r", "w", "out")]}}

    assert httpx.get(f"{url}/health", timeout=30).status_code == 200
    ready = httpx.get(f"{url}/ready", timeout=30)
    assert (ready.status_code, ready.json()) == (503, {"status": "starting"}), server.stderr
    assert int(ready.headers["retry-after"]) >= 1
    refused = httpx.post(f"{url}/v1/workflows", json=body, headers=headers, timeout=30)
    assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
    assert "starting" in refused.json()["error"]["message"]
    assert httpx.get(f"{url}/v1/models", headers=headers, timeout=30).status_code == 503
    assert httpx.get(f"{url}/metrics", timeout=30).status_code == 200
    assert "/health" in httpx.get(f"{url}/openapi.json", timeout=30).json()["paths"]

    server.wait_ready(url)
    assert "/v1/workflows" in httpx.get(f"{url}/openapi.json", timeout=30).json()["paths"]  # the API, once loaded
    created = httpx.post(f"{url}/v1/workflows", json=body, headers=headers, timeout=30)
    assert created.status_code == 201, created.text
    status = _wait_done(f"{url}/v1/workflows/{created.json()['id']}", headers)
    assert status["outputs"] == {"out": "cba"}
    log = server.stderr
    for step in ("tenants: team (1 API key(s))", "tools: reverse", "model: loading the 'tiny' shape", "loaded in"):
        assert step in log, log
    assert re.search(r"ready in \d+\.\d s", log), log
    server.stop()
    assert server.process.returncode == 0


def test_serve_exits_when_a_tool_fails_to_load(tmp_path: Path, serve) -> None:
    tools = _slow_tools(tmp_path, fail=True)
    server = serve("--tools", f"{tools}:reverse", *TINY_FLAGS)
    url = server.url()
    assert httpx.get(f"{url}/health", timeout=30).status_code == 200  # answers while loading
    assert server.process.wait(timeout=120) == 2
    server.stop()
    assert "error: tools: cannot import" in server.stderr and "no such backend" in server.stderr, server.stderr


def test_serve_exits_when_the_model_fails_to_load(tmp_path: Path, serve) -> None:
    server = serve("--model", str(tmp_path / "missing.gguf"), "--device", "cpu")
    assert server.process.wait(timeout=120) == 1
    server.stop()
    assert re.search(r"error: model: .*missing\.gguf", server.stderr), server.stderr


GRACE_S = 3.0


@pytest.mark.slow
def test_sigterm_drains_then_exits(tmp_path: Path, serve) -> None:
    """A running workflow with an open event stream and a streamed chat completion; SIGTERM: new work gets 503 (not
    "connection refused") during the grace, then both streams end and the process exits. The journaled workflow is
    suspended (its stream ends with ``suspended``: it resumes when the server starts again), not cancelled."""
    (tmp_path / "server.toml").write_text(f"shutdown_grace_s = {GRACE_S}\n")
    (tmp_path / "waiting.py").write_text(
        "import asyncio\n\n\nasync def wait(seconds: float) -> str:\n    await asyncio.sleep(seconds)\n"
        "    return 'waited'\n"
    )
    port = _free_port()
    server = serve(
        "--config", str(tmp_path / "server.toml"), "--tools", f"{tmp_path / 'waiting.py'}:wait",
        "--device", "cpu", "--max-context", "2048", "--kv-slots", "4096", "--log-level", "warning",
        "--data-dir", str(tmp_path / "data"), port=port,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    server.wait_ready(url)
    node = {"kind": "tool", "id": "w", "tool": "wait", "args": {"seconds": 120}, "output": "out"}
    created = httpx.post(f"{url}/v1/workflows", json={"workflow": {"nodes": [node]}}, timeout=30)
    assert created.status_code == 201, created.text
    events = _Stream("GET", f"{url}/v1/workflows/{created.json()['id']}/events")
    chat_body = {
        "model": "default",
        "messages": [{"role": "user", "content": "Count to one thousand."}],
        "stream": True,
        "max_tokens": 1500,
        "ignore_eos": True,
    }
    chat = _Stream("POST", f"{url}/v1/chat/completions", json=chat_body)
    events.wait_for("event: node_started")
    chat.wait_for('"content"')

    signalled = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    refused = httpx.post(f"{url}/v1/workflows", json={"workflow": {"nodes": [node]}}, timeout=10)
    assert refused.status_code == 503 and "shutting down" in refused.json()["error"]["message"], refused.text
    ready = httpx.get(f"{url}/ready", timeout=10)
    assert (ready.status_code, ready.json()["status"]) == (503, "draining")
    assert time.monotonic() - signalled < GRACE_S  # all of this within the grace

    server.process.wait(timeout=GRACE_S + 30)
    elapsed = time.monotonic() - signalled
    assert server.process.returncode == 0, server.stderr
    assert GRACE_S - 0.5 <= elapsed <= GRACE_S + 5.0, (elapsed, server.stderr)
    events.join()
    chat.join()
    assert events.text.rstrip().split("\n\n")[-1].split("\n")[1] == "event: suspended", events.text[-500:]
    data = [line.removeprefix("data: ") for line in chat.text.splitlines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]", chat.text[-500:]
    last = json.loads(data[-2])
    assert "error" in last or last["choices"][0]["finish_reason"] is not None, data[-2]


class _Stream:
    """A streamed HTTP response read in a thread."""

    def __init__(self, method: str, url: str, **kwargs: object) -> None:
        self.chunks: list[str] = []
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(method, url, kwargs), daemon=True)
        self._thread.start()

    def _run(self, method: str, url: str, kwargs: dict) -> None:
        try:
            with httpx.stream(method, url, timeout=httpx.Timeout(10, read=120), **kwargs) as response:
                assert response.status_code == 200, response.read()
                for text in response.iter_text():
                    self.chunks.append(text)
        except BaseException as error:
            self.error = error

    @property
    def text(self) -> str:
        return "".join(self.chunks)

    def wait_for(self, marker: str, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while marker not in self.text:
            assert self.error is None and self._thread.is_alive(), (self.error, self.text[-500:])
            assert time.monotonic() < deadline, f"no {marker!r} in {self.text[-500:]!r}"
            time.sleep(0.05)

    def join(self) -> None:
        self._thread.join(timeout=30)
        assert not self._thread.is_alive() and self.error is None, (self.error, self.text[-500:])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _reverse(node: str, source: str, output: str) -> dict:
    return {"kind": "tool", "id": node, "tool": "reverse", "args": {"text": {"$var": source}}, "output": output}


def _wait_done(url: str, headers: dict[str, str], timeout_s: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = httpx.get(url, headers=headers, timeout=30).json()
        if status["state"] != "running":
            return status
        time.sleep(0.05)
    raise AssertionError(f"not done: {status}")
