"""Trace loaders: every format from small files, every error path, skip-malformed counting, and the real traces."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from plait.bench.replay.records import AgentSession, Trace, TraceFormatError
from plait.bench.replay.trace_loaders import load_trace

REPO_ROOT = Path(__file__).resolve().parents[3]
TRACES = REPO_ROOT / ".." / "shared" / "data" / "traces"

BURST6 = "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
BURST8 = "Timestamp,Session ID,Elapsed time,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
AZURE = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def mooncake_line(ts: int, inp: int, out: object, ids: list[object] | None = None) -> str:  # wrong types on purpose
    ids = ids if ids is not None else list(range(math.ceil(inp / 512)))
    return json.dumps({"timestamp": ts, "input_length": inp, "output_length": out, "hash_ids": ids})


def agent_line(ts_us: int, session: str, inp: str, out: str = "ok") -> str:
    return json.dumps({"timestamp": ts_us, "input": inp, "output": out, "session_id": session})


# ---------------------------------------------------------------- mooncake


def test_mooncake_loads_sorted_relative_arrivals(tmp_path: Path) -> None:
    lines = [mooncake_line(5000, 1000, 10, [7, 8]), "", mooncake_line(2000, 512, 3), mooncake_line(5000, 513, 4)]
    trace = load_trace(write(tmp_path, "t.jsonl", "\n".join(lines) + "\n"), "mooncake")
    assert [r.arrival_s for r in trace.requests] == [0.0, 3.0, 3.0]
    assert [r.input_tokens for r in trace.requests] == [512, 1000, 513]  # stable among equal arrivals
    assert trace.requests[1].hash_ids == (7, 8)
    assert trace.meta["records"] == 3 and trace.meta["span_s"] == 3.0
    assert trace.skipped_lines == 0 and not trace.is_agent


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "not an object"),
        (json.dumps({"timestamp": 0, "input_length": 10, "output_length": 1}), "missing field(s) hash_ids"),
        (mooncake_line(0, -5, 1, [1]), "input_length is -5"),
        (mooncake_line(0, 10, 1.5, [1]), "output_length is 1.5"),
        (mooncake_line(0, 10, True, [1]), "output_length is True"),
        (mooncake_line(-1, 10, 1, [1]), "timestamp is -1"),
        (mooncake_line(0, 10, 1, []), "non-empty list"),
        (mooncake_line(0, 10, 1, ["a"]), "non-integer"),
        (mooncake_line(0, 1025, 1, [1, 2]), "spans 3 block(s)"),
        (mooncake_line(0, 100, 1, [1, 2]), "spans 1 block(s)"),
    ],
)
def test_mooncake_malformed_line_names_file_and_line(tmp_path: Path, line: str, fragment: str) -> None:
    path = write(tmp_path, "t.jsonl", mooncake_line(0, 10, 1) + "\n\n" + line + "\n")
    with pytest.raises(TraceFormatError) as info:
        load_trace(path, "mooncake")
    assert f"{path}:3: " in str(info.value)
    assert fragment in str(info.value)
    trace = load_trace(path, "mooncake", skip_malformed=True)
    assert len(trace.requests) == 1 and trace.skipped_lines == 1


def test_all_lines_malformed_is_an_error_even_when_skipping(tmp_path: Path) -> None:
    path = write(tmp_path, "t.jsonl", "oops\n{}\n")
    with pytest.raises(TraceFormatError, match="2 malformed line"):
        load_trace(path, "mooncake", skip_malformed=True)


def test_empty_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(TraceFormatError, match="no usable mooncake records"):
        load_trace(write(tmp_path, "t.jsonl", "\n\n"), "mooncake")


# ---------------------------------------------------------------- azure


def test_azure_parses_datetimes_at_full_precision(tmp_path: Path) -> None:
    text = AZURE + "2023-11-16 18:15:50.9951690,396,109\n2023-11-16 18:15:46.6805900,374,44\n\n"
    trace = load_trace(write(tmp_path, "a.csv", text), "azure")
    assert [(r.input_tokens, r.output_tokens) for r in trace.requests] == [(374, 44), (396, 109)]
    assert trace.requests[1].arrival_s == pytest.approx(4.314579, abs=1e-6)
    assert trace.meta["columns"] == {"arrival": "TIMESTAMP", "input": "ContextTokens", "output": "GeneratedTokens"}


def test_azure_columns_by_name_in_any_order_with_extras(tmp_path: Path) -> None:
    text = (
        " generatedtokens , Extra, timestamp,CONTEXTTOKENS\n"
        "5,x,2024-05-12 00:00:10+00:00,100\n"
        "7,y,2024-05-12T00:00:12Z,200\n"
    )
    trace = load_trace(write(tmp_path, "a.csv", text), "azure")
    assert [(r.arrival_s, r.input_tokens, r.output_tokens) for r in trace.requests] == [(0.0, 100, 5), (2.0, 200, 7)]


@pytest.mark.parametrize(
    ("row", "fragment"),
    [
        ("yesterday,10,1", "TIMESTAMP is 'yesterday'"),
        ("2023-13-45 18:15:46.1,10,1", "valid date-time"),
        ("2023-11-16 18:15:46.1,ten,1", "ContextTokens is 'ten'"),
        ("2023-11-16 18:15:46.1,10,-3", "GeneratedTokens is -3"),
        ("2023-11-16 18:15:46.1,10", "the row has 2 field(s)"),
    ],
)
def test_azure_malformed_rows(tmp_path: Path, row: str, fragment: str) -> None:
    path = write(tmp_path, "a.csv", AZURE + "2023-11-16 18:15:46.0,10,1\n" + row + "\n")
    with pytest.raises(TraceFormatError, match=rf"a\.csv:3: .*{re.escape(fragment)}"):
        load_trace(path, "azure")
    assert load_trace(path, "azure", skip_malformed=True).skipped_lines == 1


def test_csv_with_wrong_header_names_found_and_expected_columns(tmp_path: Path) -> None:
    path = write(tmp_path, "a.csv", "time,prompt,completion\n1,2,3\n")
    with pytest.raises(TraceFormatError) as info:
        load_trace(path, "azure")
    message = str(info.value)
    assert str(path) in message and "['time', 'prompt', 'completion']" in message
    assert "['TIMESTAMP', 'ContextTokens', 'GeneratedTokens']" in message


def test_csv_header_of_the_other_format_says_which_format(tmp_path: Path) -> None:
    burst = write(tmp_path, "b.csv", BURST6 + "5,ChatGPT,472,18,490,Conversation log\n")
    with pytest.raises(TraceFormatError, match="looks like the burstgpt format: use --format burstgpt"):
        load_trace(burst, "azure")
    azure = write(tmp_path, "a.csv", AZURE + "2023-11-16 18:15:46.0,10,1\n")
    with pytest.raises(TraceFormatError, match="looks like the azure format: use --format azure"):
        load_trace(azure, "burstgpt")
    jsonl = write(tmp_path, "m.jsonl", mooncake_line(0, 10, 1) + "\n")
    with pytest.raises(TraceFormatError, match="looks like JSON lines"):
        load_trace(jsonl, "burstgpt")


# ---------------------------------------------------------------- burstgpt


@pytest.mark.parametrize(
    ("header", "rows"),
    [
        (BURST6, ["118,GPT-4,417,276,693,Conversation log", "5,ChatGPT,472,18,490,Conversation log"]),
        (BURST8, ["118.0,s1,3,GPT-4,417,276,693,API log", "5.0,s2,1,ChatGPT,472,18,490,Conversation log"]),
    ],
)
def test_burstgpt_both_layouts(tmp_path: Path, header: str, rows: list[str]) -> None:
    trace = load_trace(write(tmp_path, "b.csv", header + "\n".join(rows) + "\n"), "burstgpt")
    assert [(r.arrival_s, r.input_tokens, r.output_tokens) for r in trace.requests] == [
        (0.0, 472, 18),
        (113.0, 417, 276),
    ]
    assert trace.meta["columns"]["input"] == "Request tokens"
    assert trace.meta["failed_rows_dropped"] == 0


def test_burstgpt_drops_failed_rows_and_counts_them(tmp_path: Path) -> None:
    text = BURST6 + "1,ChatGPT,10,0,10,API log\n2,ChatGPT,20,5,25,API log\n3,GPT-4,30,0,30,API log\n"
    trace = load_trace(write(tmp_path, "b.csv", text), "burstgpt")
    assert [r.input_tokens for r in trace.requests] == [20] and trace.requests[0].arrival_s == 0.0
    assert trace.meta["failed_rows_dropped"] == 2


def test_burstgpt_only_failed_rows_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(TraceFormatError, match="1 failed request row"):
        load_trace(write(tmp_path, "b.csv", BURST6 + "1,ChatGPT,10,0,10,API log\n"), "burstgpt")


def test_burstgpt_malformed_timestamp(tmp_path: Path) -> None:
    path = write(tmp_path, "b.csv", BURST6 + "1,ChatGPT,10,3,13,API log\nsoon,ChatGPT,10,3,13,API log\n")
    with pytest.raises(TraceFormatError, match=r"b\.csv:3: Timestamp is 'soon'"):
        load_trace(path, "burstgpt")


def test_header_only_csv_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(TraceFormatError, match="no usable burstgpt records"):
        load_trace(write(tmp_path, "b.csv", BURST6), "burstgpt")
    with pytest.raises(TraceFormatError, match="no usable azure records"):
        load_trace(write(tmp_path, "empty.csv", ""), "azure")


# ---------------------------------------------------------------- lmcache-agent


def test_agent_file_groups_sorts_and_offsets(tmp_path: Path) -> None:
    lines = [
        agent_line(3_000_000, "a", "sys q1 a1 q2"),
        agent_line(1_000_000, "a", "sys q1"),
        agent_line(2_500_000, "b", "other"),
        agent_line(1_500_000, "a", "sys q1 a1"),
    ]
    trace = load_trace(write(tmp_path, "s.jsonl", "\n".join(lines) + "\n"), "lmcache-agent")
    assert trace.is_agent and [s.session_id for s in trace.sessions] == ["a", "b"]
    first, second = trace.sessions
    assert first.arrival_s == 0.0 and second.arrival_s == 1.5
    assert [c.offset_s for c in first.calls] == [0.0, 0.5, 2.0]
    assert [c.input_text for c in first.calls] == ["sys q1", "sys q1 a1", "sys q1 a1 q2"]
    assert first.gaps_s() == [0.5, 1.5] and first.source == f"{tmp_path.name}/s.jsonl"  # the folder names the agent
    assert trace.meta["sessions"] == 2 and trace.meta["records"] == 4 and trace.meta["span_s"] == 2.0


def test_agent_folder_recursion_sources_and_empty_files(tmp_path: Path) -> None:
    write(tmp_path, "x/one.jsonl", agent_line(10_000_000, "s1", "hi") + "\n")
    write(tmp_path, "x/deep/two.jsonl", agent_line(4_000_000, "s2", "yo") + "\n" + agent_line(5_000_000, "s2", "yo!"))
    write(tmp_path, "x/empty.jsonl", "")
    write(tmp_path, "x/notes.txt", "ignored")
    trace = load_trace(tmp_path / "x", "lmcache-agent")
    assert [(s.session_id, s.source, s.arrival_s) for s in trace.sessions] == [
        ("s2", "x/deep/two.jsonl", 0.0),
        ("s1", "x/one.jsonl", 6.0),
    ]
    assert len(trace.meta["files"]) == 3


def test_agent_same_session_id_in_two_files_stays_two_sessions(tmp_path: Path) -> None:
    write(tmp_path, "d/a.jsonl", agent_line(1, "s", "x") + "\n")
    write(tmp_path, "d/b.jsonl", agent_line(2, "s", "y") + "\n")
    trace = load_trace(tmp_path / "d", "lmcache-agent")
    assert [s.session_id for s in trace.sessions] == ["s", "s@d/b.jsonl"]


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("not json", "not valid JSON"),
        (json.dumps({"timestamp": 1, "input": "x", "output": "y"}), "missing field(s) session_id"),
        (json.dumps({"timestamp": "now", "input": "x", "output": "y", "session_id": "s"}), "timestamp is 'now'"),
        (json.dumps({"timestamp": 1, "input": ["x"], "output": "y", "session_id": "s"}), "input is a list"),
        (json.dumps({"timestamp": 1, "input": "x", "output": "y", "session_id": None}), "session_id is None"),
    ],
)
def test_agent_malformed_lines(tmp_path: Path, line: str, fragment: str) -> None:
    path = write(tmp_path, "s.jsonl", agent_line(1, "s", "x") + "\n" + line + "\n")
    with pytest.raises(TraceFormatError, match=rf"s\.jsonl:2: .*{re.escape(fragment)}"):
        load_trace(path, "lmcache-agent")
    trace = load_trace(path, "lmcache-agent", skip_malformed=True)
    assert trace.skipped_lines == 1 and len(trace.sessions) == 1


def test_agent_folder_without_jsonl_or_only_empty_files(tmp_path: Path) -> None:
    (tmp_path / "none").mkdir()
    with pytest.raises(TraceFormatError, match=r"no \*\.jsonl files"):
        load_trace(tmp_path / "none", "lmcache-agent")
    write(tmp_path, "blank/e.jsonl", "")
    with pytest.raises(TraceFormatError, match="no usable lmcache-agent records"):
        load_trace(tmp_path / "blank", "lmcache-agent")


# ---------------------------------------------------------------- dispatch errors


def test_unknown_format_lists_choices(tmp_path: Path) -> None:
    with pytest.raises(TraceFormatError, match="use one of: mooncake, azure, burstgpt, lmcache-agent"):
        load_trace(write(tmp_path, "t.jsonl", "{}"), "sharegpt")


def test_format_name_is_case_and_underscore_insensitive(tmp_path: Path) -> None:
    trace = load_trace(write(tmp_path, "s.jsonl", agent_line(1, "s", "x")), "LMCache_Agent")
    assert trace.format == "lmcache-agent"


def test_missing_path_and_folder_for_file_format(tmp_path: Path) -> None:
    with pytest.raises(TraceFormatError, match="no such file or folder"):
        load_trace(tmp_path / "missing.jsonl", "mooncake")
    with pytest.raises(TraceFormatError, match="is a folder"):
        load_trace(tmp_path, "azure")


def test_trace_format_error_is_a_value_error() -> None:
    assert issubclass(TraceFormatError, ValueError)


# ---------------------------------------------------------------- real shared data


def real(relative: str) -> Path:
    path = TRACES / relative
    if not path.exists():
        pytest.skip(
            f"shared trace data not available at {path.resolve()} (see the project README for the upstream data)"
        )
    return path


def test_real_mooncake() -> None:
    trace = load_trace(real("mooncake/conversation_trace.jsonl"), "mooncake")
    assert len(trace.requests) == 12_031 and trace.skipped_lines == 0
    assert trace.span_s() == pytest.approx(3537, abs=1)
    assert all(len(r.hash_ids or ()) == math.ceil(r.input_tokens / 512) for r in trace.requests)


@pytest.mark.parametrize(("name", "count"), [("code", 8_819), ("conv", 19_366)])
def test_real_azure(name: str, count: int) -> None:
    trace = load_trace(real(f"azure2023/AzureLLMInferenceTrace_{name}.csv"), "azure")
    assert len(trace.requests) == count and trace.skipped_lines == 0
    assert 3400 < trace.span_s() < 3600


def test_real_lmcache_agent() -> None:
    miniswe = load_trace(real("lmcache_agent/miniswe"), "lmcache-agent")
    assert len(miniswe.sessions) == 20 and sum(len(s.calls) for s in miniswe.sessions) == 402
    taubench = load_trace(real("lmcache_agent/taubench"), "lmcache-agent")
    assert len(taubench.sessions) == 24 and all(len(s.calls) >= 1 for s in taubench.sessions)
    for trace in (miniswe, taubench):
        assert_sessions_well_formed(trace)


def assert_sessions_well_formed(trace: Trace) -> None:
    arrivals = [s.arrival_s for s in trace.sessions]
    assert arrivals == sorted(arrivals) and arrivals[0] == 0.0
    session: AgentSession
    for session in trace.sessions:
        offsets = [c.offset_s for c in session.calls]
        assert offsets[0] == 0.0 and offsets == sorted(offsets)
