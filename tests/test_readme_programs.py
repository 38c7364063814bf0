"""The README's "Programs" example is ``examples/programs/answer.py`` word for word, and that file runs as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = REPO_ROOT / "examples" / "programs" / "answer.py"


def section_code_blocks(markdown: str, heading: str) -> list[str]:
    """The ```python blocks between ``heading`` and the next heading of its level."""
    start = markdown.index(f"\n{heading}\n")
    end = markdown.find("\n## ", start + len(heading) + 2)
    section = markdown[start : end if end >= 0 else len(markdown)]
    return re.findall(r"^```python\n(.*?)^```$", section, flags=re.DOTALL | re.MULTILINE)


def test_the_readme_shows_the_example_file() -> None:
    blocks = section_code_blocks((REPO_ROOT / "README.md").read_text(encoding="utf-8"), "## Programs")
    assert blocks == [EXAMPLE.read_text(encoding="utf-8")], "README's Programs example and the file have drifted"


@pytest.mark.slow
def test_the_example_runs_as_written(default_gguf) -> None:
    """``python -m examples.programs.answer`` on the default model on a CPU: three programs, each returning its SQL
    and the result of running it (whether the small model's SQL is right is not the point)."""
    result = subprocess.run(
        [sys.executable, "-m", "examples.programs.answer"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},  # the default model on the CPU, as the file's docstring says
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert len(lines) == 3, result.stdout
    for line in lines:
        assert line.startswith("{'sql': "), line
        assert "'result': {'ok': True" in line or "'errors': [" in line, line
    assert "Traceback" not in result.stderr and "planner hook" not in result.stderr, result.stderr[-3000:]
