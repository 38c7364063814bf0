"""Acceptance (issue 40): a durable Python program (``plait.Runtime(journal=...)``) killed mid-run (``kill -9`` of
its process) and run again with the same journal returns the same result as a run without a crash, with no recorded
LLM call repeated (counted engine requests) and no recorded tool run again; a changed body raises the
non-determinism error naming the call."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.served_process import REPO_ROOT

SCRIPT = "tests.durability.durable_script"


def _run(journal: Path, marks: Path, *flags: str, slow_s: float = 0.0) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "SLOW_S": str(slow_s)}
    done = subprocess.run(
        [sys.executable, "-m", SCRIPT, str(journal), str(marks), *flags],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_a_killed_program_resumes_from_its_journal(tmp_path: Path) -> None:
    reference_marks = tmp_path / "reference"
    reference_marks.mkdir()
    reference = _run(tmp_path / "reference.sqlite3", reference_marks)
    assert reference["requests"] == 3

    journal, marks = tmp_path / "runs.sqlite3", tmp_path / "marks"
    marks.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "SLOW_S": "60"}
    process = subprocess.Popen(
        [sys.executable, "-m", SCRIPT, str(journal), str(marks)], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    while not (marks / "slow-started").exists():  # fact, mark and more are recorded; slow is running
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    for suffix in ("", "-wal"):  # the journal as the crash left it, for the changed body below
        if Path(f"{journal}{suffix}").exists():
            shutil.copy(f"{journal}{suffix}", f"{tmp_path / 'copy.sqlite3'}{suffix}")

    resumed = _run(journal, marks)
    assert resumed["result"] == reference["result"]
    assert resumed["requests"] == 1  # only "end": "fact" and "more" came from the journal
    mark_keys = _lines(marks / "mark.log")  # recorded before the kill: not run again
    assert len(mark_keys) == 1 and mark_keys[0].startswith("pipeline-") and mark_keys[0].endswith("/mark")
    slow_keys = _lines(marks / "slow.log")  # in flight at the kill: ran again, with the same key
    assert len(slow_keys) == 2 and len(set(slow_keys)) == 1 and slow_keys[0].endswith("/slow")

    changed = _run(tmp_path / "copy.sqlite3", marks, "--changed")
    assert changed["requests"] == 0
    assert "call #2 is p.gen(name='more', prompt='{{fact}} and much more:')" in changed["error"]
    assert "recorded p.tool('mark', name='mark')" in changed["error"]
