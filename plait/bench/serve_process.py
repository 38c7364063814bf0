"""``plait serve`` as a child process of a benchmark: started on 127.0.0.1 (a free port), ready when ``/ready`` says
so, its stderr collected, stopped with SIGINT (its drain) and killed only when it does not exit in time.

A benchmark that measures the server as users run it (its own process: RSS, start-up, signals) uses this; one that
needs the engine's internals starts the server in-process instead (``serve_load.start_server``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from plait.cli.engine_args import add_engine_arguments

_URL_LINE = re.compile(r"running on (http://\S+?):? ")


def serve_options() -> set[str]:
    """The option strings ``plait serve`` accepts in this checkout (what ``plait serve --help`` lists), so that a
    benchmark passes a flag such as ``--data-dir`` only to a server that has it."""
    from plait.cli import serve_cmd

    commands = argparse.ArgumentParser(prog="plait").add_subparsers()
    serve_cmd.register(commands)
    return set(re.findall(r"--[a-z][a-z0-9-]*", commands.choices["serve"].format_help()))


def engine_flags(args: argparse.Namespace) -> list[str]:
    """The engine flags (``add_engine_arguments``) whose values differ from their defaults, as ``plait serve``
    arguments: what a benchmark was asked for, passed on to the server it starts."""
    probe = argparse.ArgumentParser(add_help=False)
    add_engine_arguments(probe)
    flags: list[str] = []
    for dest, default in vars(probe.parse_args([])).items():
        value = getattr(args, dest, default)
        if value != default:
            flags += [f"--{dest.replace('_', '-')}", str(value)]
    return flags


class ServeProcess:
    """One ``plait serve`` subprocess. ``start`` returns once it listens; ``wait_ready`` once the model is loaded."""

    def __init__(self, flags: list[str], cwd: Path | None = None) -> None:
        """Without ``--data-dir`` or ``--no-journal`` in ``flags`` the server journals into a temporary data directory
        of its own, deleted on ``stop``: it resumes nothing from an earlier run and never shares a journal with another
        server."""
        self.temporary_data_dir: Path | None = None
        if "--data-dir" not in flags and "--no-journal" not in flags and "--data-dir" in serve_options():
            self.temporary_data_dir = Path(tempfile.mkdtemp(prefix="plait-serve-"))
            flags = [*flags, "--data-dir", str(self.temporary_data_dir)]
        self.command = [sys.executable, "-m", "plait", "serve", "--host", "127.0.0.1", "--port", "0", *flags]
        self.cwd = cwd
        self.process: subprocess.Popen[str] | None = None
        self.lines: list[str] = []  # stderr, appended by the reader thread
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def exit_code(self) -> int | None:
        """None while it runs."""
        return None if self.process is None else self.process.poll()

    def start(self, timeout_s: float = 120.0) -> str:
        """Start it; the base URL from its "running on http://..." line. ``RuntimeError`` with its log when it exits
        or prints no URL within ``timeout_s``."""
        self.process = subprocess.Popen(
            self.command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=self.cwd, env=os.environ
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = _URL_LINE.search(self.log)
            if found:
                return found.group(1)
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"plait serve printed no URL (exit code {self.process.poll()}):\n{self.log[-4000:]}")

    def wait_ready(self, url: str, timeout_s: float = 600.0) -> None:
        """Until ``GET /ready`` answers 200; ``RuntimeError`` with the log when the process exits or time runs out."""
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.exit_code() is None:
            try:
                if httpx.get(f"{url}/ready", timeout=10).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"plait serve did not become ready (exit code {self.exit_code()}):\n{self.log[-4000:]}")

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGINT (the server drains), then SIGKILL after ``timeout_s``; the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        if self._reader is not None:
            self._reader.join(timeout=10)
        if self.temporary_data_dir is not None:
            shutil.rmtree(self.temporary_data_dir, ignore_errors=True)
            self.temporary_data_dir = None
        return self.process.returncode

    def _read(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
