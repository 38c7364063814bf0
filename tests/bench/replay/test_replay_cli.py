"""``plait bench replay`` end to end on the tiny dummy model: table, JSON, report; clear errors; Ctrl-C keeps data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from plait.cli import main as cli_main

TINY_ARGS = ["--model", "tiny", "--weights", "dummy", "--device", "cpu", "--dtype", "float32"]
REPO = Path(__file__).resolve().parents[3]


def test_the_command_knows_every_format():
    from plait.bench.replay.records import TRACE_FORMATS
    from plait.bench.replay_bench import FORMATS

    assert FORMATS == TRACE_FORMATS


def write_mooncake(path: Path, count: int, spacing_ms: int = 30) -> Path:
    lines = []
    for i in range(count):
        hashes = [0, 1 + i % 3, 100 + i]  # a shared first block, one of three second blocks, a unique third
        lines.append(
            json.dumps({"timestamp": i * spacing_ms, "input_length": 1200, "output_length": 40, "hash_ids": hashes})
        )
    path.write_text("\n".join(lines) + "\n")
    return path


def test_compare_baseline_writes_json_report_and_ratios(tmp_path, capsys):
    trace = write_mooncake(tmp_path / "trace.jsonl", 8)
    output = tmp_path / "out.json"
    code = cli_main(
        ["bench", "replay", "--trace", str(trace), "--format", "mooncake", "--length-scale", "0.03125",
         "--compare", "baseline", "--baseline-first", "--unbounded-cache", "--output", str(output), *TINY_ARGS]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "replay mooncake: 8 requests" in printed and "prefix reuse: trace" in printed
    payload = json.loads(output.read_text())
    assert [run["mode"] for run in payload["runs"]] == ["baseline", "plait"]  # --baseline-first
    assert all(run["engine"]["busy_s"] > 0 and run["engine"]["steps"] > 0 for run in payload["runs"])
    assert payload["trace"]["block_tokens"] == 16 and 0 < payload["trace"]["expected_prefix_reuse"] < 1
    for mode in ("plait", "baseline"):
        assert payload["summary"][mode]["requests_completed"] == 8
    assert payload["ratios"] and not payload["interrupted"]
    report = output.with_name("out_report")
    assert (report / "report.md").is_file() and (report / "latency_cdf.png").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "azure"], "columns"),  # a JSONL trace read as CSV
        (["--format", "mooncake", "--start", "1000"], "span"),  # an empty slice
        (["--format", "mooncake", "--time-scale", "0"], "time_scale"),
        (["--format", "mooncake", "--compare", "baseline", "--target", "http://127.0.0.1:9"], "--served"),
        (["--format", "mooncake", "--served", "--target", "http://127.0.0.1:9"], "give one of them"),
        (["--format", "mooncake", "--target-programs", "implicit,sometimes"], "--target-programs"),
        (["--format", "mooncake", "--target-programs", "implicit"], "--target or --served"),
        (["--format", "mooncake", "--target", "http://127.0.0.1:9"], "cannot reach"),
        (["--format", "mooncake", "--baseline-first"], "--compare baseline"),
        (["--format", "mooncake", "--replicas", "2"], "--replicas needs --served"),
        (["--format", "mooncake", "--served", "--routing", "random"], "--routing 'random'"),
        (["--format", "mooncake", "--served", "--routing", "program,prefix"], "--replicas 2 or more"),
    ],
)
def test_bad_input_exits_2_with_a_message(tmp_path, capsys, args, message):
    trace = write_mooncake(tmp_path / "trace.jsonl", 2)
    assert cli_main(["bench", "replay", "--trace", str(trace), *args, *TINY_ARGS]) == 2
    assert message in capsys.readouterr().err


def test_malformed_lines_name_the_line_or_are_skipped(tmp_path, capsys):
    trace = write_mooncake(tmp_path / "trace.jsonl", 3)
    trace.write_text(trace.read_text() + "{not json\n")
    args = ["bench", "replay", "--trace", str(trace), "--format", "mooncake", "--length-scale", "0.02"]
    assert cli_main([*args, *TINY_ARGS]) == 2
    assert "trace.jsonl:4" in capsys.readouterr().err
    output = tmp_path / "ok.json"
    assert cli_main([*args, "--skip-malformed", "--no-report", "--output", str(output), *TINY_ARGS]) == 0
    assert json.loads(output.read_text())["trace"]["skipped_lines"] == 1


def test_ctrl_c_stops_the_replay_and_writes_what_was_measured(tmp_path):
    trace = write_mooncake(tmp_path / "trace.jsonl", 40, spacing_ms=500)  # 20 s of arrivals
    output = tmp_path / "partial.json"
    command = [sys.executable, "-m", "plait", "bench", "replay", "--trace", str(trace), "--format", "mooncake",
               "--length-scale", "0.02", "--output", str(output), "--no-report", *TINY_ARGS]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ}
    )
    try:
        seen = []
        for line in process.stderr:  # until the replay has started (the Ctrl-C handler is installed by then)
            seen.append(line)
            if line.startswith("replaying"):
                break
        time.sleep(2)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
        stderr = "".join(seen) + stderr
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    assert "stopping" in stderr and "wrote" in stdout
    payload = json.loads(output.read_text())
    run = payload["runs"][0]
    assert payload["interrupted"] and run["interrupted"]
    states = [r["ok"] for r in run["requests"]]
    assert any(states) and not all(states)
    assert all(r["error"] == "interrupted" for r in run["requests"] if not r["ok"])


def test_plan_overrides_change_plait_mode_only_and_bad_ones_say_what_is_known(tmp_path, capsys):
    from plait.runtime.planning import PlanConfig

    plan = PlanConfig().with_overrides(["program_fcfs=off", "max-queue-wait-s=5", "prefetch=off"])
    assert not plan.program_fcfs and not plan.prefetch and plan.engine.max_queue_wait_s == 5.0 and plan.name == "plait"
    trace = write_mooncake(tmp_path / "trace.jsonl", 2)
    for bad, message in (
        ("nonsense=1", "FIELD one of"),
        ("prefetch=maybe", "on or off"),
        ("max_queue_wait_s=x", "float"),
    ):
        assert (
            cli_main(["bench", "replay", "--trace", str(trace), "--format", "mooncake", "--plan", bad, *TINY_ARGS]) == 2
        )
        assert message in capsys.readouterr().err
