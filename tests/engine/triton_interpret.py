"""Running Triton kernel tests on CPU: Triton's interpreter reads ``TRITON_INTERPRET`` when triton is first imported,
so a test module that finds triton imported without it reruns itself in a fresh interpreter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_interpreted_in_subprocess(test_file: str) -> None:
    """Run the non-gpu tests of ``test_file`` with ``TRITON_INTERPRET=1`` set from the start; fail with their output."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not gpu", test_file],
        cwd=REPO_ROOT,
        env={**os.environ, "TRITON_INTERPRET": "1"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
