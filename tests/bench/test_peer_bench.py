"""``plait bench peer``: the table's ratios, the peers' command lines, and a real run against ``plait serve`` alone
(the peers' packages are not installed here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from plait.bench.peer_bench import _table
from plait.bench.peer_servers import llama_cpp_server, vllm_server
from plait.bench.peer_workloads import agent_system_prompt


def test_ratios_say_how_many_times_better_plait_is_whatever_the_direction():
    measured = {
        "plait": [
            {"workload": "single", "value": 60.0, "unit": "decode tok/s"},
            {"workload": "agent", "value": 20.0, "unit": "mean session s"},
            {"workload": "single", "value": 40.0, "unit": "decode tok/s"},
        ],
        "vllm": [
            {"workload": "single", "value": 25.0, "unit": "decode tok/s"},
            {"workload": "agent", "value": 30.0, "unit": "mean session s"},
        ],
    }
    rows, summary = _table(measured, ["single", "agent"])
    assert summary["single"]["plait_advantage"]["vllm"] == 2.0  # 50 tok/s mean against 25
    assert summary["agent"]["plait_advantage"]["vllm"] == 1.5  # 30 s against 20 s: lower is better
    assert rows[0] == ["single (decode tok/s)", "60.0 / 40.0", "25.0", "2.00x"]


def test_peer_command_lines(tmp_path):
    server = llama_cpp_server("/opt/llama/llama-server", tmp_path / "m.gguf", threads=2, slots=16)
    assert server.command[:3] == ["/opt/llama/llama-server", "-m", str(tmp_path / "m.gguf")]
    assert "-np" in server.command and "{port}" in server.command
    python = llama_cpp_server("/venv/bin/python", tmp_path / "m.gguf", threads=2, slots=16)
    assert python.command[1:3] == ["-m", "llama_cpp.server"]
    vllm = vllm_server("/venv/bin/python", tmp_path, threads=2)
    assert "float32" in vllm.command and vllm.env["OMP_NUM_THREADS"] == "2"


def test_the_agent_system_prompt_reaches_its_token_count():
    count = lambda text: len(text.split())  # noqa: E731
    prompt = agent_system_prompt(200, count)
    assert 200 <= count(prompt) < 230


def test_a_run_against_plait_serve_alone_measures_every_workload(tmp_path):
    output = tmp_path / "peer.json"
    command = [sys.executable, "-m", "plait", "bench", "peer", "--passes", "1"]  # every peer; two lack executables
    command += ["--single-requests", "1", "--max-tokens", "12", "--streams", "3", "--sessions", "2", "--turns", "2"]
    command += ["--tool-s", "0.2", "--system-tokens", "80", "--agent-max-tokens", "8", "--output", str(output)]
    env = {k: v for k, v in os.environ.items() if k not in ("PLAIT_VLLM_PYTHON", "PLAIT_LLAMA_CPP")}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    payload = json.loads(output.read_text())
    results = payload["results"]["plait"]
    assert [r["workload"] for r in results] == ["single", "concurrent", "agent"]
    assert all(r["failed"] == 0 and r["tokens"] > 0 and r["value"] > 0 for r in results)
    assert results[2]["requests"] == 4 and results[2]["details"]["system_prompt_tokens"] >= 80
    assert "vllm left out" in done.stderr and "llama.cpp left out" in done.stderr
