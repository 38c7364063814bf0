"""The offline dashboards the benchmarks write, end to end on the tiny dummy model: ``plait bench workflow --trace``
writes ``<output>.html`` beside its JSON (the traced run's programs, their timelines, the KV pool sampled over the
run, a link to the Chrome trace), and ``plait bench replay`` writes ``dashboard.html`` into its report, linked from
``report.md``."""

from __future__ import annotations

import json
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from plait.cli import main as cli_main

TINY_ARGS = ["--model", "tiny", "--weights", "dummy", "--device", "cpu", "--dtype", "float32"]


def svgs(page: str) -> list[ET.Element]:
    """Every picture of the page, parsed (each must be well-formed XML)."""
    return [ET.fromstring(svg) for svg in re.findall(r"<svg .*?</svg>", page, flags=re.S)]


def test_workflow_bench_trace_writes_the_dashboard_beside_the_json(tmp_path: Path, capsys) -> None:
    trace, output = tmp_path / "traces" / "run.trace.json", tmp_path / "results" / "map_reduce.json"
    code = cli_main(
        ["bench", "workflow", "--suite", "map-reduce", "--programs", "3", "--rate", "0", "--compare", "none",
         "--time-limit", "300", "--trace", str(trace), "--output", str(output), *TINY_ARGS]
    )  # fmt: skip
    assert code == 0
    page_path = output.with_suffix(".html")
    assert f"dashboard of the traced run: {page_path}" in capsys.readouterr().out
    page = page_path.read_text()
    chrome = json.loads(trace.read_text())
    programs = {e["args"]["name"] for e in chrome["traceEvents"] if e.get("name") == "process_name"}
    assert len(programs) == 3
    for program_id in programs:  # every traced program has its row and its pictures
        assert f"{program_id} · done" in page
    assert page.count("class='timeline'") == 3
    spans = sum(1 for e in chrome["traceEvents"] if e["ph"] == "X")
    drawn = sum(
        1 for svg in svgs(page) if svg.get("class") == "timeline" for _ in svg.iter() if _.get("class") == "span"
    )
    assert drawn == spans  # the same events as the Chrome trace
    [kv] = [svg for svg in svgs(page) if "kv-chart" in (svg.get("class") or "")]
    assert int(kv.get("data-samples")) >= 2 and int(kv.get("data-peak-held")) > 0
    assert f"href='{os.path.relpath(trace, page_path.parent)}'" in page and "href='map_reduce.json'" in page


def test_replay_report_links_its_dashboard(tmp_path: Path) -> None:
    lines = [
        json.dumps({"timestamp": i * 30, "input_length": 1200, "output_length": 20, "hash_ids": [0, 1 + i, 100 + i]})
        for i in range(4)
    ]
    trace = tmp_path / "trace.jsonl"
    trace.write_text("\n".join(lines) + "\n")
    output = tmp_path / "out.json"
    code = cli_main(
        ["bench", "replay", "--trace", str(trace), "--format", "mooncake", "--length-scale", "0.03125",
         "--compare", "none", "--output", str(output), *TINY_ARGS]
    )  # fmt: skip
    assert code == 0
    report = output.with_name("out_report")
    assert "[dashboard.html](dashboard.html)" in (report / "report.md").read_text()
    page = (report / "dashboard.html").read_text()
    assert page.count("class='timeline'") == 4 and "replay mooncake: plait" in page
    for number in range(4):
        assert f"request-{number}" in page
    kinds = {node.get("data-kind") for svg in svgs(page) for node in svg.iter() if node.get("class") == "span"}
    assert {"prefill", "decode", "program"} <= kinds
