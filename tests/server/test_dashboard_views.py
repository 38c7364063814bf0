"""The dashboard's views without a server: KV samples and their split, the SVG pictures (graph, timeline, charts),
program snapshots from a live execution and from a timeline alone, the per-program Chrome trace, the offline report,
and the engine's new ``EngineStats`` fields (reserved slots, host tier) they are drawn from."""

from __future__ import annotations

import asyncio
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from plait.runtime.timeline import Timeline, TimelineKind
from plait.server.dashboard import (
    KVHistory,
    KVSample,
    NodeSnapshot,
    ProgramSnapshot,
    program_trace,
    render_report_html,
    snapshots_from_events,
    write_timeline_report,
)
from plait.server.dashboard import report_html as report_module
from plait.server.dashboard.charts_svg import kv_chart_svg, queue_chart_svg, throughput_chart_svg
from plait.server.dashboard.graph_svg import depths, graph_svg
from plait.server.dashboard.timeline_svg import timeline_svg

SVG = "{http://www.w3.org/2000/svg}"


def parse(svg: str) -> ET.Element:
    """The picture as XML: well-formed, or the test fails (an unescaped name would break it)."""
    return ET.fromstring(svg)


def sample(at: float, **fields: float) -> KVSample:
    values = {"total": 100.0, "running": 0.0, "cached": 0.0, "pinned_idle": 0.0, "reserved": 0.0, **fields}
    return KVSample(at=at, **values)


# ---- KV samples -----------------------------------------------------------------------------------------------------


def test_layers_partition_the_pool_and_clip_what_does_not_fit() -> None:
    layers = sample(0, running=30, cached=25, pinned_idle=10, reserved=20).layers()
    assert layers == {"running": 30, "pinned": 10, "cached": 15, "reserved": 20, "free": 25}
    # Reservations beyond the free room are clipped: the parts still sum to the pool.
    crowded = sample(0, running=60, cached=30, pinned_idle=5, reserved=50).layers()
    assert crowded["reserved"] == 10 and crowded["free"] == 0
    assert sum(crowded.values()) == pytest.approx(100)


def test_sample_from_engine_stats_reads_every_field() -> None:
    from plait.engine import EngineStats

    stats = EngineStats(
        waiting=3, running=2, kv_slots_used=40, kv_slots_total=128, decode_tokens_per_s=50.0,
        prefill_tokens_per_s=900.0, generated_tokens=0, prefill_tokens=0, retractions=0, steps=0,
        kv_slots_cached=20, kv_slots_reserved=16, host_slots_used=7, host_slots_total=64, pinned_idle_slots=4,
    )  # fmt: skip
    got = KVSample.from_stats(stats, at=5.0)
    assert (got.total, got.running, got.cached, got.pinned_idle, got.reserved) == (128, 40, 20, 4, 16)
    assert (got.host_used, got.host_total, got.waiting_requests, got.running_requests) == (7, 64, 3, 2)
    assert (got.decode_tokens_per_s, got.prefill_tokens_per_s, got.at) == (50.0, 900.0, 5.0)


def test_history_is_bounded_and_samples_in_the_background_until_stopped() -> None:
    history = KVHistory(max_samples=5, period_s=0.01)
    for t in range(8):
        history.record(sample(float(t)))
    assert [s.at for s in history.samples()] == [3.0, 4.0, 5.0, 6.0, 7.0]
    assert [s.at for s in history.samples(since=6.0)] == [6.0, 7.0]

    reads: list[int] = []

    class Stats:
        kv_slots_total, kv_slots_used = 10, 3

    def read() -> Stats:
        reads.append(1)
        return Stats()

    async def run() -> None:
        live = KVHistory(max_samples=100, period_s=0.01)
        live.sample_in_background(read)
        for _ in range(200):  # bounded wait for a few samples
            if len(live.samples()) >= 3:
                break
            await asyncio.sleep(0.01)
        assert live.sampling and live.latest() is not None and live.latest().running == 3
        await live.stop()
        count = len(reads)
        await asyncio.sleep(0.05)
        assert not live.sampling and len(reads) == count  # stopped: no more reads

    asyncio.run(run())


def test_engine_stats_report_reserved_slots_and_the_host_tier() -> None:
    from plait.engine import EngineConfig, EngineCore

    core = EngineCore(
        EngineConfig(
            model="tiny", weights="dummy", device="cpu", dtype="float32", kv_slots=256, max_context=128,
            host_kv_slots=96,
        )
    )  # fmt: skip
    before = core.stats()
    assert before.kv_slots_reserved == 0 and before.host_slots_total == 96 and before.host_slots_used == 0
    core.reserve("prog-1", 40, ttl_s=60.0)
    core.reserve("prog-2", 8, ttl_s=60.0, call_id="next")
    assert core.stats().kv_slots_reserved == 48
    core.reserve("prog-1", 0)  # a reservation of 0 ends it
    assert core.stats().kv_slots_reserved == 8


# ---- pictures -------------------------------------------------------------------------------------------------------


def test_kv_chart_stacks_the_layers_and_marks_its_peak() -> None:
    samples = [sample(0.0), sample(1.0, running=50, cached=20), sample(2.0, running=10, cached=30, pinned_idle=5)]
    root = parse(kv_chart_svg(samples))
    assert root.get("data-samples") == "3" and root.get("data-peak-running") == "50"
    assert root.get("data-last-running") == "10"
    layers = {p.get("data-layer"): p for p in root.iter(f"{SVG}polygon")}
    assert list(layers) == ["running", "pinned", "cached", "reserved"]
    assert root.find(f"{SVG}polyline") is None  # no host tier: no host line
    with_host = parse(kv_chart_svg([sample(0, host_total=10, host_used=5), sample(1, host_total=10, host_used=8)]))
    assert with_host.find(f"{SVG}polyline[@class='host']") is not None
    empty = parse(kv_chart_svg([]))
    assert empty.get("data-samples") == "0" and "no samples yet" in ET.tostring(empty, encoding="unicode")


def test_kv_chart_top_follows_the_share_in_use() -> None:
    """The stacked top edge at each sample is at the pool share held (running + cached + reserved)."""
    samples = [sample(0.0, running=0), sample(10.0, running=50, cached=25, reserved=25)]
    root = parse(kv_chart_svg(samples))
    reserved = next(p for p in root.iter(f"{SVG}polygon") if p.get("data-layer") == "reserved")
    points = [tuple(map(float, point.split(","))) for point in reserved.get("points").split()]
    top_first, top_last = points[0], points[1]
    assert top_first[1] > top_last[1]  # the pool filled up: the area rose
    assert top_last[1] == pytest.approx(26.0)  # 100% is the plot's top edge (TOP = 26)


def test_line_charts_draw_one_line_per_series() -> None:
    samples = [
        KVSample(at=t, total=10, running=0, cached=0, pinned_idle=0, reserved=0, waiting_requests=t, running_requests=1)
        for t in range(5)
    ]
    for svg in (queue_chart_svg(samples), throughput_chart_svg(samples)):
        root = parse(svg)
        assert len(root.findall(f"{SVG}polyline")) == 2 and root.get("data-samples") == "5"


def test_graph_lays_nodes_out_by_depth_with_their_states() -> None:
    nodes = [
        NodeSnapshot("plan", "llm", "done"),
        NodeSnapshot("search", "tool", "running"),
        NodeSnapshot("fetch", "tool", "waiting_for_tool"),
        NodeSnapshot("answer", "llm", "pending"),
    ]
    edges = [("plan", "search"), ("plan", "fetch"), ("search", "answer"), ("fetch", "answer")]
    assert depths([n.node_id for n in nodes], edges) == {"plan": 0, "search": 1, "fetch": 1, "answer": 2}
    root = parse(graph_svg(nodes, edges))
    groups = {g.get("data-node"): g for g in root.iter(f"{SVG}g") if g.get("class") == "node"}
    assert {k: g.get("data-state") for k, g in groups.items()} == {
        "plan": "done",
        "search": "running",
        "fetch": "waiting_for_tool",
        "answer": "pending",
    }
    x = {k: float(g.find(f"{SVG}rect").get("x")) for k, g in groups.items()}
    assert x["plan"] < x["search"] == x["fetch"] < x["answer"]
    assert len([p for p in root.iter(f"{SVG}path")]) == 2 * len(edges)  # a curve and an arrow head per edge


def test_graph_escapes_names_and_survives_a_cycle() -> None:
    nodes = [NodeSnapshot("<script>x</script>", "llm", "done", detail="a & b"), NodeSnapshot("b'\"", "tool", "done")]
    svg = graph_svg(nodes, [("<script>x</script>", "b'\""), ("b'\"", "<script>x</script>")], omitted=3)
    root = parse(svg)
    assert "<script>" not in svg
    names = [g.get("data-node") for g in root.iter(f"{SVG}g") if g.get("class") == "node"]
    assert names == ["<script>x</script>", "b'\""]  # escaped in the markup, the same text once parsed
    assert "3 more nodes not drawn" in svg


def _timeline_of_two_programs() -> Timeline:
    timeline = Timeline()
    timeline.span("p1", TimelineKind.QUEUED, 10.0, 10.5, node="plan")
    timeline.span("p1", TimelineKind.PREFILL, 10.5, 11.0, node="plan", args={"tokens": 12})
    timeline.span("p1", TimelineKind.DECODE, 11.0, 12.0, node="plan", args={"tokens": 5})
    timeline.span("p1", TimelineKind.TOOL, 12.0, 14.0, node="search")
    timeline.span("p1", TimelineKind.PINNED, 12.0, 13.5)
    timeline.instant("p1", TimelineKind.EVICTED, 13.6, args={"tokens": 40})
    timeline.span("p1", TimelineKind.PROGRAM, 10.0, 15.0, args={"state": "done"})
    timeline.span("p2", TimelineKind.TOOL, 11.0, 11.5, node="other")
    timeline.span("p2", TimelineKind.PROGRAM, 11.0, 11.6, args={"state": "failed"})
    return timeline


def test_timeline_draws_every_event_of_the_program_and_its_live_nodes() -> None:
    timeline = _timeline_of_two_programs()
    [first, second] = snapshots_from_events(timeline.events())
    root = parse(timeline_svg(first, now=20.0))
    kinds = [r.get("data-kind") for r in root.iter(f"{SVG}rect") if r.get("class") == "span"]
    assert sorted(kinds) == sorted(["queued", "prefill", "decode", "tool", "pinned", "program"])
    assert [p.get("data-kind") for p in root.iter(f"{SVG}path") if p.get("class") == "instant"] == ["evicted"]
    spans = {r.get("data-kind"): r for r in root.iter(f"{SVG}rect") if r.get("class") == "span"}
    # The tool span (2 s of a 5 s program) is twice the decode span (1 s) wide.
    assert float(spans["tool"].get("width")) == pytest.approx(2 * float(spans["decode"].get("width")), rel=1e-3)
    live = ProgramSnapshot("p3", "live", "running", 0.0, None, nodes=(NodeSnapshot("n", "tool", "running"),))
    from plait.server.dashboard import LiveSpan

    live = ProgramSnapshot("p3", "live", "running", 0.0, None, nodes=live.nodes, live=(LiveSpan("n", "tool", 1.0),))
    root = parse(timeline_svg(live, now=4.0))
    [running] = [r for r in root.iter(f"{SVG}rect") if r.get("data-kind") == "running"]
    assert float(running.get("x")) > 140  # starts 1 s in, after the label column
    assert second.state == "failed" and [n.state for n in second.nodes] == ["failed"]


def test_snapshots_from_a_timeline_group_by_program_and_infer_nodes() -> None:
    [first, second] = snapshots_from_events(_timeline_of_two_programs().events())
    assert (first.program_id, first.state, first.created_at, first.finished_at) == ("p1", "done", 10.0, 15.0)
    assert [(n.node_id, n.kind, n.state) for n in first.nodes] == [("plan", "llm", "done"), ("search", "tool", "done")]
    assert not first.edges_known and first.edges == ()
    assert len(first.events) == 7 and len(second.events) == 2


def test_program_trace_holds_only_that_program_and_matches_the_full_export() -> None:
    timeline = _timeline_of_two_programs()
    own = program_trace(timeline, "p1")
    names = {e["args"]["name"] for e in own["traceEvents"] if e.get("name") == "process_name"}
    assert names == {"p1"}
    full = [e for e in timeline.to_chrome_trace()["traceEvents"] if e["ph"] != "M" and e["pid"] == 1]
    mine = [e for e in own["traceEvents"] if e["ph"] != "M"]
    assert [(e["name"], e["ph"], e.get("dur")) for e in mine] == [(e["name"], e["ph"], e.get("dur")) for e in full]
    assert program_trace(timeline, "nobody")["traceEvents"] == []


# ---- live snapshot and the offline report ---------------------------------------------------------------------------


def test_snapshot_of_a_running_execution_has_graph_states_and_live_spans() -> None:
    import plait
    from plait.dag import ToolCall, Workflow, var_ref
    from plait.engine import Engine, EngineConfig
    from plait.runtime import Executor
    from plait.server.dashboard import snapshot_of

    @plait.tool
    async def wait_for_gate(text: str) -> str:
        """Waits until the test opens the gate."""
        await gate.wait()
        return text

    async def run() -> None:
        workflow = Workflow.build(
            [
                ToolCall(id="first", tool="wait_for_gate", args={"text": "hi"}, output="a"),
                ToolCall(id="second", tool="wait_for_gate", args={"text": var_ref("a")}, output="b"),
            ],
            name="gated",
        )
        executor = Executor(engine, [wait_for_gate])
        timeline = executor.planner.timeline
        program = executor.start(workflow)
        await asyncio.sleep(0.05)
        snapshot = snapshot_of(program, timeline, states={"second": "waiting_for_tool"})
        assert [(n.node_id, n.state) for n in snapshot.nodes] == [("first", "running"), ("second", "waiting_for_tool")]
        assert snapshot.edges == (("first", "second"),) and snapshot.state == "running" and snapshot.events == ()
        assert [live.node_id for live in snapshot.live] == ["first"]
        gate.set()
        await asyncio.wait_for(program.wait(), 10)
        done = snapshot_of(program, timeline)
        assert [n.state for n in done.nodes] == ["done", "done"] and done.live == () and done.state == "done"
        tools = [e.node for e in done.events if e.kind is TimelineKind.TOOL]
        assert tools == ["first", "second"]

    gate = asyncio.Event()
    engine = Engine(EngineConfig(model="tiny", weights="dummy", device="cpu", dtype="float32", kv_slots=128))
    try:
        asyncio.run(run())
    finally:
        engine.close()


def test_offline_report_has_every_view_and_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    timeline = _timeline_of_two_programs()
    samples = [sample(9.0 + t, running=10 * t, cached=5) for t in range(8)] + [sample(100.0, running=99)]
    path = write_timeline_report(tmp_path / "sub" / "run.html", timeline, samples, title="run <1>", summary={"k": 1})
    page = path.read_text()
    assert page.startswith("<!doctype html>") and "run &lt;1&gt;" in page and "<script" not in page
    assert page.count("class='chart kv-chart'") == 1 and "data-samples='8'" in page  # the far sample is cut off
    assert page.count("class='timeline'") == 2 and page.count("class='graph'") == 2
    assert "href='#p0'" in page and "id='p0'" in page
    for svg in re.findall(r"<svg .*?</svg>", page, flags=re.S):
        parse(svg)
    monkeypatch.setattr(report_module, "MAX_DETAILED", 1)
    monkeypatch.setattr(report_module, "MAX_LISTED", 1)
    bounded = render_report_html("many", snapshots_from_events(timeline.events()), [])
    assert bounded.count("class='timeline'") == 1 and "1 more programs not listed" in bounded
    assert "the 1 longest-running programs only" in bounded


def test_replay_dashboard_rebuilds_sessions_and_requests(tmp_path: Path) -> None:
    from plait.bench.replay.records import ModeRun, RequestRecord, SessionRecord
    from plait.bench.replay.replay_dashboard import replay_snapshots, write_replay_dashboard

    calls = [
        RequestRecord(0, 0.0, 100, 10, 10, sent_s=0.1, first_token_s=0.3, finished_s=1.0, ok=True, session_id="s"),
        RequestRecord(1, 2.0, 120, 10, 10, sent_s=2.0, first_token_s=2.2, finished_s=3.0, ok=True, session_id="s"),
        RequestRecord(2, 0.5, 50, 5, 0, sent_s=0.5, error="HTTP 500"),
    ]
    run = ModeRun("plait", "in-process", requests=calls, sessions=[SessionRecord("s", 0.0, 2, 2, 3.0, True)])
    run.kv_usage = [(0.0, 0.0), (1.0, 0.4)]
    [session, request] = replay_snapshots(run)
    assert session.program_id == "s" and session.state == "done" and session.edges == (("call 0", "call 1"),)
    kinds = [(e.kind.value, e.node) for e in session.events]
    assert ("tool", "call 1") in kinds and ("queued", "call 0") in kinds and ("decode", "call 1") in kinds
    assert request.program_id == "request-2" and request.state == "failed"
    path = write_replay_dashboard({"trace": {"format": "mooncake"}}, [run, run], tmp_path / "d.html")
    page = path.read_text()
    assert page.count("<header>") == 2 and "id='run0-p0'" in page and "id='run1-p0'" in page
    assert "share of the pool in use" in page
    json.dumps(page)  # plain text
