"""Where ``plait bench ...`` writes its JSON without ``--output``: ``plait-results/`` under the working directory,
created as needed; never the repository's ``bench/results/`` (committed results; the scripts pass ``--output``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from plait.cli import build_parser

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_the_default_is_under_the_working_directory(tmp_path, monkeypatch) -> None:
    from plait.bench.report import default_output, write_json
    from plait.bench.serve_load import default_output as serve_load_output

    monkeypatch.chdir(tmp_path)
    for path in (default_output("engine"), serve_load_output("HuggingFaceTB/SmolLM2-135M-Instruct")):
        assert not path.is_absolute() and path.parts[0] == "plait-results", path
    written = write_json(default_output("engine"), {"rows": []})
    assert written.resolve().parent == tmp_path / "plait-results"  # created as needed
    assert json.loads(written.read_text())["rows"] == []


@pytest.mark.parametrize("bench", ["engine", "cache", "grammar", "serve-load", "workflow", "replay", "soak", "journal"])
def test_every_bench_defaults_its_output_and_says_where(bench: str) -> None:
    parser = build_parser()
    benches = next(a for a in parser._subparsers._group_actions if "bench" in a.choices).choices["bench"]
    sub = next(a for a in benches._subparsers._group_actions).choices[bench]
    output = next(a for a in sub._actions if a.dest == "output")
    assert output.default is None and "plait-results/" in output.help


def test_the_bench_scripts_pass_their_own_output() -> None:
    """The scripts that add results to ``bench/results/`` name the file: the default never applies to them."""
    for script in sorted((REPO_ROOT / "bench" / "scripts").glob("*.sh")):
        joined = script.read_text().replace("\\\n", " ")
        for line in joined.splitlines():
            if "plait bench " in line and not line.lstrip().startswith("#"):
                assert "--output" in line, f"{script.name}: {line.strip()}"
