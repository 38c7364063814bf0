"""``plait serve``: help, clean exit 2 on bad settings, and a real server process on the tiny dummy model."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from plait.cli import main

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_serve_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--host", "--port", "--config", "--tools", "--api-keys", "--model", "PLAIT_API_KEYS"):
        assert flag in out


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"bogus": 1}, "unknown setting(s) bogus"),
        ({"port": 70000}, "port: must be in 0..65535"),
        ({"port": "eighty"}, "wrong type"),
        ({"limits": {"max_concurrent_programs": 0}}, "limits.max_concurrent_programs"),
        ({"client_tool_timeout_s": 0}, "client_tool_timeout_s"),
    ],
)
def test_bad_config_exits_2_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], settings: dict, message: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(settings))
    assert main(["serve", "--config", str(path)]) == 2
    assert message in capsys.readouterr().err


def test_unreadable_config_and_bad_api_keys_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--config", str(tmp_path / "missing.json")]) == 2
    assert "missing.json" in capsys.readouterr().err
    (tmp_path / "broken.json").write_text("{not json")
    assert main(["serve", "--config", str(tmp_path / "broken.json")]) == 2
    assert "broken.json" in capsys.readouterr().err
    assert main(["serve", "--api-keys", "no-tenant"]) == 2
    assert "KEY=TENANT" in capsys.readouterr().err


def test_serve_runs_a_server(tmp_path: Path) -> None:
    tools = tmp_path / "my_tools.py"
    tools.write_text("def reverse(text: str) -> str:\n    return text[::-1]\n")
    config = tmp_path / "server.toml"
    config.write_text("max_nodes_per_workflow = 3\n[limits]\nmax_concurrent_programs = 2\n")
    command = [sys.executable, "-m", "plait", "serve", "--config", str(config), "--port", "0"]
    command += ["--api-keys", "k1=team", "--tools", f"{tools}:reverse", "--log-level", "info"]
    command += ["--model", "tiny", "--weights", "dummy", "--device", "cpu", "--dtype", "float32"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO_ROOT)
    try:
        url = _wait_for_url(process)
        headers = {"Authorization": "Bearer k1"}
        _wait_ready(url)
        body = {"workflow": {"inputs": {"w": "abc"}, "nodes": [_reverse("r", "w", "out")]}}
        created = httpx.post(f"{url}/v1/workflows", json=body, headers=headers)
        assert created.status_code == 201, created.text
        status = _wait_done(f"{url}/v1/workflows/{created.json()['id']}", headers)
        assert status["outputs"] == {"out": "cba"}
        too_big = {"workflow": {"nodes": [_reverse(f"n{i}", "w", f"o{i}") for i in range(4)], "inputs": {"w": ""}}}
        assert httpx.post(f"{url}/v1/workflows", json=too_big, headers=headers).status_code == 413
        assert httpx.get(f"{url}/v1/workflows").status_code == 401
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
    assert process.returncode == 0


def _reverse(node: str, source: str, output: str) -> dict:
    return {"kind": "tool", "id": node, "tool": "reverse", "args": {"text": {"$var": source}}, "output": output}


def _wait_for_url(process: subprocess.Popen, timeout_s: float = 120.0) -> str:
    deadline = time.monotonic() + timeout_s
    assert process.stderr is not None
    lines = []
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line and process.poll() is not None:
            break
        lines.append(line)
        found = re.search(r"running on (http://[\d.]+:\d+)", line)
        if found:
            return found.group(1)
    raise AssertionError("plait serve did not start:\n" + "".join(lines))


def _wait_ready(url: str, timeout_s: float = 120.0) -> None:
    """The port answers at once; the model loads in the background (``/ready`` is 503 ``starting`` meanwhile)."""
    deadline = time.monotonic() + timeout_s
    while (status := httpx.get(f"{url}/ready", timeout=30).json()["status"]) != "ready":
        assert status == "starting" and time.monotonic() < deadline, status
        time.sleep(0.05)


def _wait_done(url: str, headers: dict[str, str], timeout_s: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = httpx.get(url, headers=headers).json()
        if status["state"] != "running":
            return status
        time.sleep(0.05)
    raise AssertionError(f"not done: {status}")
