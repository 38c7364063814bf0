"""The replay report: files written, markdown content, the no-matplotlib fallback, and ``plait bench
replay-report`` on a JSON in tmp_path with its error paths."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from plait.bench.replay.records import ModeRun, RequestRecord, SessionRecord
from plait.bench.replay.replay_metrics import SLO, ratios, summarize
from plait.bench.replay.replay_report import write_report
from plait.bench.replay_report_cmd import default_output_dir, register

REPO_ROOT = Path(__file__).resolve().parents[3]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_run(mode: str, scale: float, *, sessions: bool = True, kv: bool = True, **fields: Any) -> ModeRun:
    """Eight ok requests and one failed, latencies multiplied by ``scale``; two sessions; KV samples."""
    requests = []
    for i in range(8):
        sent = 0.5 * i
        requests.append(
            RequestRecord(
                index=i,
                arrival_s=sent,
                input_tokens=200,
                output_tokens_target=20,
                output_tokens=20,
                sent_s=sent,
                first_token_s=sent + 0.1 * scale * (i + 1),
                finished_s=sent + scale * (1 + 0.2 * i),
                cached_tokens=100 if mode == "plait" else 0,
                ok=True,
                session_id=("s0" if i < 4 else "s1") if sessions else None,
            )
        )
    requests.append(RequestRecord(8, 4.0, 200, 20, sent_s=4.0, error="HTTP 500"))
    records = [SessionRecord(f"s{k}", arrival_s=2.0 * k, calls=4, completed_calls=4, ok=True) for k in range(2)]
    for record in records:
        record.finished_s = record.arrival_s + 3.0 * scale
    return ModeRun(
        mode=mode,
        target="in-process",
        requests=requests,
        sessions=records if sessions else [],
        kv_usage=[(0.5 * t, 0.1 * t * scale / 2) for t in range(10)] if kv else [],
        engine={"retractions": 4 if mode == "baseline" else 0},
        wall_s=8.0 * scale,
        **fields,
    )


def make_payload(runs: list[ModeRun], *, with_summary: bool = True, expected_reuse: float | None = 0.53) -> dict:
    slo = SLO(ttft_s=0.5, tpot_s=0.1)
    trace = {"format": "mooncake", "path": "traces/m.jsonl", "slice": {"start_s": 0, "limit": 9}, "records": 9}
    if expected_reuse is not None:
        trace["expected_prefix_reuse"] = expected_reuse
    payload: dict[str, Any] = {
        "bench": "replay",
        "device": "CPU test x2 threads",
        "date": "2025-01-01T00:00:00",
        "trace": trace,
        "slo": slo.to_dict(),
        "runs": [run.to_dict() for run in runs],
    }
    if with_summary:
        summaries = {run.mode: summarize(run, slo) for run in runs}
        payload["summary"] = summaries
        if {"plait", "baseline"} <= summaries.keys():
            payload["ratios"] = ratios(summaries["plait"], summaries["baseline"])
    return json.loads(json.dumps(payload))  # exactly what a reader of the JSON file gets


@pytest.fixture(scope="module")
def full_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], str]:
    runs = [make_run("plait", 1.0, interrupted=True, notes=["time limit hit"]), make_run("baseline", 2.0)]
    out_dir = tmp_path_factory.mktemp("report") / "nested" / "out"
    paths = write_report(make_payload(runs), out_dir)
    return paths, (out_dir / "report.md").read_text()


def test_report_writes_markdown_and_every_plot(full_report: tuple[list[Path], str]) -> None:
    paths, _ = full_report
    names = [p.name for p in paths]
    assert names == ["report.md", "latency_cdf.png", "throughput.png", "kv_usage.png", "compare.png"]
    for path in paths:
        assert path.is_file() and path.stat().st_size > 0
    for path in paths[1:]:
        assert path.read_bytes().startswith(PNG_MAGIC)


def test_markdown_has_header_tables_warnings_notes_and_links(full_report: tuple[list[Path], str]) -> None:
    _, text = full_report
    assert text.startswith("# Trace replay: mooncake")
    assert "CPU test x2 threads" in text and "2025-01-01" in text
    assert "start_s=0, limit=9" in text
    assert "TTFT <= 0.5 s, TPOT <= 0.1 s, e2e: unbounded, JCT: unbounded" in text
    assert "| mode | done/sent | TTFT p50 (ms) |" in text
    assert "| plait | 8/9 |" in text and "| baseline | 8/9 |" in text
    assert "| plait gain |" in text and "2.00x" in text
    assert "the plait run was interrupted" in text and "the baseline run was interrupted" not in text
    assert "- **plait**: time limit hit" in text
    assert "| expected (trace) | 53.0% |" in text
    assert "| measured (plait) | 50.0% | cached_tokens |" in text
    for name in ("latency_cdf.png", "throughput.png", "kv_usage.png", "compare.png"):
        assert f"]({name})" in text


def test_single_mode_without_kv_skips_the_kv_and_compare_plots(tmp_path: Path) -> None:
    payload = make_payload([make_run("target", 1.0, sessions=False, kv=False)], expected_reuse=None)
    paths = write_report(payload, tmp_path)
    assert [p.name for p in paths] == ["report.md", "latency_cdf.png", "throughput.png"]
    text = paths[0].read_text()
    assert "kv_usage.png" not in text and "compare.png" not in text
    assert "Prefix reuse" not in text and "Warning" not in text and "JCT mean" not in text


def test_report_uses_the_stored_summary_and_computes_a_missing_one(tmp_path: Path) -> None:
    runs = [make_run("plait", 1.0, kv=False), make_run("baseline", 2.0, kv=False)]
    payload = make_payload(runs)
    payload["summary"]["plait"]["requests_sent"] = 999
    text = write_report(payload, tmp_path / "stored")[0].read_text()
    assert "| plait | 8/999 |" in text
    computed = write_report(make_payload(runs, with_summary=False), tmp_path / "computed")
    text = computed[0].read_text()
    assert "| plait | 8/9 |" in text and "2.00x" in text  # ratios computed too
    assert computed[-1].name == "compare.png"


def test_without_matplotlib_only_markdown_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # makes `from matplotlib.figure import` fail
    paths = write_report(make_payload([make_run("plait", 1.0)]), tmp_path)
    assert paths == [tmp_path / "report.md"]
    assert "pip install matplotlib" in paths[0].read_text()
    assert not list(tmp_path.glob("*.png"))


# ---- the command ----------------------------------------------------------------------------------------------------


def run_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="plait bench")
    register(parser.add_subparsers(dest="bench"))
    args = parser.parse_args(argv)
    return args.handler(args)


def test_command_writes_the_report_next_to_the_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = tmp_path / "replay_cpu_2025.json"
    result.write_text(json.dumps(make_payload([make_run("plait", 1.0, sessions=False, kv=False)])))
    assert run_command(["replay-report", str(result)]) == 0
    out_dir = tmp_path / "replay_cpu_2025_report"
    assert default_output_dir(result) == out_dir
    printed = capsys.readouterr().out.split()
    assert printed[0] == str(out_dir / "report.md")
    assert all(Path(p).is_file() for p in printed)


def test_command_output_dir_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = tmp_path / "r.json"
    result.write_text(json.dumps(make_payload([make_run("plait", 1.0, sessions=False, kv=False)])))
    monkey_dir = tmp_path / "elsewhere"
    assert run_command(["replay-report", str(result), "--output-dir", str(monkey_dir)]) == 0
    assert (monkey_dir / "report.md").is_file()
    assert str(monkey_dir / "report.md") in capsys.readouterr().out


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        ("{not json", "not valid JSON"),
        (json.dumps([1, 2]), "not a `plait bench replay` result"),
        (json.dumps({"bench": "workflow", "runs": []}), "(bench: 'workflow')"),
        (json.dumps({"bench": "replay"}), "'runs' must be a non-empty list"),
        (json.dumps({"bench": "replay", "runs": [{"target": "x"}]}), "runs[0] is not a replay run"),
        (json.dumps({"bench": "replay", "runs": [{"mode": "p", "target": "x"}], "slo": {"ttft_s": "2"}}), "slo.ttft_s"),
        (json.dumps({"bench": "replay", "runs": [{"mode": "p", "target": "x"}], "summary": []}), "'summary'"),
    ],
)
def test_command_errors_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, message: str
) -> None:
    result = tmp_path / "result.json"
    if content is not None:
        result.write_text(content)
    assert run_command(["replay-report", str(result)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and message in captured.err
    assert captured.out == ""
    assert not (tmp_path / "result_report").exists()


def test_command_help_does_not_import_torch_or_matplotlib() -> None:
    code = (
        "import argparse, contextlib, io, sys\n"
        "from plait.bench.replay_report_cmd import register\n"
        "parser = argparse.ArgumentParser(prog='plait bench')\n"
        "register(parser.add_subparsers(dest='bench'))\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):\n"
        "    parser.parse_args(['replay-report', '--help'])\n"
        "print('RESULT_JSON' in out.getvalue(), 'torch' in sys.modules, 'matplotlib' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "False", "False"]
