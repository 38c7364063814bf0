"""The per-program timeline: recording, open spans, bounds, thread safety, summary and the Chrome trace export."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path
from typing import Any

import pytest

from plait.runtime.timeline import Timeline, TimelineEvent, TimelineKind

K = TimelineKind


def validate_chrome_trace(trace: dict[str, Any], timeline: Timeline) -> None:
    """Structural checks of a Trace Event Format export against the timeline it came from."""
    assert set(trace) >= {"traceEvents", "displayTimeUnit", "otherData"}
    assert trace["displayTimeUnit"] == "ms"
    assert json.loads(json.dumps(trace, allow_nan=False)) == trace  # strict JSON round-trip
    events = trace["traceEvents"]
    for event in events:
        for key in ("ph", "ts", "pid", "tid", "name"):
            assert key in event, (key, event)
        assert isinstance(event["pid"], int) and isinstance(event["tid"], int)
        assert event["ts"] >= 0, event
        assert event["ph"] in {"X", "i", "M"}, event
        if event["ph"] == "X":
            assert event["dur"] >= 0, event
        if event["ph"] == "i":
            assert event["s"] == "p", event
    # Metadata: one process name per program id, thread names for every node used.
    process_names = {e["pid"]: e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "process_name"}
    thread_names = {
        (e["pid"], e["tid"]): e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"
    }
    recorded = timeline.events()
    assert sorted(process_names.values()) == sorted({e.program_id for e in recorded})
    pid_of = {name: pid for pid, name in process_names.items()}
    for event in (e for e in events if e["ph"] != "M"):
        assert event["pid"] in process_names
        assert (event["pid"], event["tid"]) in thread_names
    for e in recorded:
        if e.node is not None:
            assert e.node in {name for (pid, _), name in thread_names.items() if pid == pid_of[e.program_id]}
    # Node events land on their node's thread, program-level events on tid 0.
    data = [e for e in events if e["ph"] != "M"]
    for event in data:
        name = thread_names[(event["pid"], event["tid"])]
        if event["tid"] == 0:
            assert ": " not in event["name"]
        else:
            assert event["name"] == f"{event['cat']}: {name}"
    # The earliest event sits at ts 0.
    if data:
        assert min(e["ts"] for e in data) == 0


def test_spans_and_instants_recorded_sorted() -> None:
    tl = Timeline()
    tl.span("p1", K.DECODE, 5.0, 6.0, node="a", args={"tokens": 10})
    tl.instant("p1", K.EVICTED, 2.0, args={"blocks": 3})
    tl.span("p2", K.QUEUED, 1.0, 1.5)
    tl.span("p1", K.PREFILL, 3.0, 2.0, node="a")  # ends before it starts: clamped
    all_events = tl.events()
    assert [e.start for e in all_events] == [1.0, 2.0, 3.0, 5.0]
    p1 = tl.events("p1")
    assert [e.kind for e in p1] == [K.EVICTED, K.PREFILL, K.DECODE]
    assert p1[0] == TimelineEvent("p1", K.EVICTED, 2.0, None, None, {"blocks": 3})
    assert p1[1].end == 3.0 and p1[1].duration == 0.0
    assert p1[2].node == "a" and p1[2].args == {"tokens": 10} and p1[2].duration == 1.0
    assert tl.events("nobody") == []


def test_args_are_copied() -> None:
    tl = Timeline()
    args = {"x": 1}
    tl.span("p", K.TOOL, 0.0, 1.0, args=args)
    args["x"] = 2
    assert tl.events()[0].args == {"x": 1}


def test_chrome_trace_structure() -> None:
    tl = Timeline()
    base = 1000.0  # monotonic times are large: the export must be relative
    tl.span("prog-a", K.PROGRAM, base, base + 2.0)
    tl.span("prog-a", K.QUEUED, base, base + 0.1, node="plan")
    tl.span("prog-a", K.PREFILL, base + 0.1, base + 0.3, node="plan", args={"tokens": 42})
    tl.span("prog-a", K.DECODE, base + 0.3, base + 1.0, node="plan")
    tl.span("prog-a", K.TOOL, base + 1.0, base + 1.5, node="search")
    tl.instant("prog-a", K.DEDUPED, base + 1.6, node="summarise")
    tl.span("prog-b", K.PROGRAM, base + 0.5, base + 1.0)
    tl.instant("prog-b", K.PREFETCHED, base + 0.7)
    trace = tl.to_chrome_trace()
    validate_chrome_trace(trace, tl)
    events = trace["traceEvents"]
    meta = [e for e in events if e["ph"] == "M"]
    data = [e for e in events if e["ph"] != "M"]
    assert len(data) == 8
    # Programs get pids in order of first appearance, with sort indices.
    names = {e["args"]["name"]: e["pid"] for e in meta if e["name"] == "process_name"}
    assert names == {"prog-a": 1, "prog-b": 2}
    sort = {e["pid"]: e["args"]["sort_index"] for e in meta if e["name"] == "process_sort_index"}
    assert sort == {1: 1, 2: 2}
    threads = {(e["pid"], e["args"]["name"]) for e in meta if e["name"] == "thread_name" and e["tid"] != 0}
    assert threads == {(1, "plan"), (1, "search"), (1, "summarise")}
    prefill = next(e for e in data if e["cat"] == "prefill")
    assert prefill["name"] == "prefill: plan" and prefill["ph"] == "X"
    assert prefill["ts"] == pytest.approx(100_000) and prefill["dur"] == pytest.approx(200_000)
    assert prefill["args"] == {"tokens": 42}
    program_b = next(e for e in data if e["cat"] == "program" and e["pid"] == 2)
    assert program_b["tid"] == 0 and program_b["name"] == "program"
    assert program_b["ts"] == pytest.approx(500_000) and program_b["dur"] == pytest.approx(500_000)
    dedup = next(e for e in data if e["cat"] == "deduped")
    assert dedup["ph"] == "i" and dedup["s"] == "p" and dedup["name"] == "deduped: summarise"
    assert "dur" not in dedup
    assert trace["otherData"]["dropped"] == 0


def test_empty_trace_is_valid() -> None:
    tl = Timeline()
    trace = tl.to_chrome_trace()
    validate_chrome_trace(trace, tl)
    assert trace["traceEvents"] == []


def test_write_chrome_trace(tmp_path: Path) -> None:
    tl = Timeline()
    tl.span("p", K.DECODE, 1.0, 2.0, node="n")
    path = tl.write_chrome_trace(tmp_path / "deep" / "dir" / "trace.json")
    assert path.is_file()
    loaded = json.loads(path.read_text(encoding="utf-8"))
    assert loaded == tl.to_chrome_trace()
    validate_chrome_trace(loaded, tl)


def test_close_span_and_merge_args() -> None:
    tl = Timeline()
    handle = tl.open_span("p", K.PINNED, 1.0, args={"blocks": 4})
    assert tl.events() == []  # still open
    tl.close_span(handle, 3.0, args={"reason": "expired"})
    [pinned] = tl.events()
    assert (pinned.start, pinned.end) == (1.0, 3.0)
    assert pinned.args == {"blocks": 4, "reason": "expired"}
    tl.close_span(handle, 9.0)  # closing twice is a no-op
    tl.close_span(12345, 9.0)  # unknown handle: ignored
    assert tl.events() == [pinned]
    early = tl.open_span("p", K.PINNED, 5.0)
    tl.close_span(early, 4.0)  # before its start: clamped
    assert tl.events()[-1].duration == 0.0


def test_close_open_closes_only_that_program() -> None:
    tl = Timeline()
    tl.open_span("p", K.PINNED, 1.0)
    tl.open_span("p", K.EVICTED, 2.0, node="n")
    other = tl.open_span("q", K.PINNED, 1.5)
    assert tl.close_open("p", 4.0) == 2
    assert [(e.kind, e.end) for e in tl.events("p")] == [(K.PINNED, 4.0), (K.EVICTED, 4.0)]
    assert tl.events("q") == []
    assert tl.close_open("p", 5.0) == 0
    tl.close_span(other, 6.0)
    assert tl.events("q")[0].end == 6.0


def test_open_spans_exported_to_latest_time() -> None:
    tl = Timeline()
    tl.span("p", K.PROGRAM, 10.0, 11.0)
    tl.open_span("p", K.PINNED, 10.5, args={"blocks": 2})
    tl.instant("q", K.PREFETCHED, 14.0)
    trace = tl.to_chrome_trace()
    validate_chrome_trace(trace, tl)
    pinned = next(e for e in trace["traceEvents"] if e.get("cat") == "pinned")
    assert pinned["ph"] == "X"
    assert pinned["ts"] == pytest.approx(500_000)
    assert pinned["dur"] == pytest.approx(3_500_000)  # ends at 14.0, the latest time seen
    assert pinned["args"] == {"blocks": 2}
    assert trace["otherData"]["open_spans"] == 1
    assert tl.events("p")[-1].kind == K.PROGRAM  # exporting does not close it


def test_bounded_capacity_counts_drops() -> None:
    tl = Timeline(max_events=3)
    for i in range(5):
        tl.span("p", K.DECODE, float(i), float(i) + 0.5)
    assert len(tl.events()) == 3 and tl.dropped == 2
    tl.instant("p", K.EVICTED, 9.0)
    handle = tl.open_span("p", K.PINNED, 9.0)
    tl.close_span(handle, 10.0)  # dropped when opened: closing does nothing, never raises
    assert len(tl.events()) == 3 and tl.dropped == 4
    assert tl.to_chrome_trace()["otherData"]["dropped"] == 4
    tl.clear()
    assert tl.events() == [] and tl.dropped == 0
    tl.instant("p", K.EVICTED, 1.0)
    assert len(tl.events()) == 1


def test_a_full_timeline_forgets_the_oldest_programs_and_keeps_recording() -> None:
    """A long-running server's timeline records what happens now: at capacity the oldest programs' events go."""
    tl = Timeline(max_events=4)
    for i in range(3):
        tl.span(f"p{i}", K.DECODE, float(i), i + 0.5)
        tl.instant(f"p{i}", K.EVICTED, i + 0.6)
    assert tl.events("p0") == [] and len(tl.events("p1")) == 2 and len(tl.events("p2")) == 2
    assert tl.dropped == 2
    tl.forget("p1")  # its owner forgot it: gone, not counted as dropped
    assert tl.events("p1") == [] and tl.dropped == 2
    tl.span("p3", K.DECODE, 3.0, 3.5)
    assert [e.program_id for e in tl.events()] == ["p2", "p2", "p3"]


def test_open_spans_count_towards_capacity() -> None:
    tl = Timeline(max_events=2)
    first = tl.open_span("p", K.PINNED, 0.0)
    tl.open_span("p", K.PINNED, 0.0)
    tl.span("p", K.DECODE, 0.0, 1.0)  # two open spans fill it
    assert tl.dropped == 1
    tl.close_span(first, 2.0)  # closing keeps the count: still full
    tl.instant("p", K.EVICTED, 3.0)
    assert tl.dropped == 2 and len(tl.events()) == 1


def test_thread_safety_exact_count() -> None:
    tl = Timeline()
    start = threading.Barrier(4)

    def work(worker: int) -> None:
        start.wait()
        for i in range(1000):
            t = worker * 10_000 + i
            if i % 3 == 0:
                tl.instant(f"p{worker}", K.EVICTED, float(t))
            elif i % 3 == 1:
                tl.span(f"p{worker}", K.DECODE, float(t), t + 0.5, node=f"n{i % 7}")
            else:
                tl.close_span(tl.open_span(f"p{worker}", K.PINNED, float(t)), t + 0.25)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(tl.events()) == 4000 and tl.dropped == 0
    for w in range(4):
        assert len(tl.events(f"p{w}")) == 1000
    validate_chrome_trace(tl.to_chrome_trace(), tl)


def test_summary_totals() -> None:
    tl = Timeline()
    tl.span("p", K.DECODE, 0.0, 1.5, node="a")
    tl.span("p", K.DECODE, 2.0, 2.25, node="b")
    tl.span("p", K.PREFILL, 0.0, 0.5)
    tl.instant("p", K.EVICTED, 1.0)
    tl.instant("p", K.EVICTED, 2.0)
    tl.instant("q", K.DEDUPED, 1.0)
    tl.span("q", K.TOOL, 1.0, 4.0)
    tl.open_span("q", K.PINNED, 0.0)  # open spans are not in the summary
    summary = tl.summary()
    assert set(summary) == {"p", "q"}
    assert summary["p"] == {"decode": pytest.approx(1.75), "prefill": pytest.approx(0.5), "evicted_count": 2.0}
    assert summary["q"] == {"deduped_count": 1.0, "tool": pytest.approx(3.0)}
    assert Timeline().summary() == {}


def test_non_json_args_are_stringified() -> None:
    class Opaque:
        def __str__(self) -> str:
            return "opaque!"

    tl = Timeline()
    args = {
        "obj": Opaque(),
        "path": Path("/tmp/x"),
        "nested": {"set": {1}, 3: (1, Opaque())},
        "nan": math.nan,
        "kind": K.TOOL,
        "ok": [1, 2.5, "s", None, True],
    }
    tl.span("p", K.TOOL, 0.0, 1.0, args=args)
    trace = tl.to_chrome_trace()
    validate_chrome_trace(trace, tl)  # includes a strict json.dumps round-trip
    exported = next(e for e in trace["traceEvents"] if e["ph"] == "X")["args"]
    assert exported["obj"] == "opaque!"
    assert exported["path"] == "/tmp/x"
    assert exported["nested"] == {"set": "{1}", "3": [1, "opaque!"]}
    assert exported["nan"] == "nan"
    assert exported["kind"] == "tool"
    assert exported["ok"] == [1, 2.5, "s", None, True]
    assert tl.events()[0].args["obj"] is args["obj"]  # the recorded event keeps the original objects
