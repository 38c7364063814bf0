"""Slicing traces: windows, caps, time and length scaling, hash-id block invariants, agent prefix preservation."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from plait.bench.replay.records import AgentCall, AgentSession, Trace, TraceRequest
from plait.bench.replay.trace_loaders import load_trace
from plait.bench.replay.trace_slice import SliceOptions, slice_trace

MOONCAKE = (
    Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "traces" / "mooncake" / "conversation_trace.jsonl"
)


def request_trace(arrivals: list[float], inp: int = 100, out: int = 10) -> Trace:
    requests = [TraceRequest(arrival_s=a, input_tokens=inp, output_tokens=out) for a in arrivals]
    return Trace(format="azure", path=Path("t.csv"), requests=requests, meta={"records": len(requests)})


def hashed_trace(lengths: list[int]) -> Trace:
    requests = [
        TraceRequest(arrival_s=float(i), input_tokens=n, output_tokens=7, hash_ids=tuple(range(math.ceil(n / 512))))
        for i, n in enumerate(lengths)
    ]
    return Trace(format="mooncake", path=Path("m.jsonl"), requests=requests)


def agent_trace() -> Trace:
    texts = ["system: be brief. user: hi", "system: be brief. user: hi assistant: hello user: list files"]
    sessions = [
        AgentSession("a", 0.0, tuple(AgentCall(2.0 * i, t, f"out{i}") for i, t in enumerate(texts)), "a.jsonl"),
        AgentSession("b", 10.0, (AgentCall(0.0, "x" * 40, "y"),), "b.jsonl"),
        AgentSession("c", 20.0, (AgentCall(0.0, "z", "w"),), "c.jsonl"),
    ]
    return Trace(format="lmcache-agent", path=Path("d"), sessions=sessions)


# ---------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        (SliceOptions(start_s=-1), "start_s must be"),
        (SliceOptions(start_s=math.nan), "start_s must be"),
        (SliceOptions(duration_s=0), "duration_s must be"),
        (SliceOptions(time_scale=0), "time_scale must be"),
        (SliceOptions(time_scale=math.inf), "time_scale must be"),
        (SliceOptions(length_scale=-0.5), "length_scale must be"),
        (SliceOptions(max_requests=0), "max_requests must be"),
        (SliceOptions(max_input_tokens=0), "max_input_tokens must be"),
        (SliceOptions(max_output_tokens=2.5), "max_output_tokens must be"),  # type: ignore[arg-type]
    ],
)
def test_invalid_options_are_rejected(options: SliceOptions, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        options.validate()
    with pytest.raises(ValueError, match=fragment):
        slice_trace(request_trace([0.0]), options)


def test_default_options_keep_everything() -> None:
    trace = hashed_trace([1000, 512, 1])
    sliced = slice_trace(trace, SliceOptions())
    assert sliced.requests == trace.requests and sliced.block_tokens == 512
    assert sliced is not trace and sliced.meta["slice"] == vars(SliceOptions())


# ---------------------------------------------------------------- windows and timing


def test_window_is_half_open_and_arrivals_stay_relative_to_start() -> None:
    trace = request_trace([0.0, 5.0, 12.0, 15.0, 20.0])
    sliced = slice_trace(trace, SliceOptions(start_s=10.0, duration_s=10.0))
    assert [r.arrival_s for r in sliced.requests] == [2.0, 5.0]  # the idle 10..12 s stays idle; 20 s is excluded
    assert [r.arrival_s for r in trace.requests] == [0.0, 5.0, 12.0, 15.0, 20.0]  # input untouched
    assert sliced.meta["records"] == 5 and sliced.meta["slice_result"]["records"] == 2


def test_max_requests_then_time_scale() -> None:
    sliced = slice_trace(request_trace([1.0, 2.0, 3.0, 4.0]), SliceOptions(start_s=1.0, max_requests=2, time_scale=2))
    assert [r.arrival_s for r in sliced.requests] == [0.0, 0.5]


def test_empty_slice_reports_span_and_count() -> None:
    with pytest.raises(ValueError, match=r"holds no requests: the trace has 3 requests arriving from 0 s to 8 s"):
        slice_trace(request_trace([0.0, 4.0, 8.0]), SliceOptions(start_s=100.0, duration_s=5.0))
    with pytest.raises(ValueError, match=r"\[100 s, end\) holds no sessions: the trace has 3 sessions"):
        slice_trace(agent_trace(), SliceOptions(start_s=100.0))


# ---------------------------------------------------------------- lengths


def test_length_scale_and_caps_without_hash_ids() -> None:
    trace = request_trace([0.0], inp=101, out=3)
    sliced = slice_trace(trace, SliceOptions(length_scale=0.1))
    assert (sliced.requests[0].input_tokens, sliced.requests[0].output_tokens) == (10, 1)  # never below 1
    capped = slice_trace(trace, SliceOptions(length_scale=2.0, max_input_tokens=150, max_output_tokens=5))
    assert (capped.requests[0].input_tokens, capped.requests[0].output_tokens) == (150, 5)
    assert capped.requests[0].hash_ids is None and capped.block_tokens == trace.block_tokens


@pytest.mark.parametrize("scale", [0.01, 0.1, 0.25, 0.5, 0.77, 1.0, 1.5, 3.0])
def test_length_scale_keeps_one_block_per_hash_id(scale: float) -> None:
    lengths = [1, 300, 511, 512, 513, 1000, 1024, 1025, 5000]
    sliced = slice_trace(hashed_trace(lengths), SliceOptions(length_scale=scale))
    block = sliced.block_tokens
    assert block == max(1, round(512 * scale))
    for original, request in zip(lengths, sliced.requests, strict=True):
        assert request.hash_ids is not None
        assert math.ceil(request.input_tokens / block) == len(request.hash_ids) == math.ceil(original / 512)
        assert request.output_tokens == max(1, round(7 * scale))


def test_length_scale_formula_for_the_partial_block() -> None:
    sliced = slice_trace(hashed_trace([1000]), SliceOptions(length_scale=0.5))
    assert sliced.block_tokens == 256
    assert sliced.requests[0].input_tokens == 256 + round(488 * 0.5)  # one full block + the scaled 488-token tail


def test_max_input_tokens_drops_trailing_hash_ids() -> None:
    sliced = slice_trace(hashed_trace([2000, 300]), SliceOptions(max_input_tokens=600))
    first, second = sliced.requests
    assert first.input_tokens == 600 and first.hash_ids == (0, 1)  # ceil(600 / 512) ids still (partly) used
    assert second.input_tokens == 300 and second.hash_ids == (0,)
    scaled = slice_trace(hashed_trace([2000]), SliceOptions(length_scale=0.5, max_input_tokens=512))
    assert scaled.requests[0].input_tokens == 512 and scaled.requests[0].hash_ids == (0, 1)


def test_slicing_a_sliced_trace_composes_block_sizes() -> None:
    once = slice_trace(hashed_trace([1000]), SliceOptions(length_scale=0.5))
    twice = slice_trace(once, SliceOptions(length_scale=0.5))
    assert twice.block_tokens == 128 and twice.requests[0].input_tokens == 128 + round(244 * 0.5)


# ---------------------------------------------------------------- agent sessions


def test_agent_sessions_window_cap_and_time_scale() -> None:
    sliced = slice_trace(agent_trace(), SliceOptions(start_s=0.0, duration_s=15.0, time_scale=2.0, max_requests=5))
    assert [s.session_id for s in sliced.sessions] == ["a", "b"] and sliced.requests == []
    assert [s.arrival_s for s in sliced.sessions] == [0.0, 5.0]
    assert [c.offset_s for c in sliced.sessions[0].calls] == [0.0, 2.0]  # tool gaps are not time-scaled
    assert sliced.sessions[0].source == "a.jsonl"
    only_one = slice_trace(agent_trace(), SliceOptions(start_s=5.0, max_requests=1))
    assert [(s.session_id, s.arrival_s) for s in only_one.sessions] == [("b", 5.0)]


def test_agent_length_scale_preserves_prefix_sharing_across_turns() -> None:
    sliced = slice_trace(agent_trace(), SliceOptions(length_scale=0.3))
    first, second = (call.input_text for call in sliced.sessions[0].calls)
    original_first, original_second = (call.input_text for call in agent_trace().sessions[0].calls)
    assert original_second.startswith(original_first)
    assert second.startswith(first) and original_second.startswith(second)
    assert len(first) == round(len(original_first) * 0.3) and len(second) == round(len(original_second) * 0.3)
    assert sliced.sessions[1].calls[0].input_text == "x" * 12
    assert sliced.sessions[2].calls[0].input_text == "z"  # at least one character


def test_agent_token_caps_and_upscaling_leave_text_alone() -> None:
    sliced = slice_trace(agent_trace(), SliceOptions(length_scale=2.0, max_input_tokens=1, max_output_tokens=1))
    assert sliced.sessions == agent_trace().sessions


# ---------------------------------------------------------------- real data


def test_real_mooncake_slice_keeps_block_invariant() -> None:
    if not MOONCAKE.exists():
        pytest.skip(f"shared trace data not available at {MOONCAKE.resolve()}")
    trace = load_trace(MOONCAKE, "mooncake")
    options = SliceOptions(start_s=600, duration_s=300, time_scale=4, length_scale=0.1, max_input_tokens=2000)
    sliced = slice_trace(trace, options)
    assert sliced.requests and sliced.block_tokens == 51
    assert max(r.arrival_s for r in sliced.requests) < 75
    for request in sliced.requests:
        assert request.hash_ids and request.input_tokens <= 2000
        assert math.ceil(request.input_tokens / 51) == len(request.hash_ids)
