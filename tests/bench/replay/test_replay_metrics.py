"""Replay metrics on hand-built runs: percentiles, failed requests, SLO goodput at the boundary, prefix hit sources,
ratio direction, throughput bins and the table rows."""

from __future__ import annotations

import math

import pytest

from plait.bench.replay.records import ModeRun, RequestRecord, SessionRecord
from plait.bench.replay.replay_metrics import (
    RATIO_ROW_LABEL,
    SLO,
    completions_over_time,
    ratios,
    summarize,
    summary_table_rows,
    throughput_over_time,
)

# TTFTs and e2e latencies are exact binary fractions so the SLO boundary comparisons are exact.
TTFTS = (0.125, 0.25, 0.5, 0.75, 1.0)


def ok_request(index: int, ttft: float, e2e: float, output: int = 11, sent: float = 0.0, **extra) -> RequestRecord:
    return RequestRecord(
        index=index,
        arrival_s=sent,
        input_tokens=100,
        output_tokens_target=output,
        output_tokens=output,
        sent_s=sent,
        first_token_s=sent + ttft,
        finished_s=sent + e2e,
        ok=True,
        **extra,
    )


def sample_run(**fields) -> ModeRun:
    """Five ok requests (TTFT 0.125..1, e2e 1..5 s, 11 output tokens), one failed after a first token, one unsent."""
    requests = [ok_request(i, ttft, float(i + 1)) for i, ttft in enumerate(TTFTS)]
    failed = RequestRecord(5, 0.0, 100, 11, output_tokens=3, sent_s=0.0, first_token_s=0.01, finished_s=99.0)
    failed.error = "connection reset"
    unsent = RequestRecord(6, 9.0, 100, 11)
    return ModeRun(mode="plait", target="in-process", requests=[*requests, failed, unsent], wall_s=10.0, **fields)


def test_counts_and_percentiles_leave_failed_requests_out_of_latency() -> None:
    summary = summarize(sample_run(), SLO())
    assert summary["requests_total"] == 7
    assert summary["requests_sent"] == 6
    assert summary["requests_completed"] == 5
    assert summary["requests_failed"] == 1
    assert summary["ttft_mean"] == pytest.approx(0.525)
    assert summary["ttft_p50"] == pytest.approx(0.5)
    assert summary["ttft_p90"] == pytest.approx(0.9)  # 0.75 + 0.6 * 0.25
    assert summary["e2e_p50"] == pytest.approx(3.0)
    assert summary["e2e_p95"] == pytest.approx(4.8)
    assert summary["e2e_p99"] == pytest.approx(4.96)
    assert summary["tpot_p50"] == pytest.approx((3.0 - 0.5) / 10)  # (e2e - TTFT) / (11 - 1) of the middle request
    assert summarize(ModeRun("plait", "x", requests=[ok_request(0, 0.125, 1.125)]), SLO())["tpot_mean"] == 0.1


def test_throughput_counts_only_ok_requests_over_wall_time() -> None:
    summary = summarize(sample_run(), SLO())
    assert summary["request_throughput"] == pytest.approx(0.5)
    assert summary["output_tokens_per_s"] == pytest.approx(5.5)
    assert summary["total_tokens_per_s"] == pytest.approx(55.5)
    assert summarize(ModeRun("plait", "x", requests=[ok_request(0, 0.5, 1.0)]), SLO())["request_throughput"] is None


def test_empty_run_gives_none_not_errors() -> None:
    summary = summarize(ModeRun("baseline", "x", wall_s=1.0), SLO(ttft_s=1.0))
    assert summary["ttft_p99"] is None and summary["e2e_mean"] is None
    assert summary["goodput_fraction"] is None
    assert summary["kv_usage_mean"] is None
    assert "sessions" not in summary


def test_goodput_counts_requests_at_the_slo_boundary_as_good() -> None:
    summary = summarize(sample_run(), SLO(ttft_s=0.5))
    assert summary["goodput_requests"] == 3  # 0.125, 0.25 and exactly 0.5
    assert summary["goodput_rps"] == pytest.approx(0.3)
    assert summary["goodput_fraction"] == pytest.approx(3 / 6)  # of the requests sent, the failed one included
    both = summarize(sample_run(), SLO(ttft_s=0.5, e2e_s=2.0))
    assert both["goodput_requests"] == 2  # every set bound must hold


def test_slo_tpot_bound_holds_without_tpot_but_ttft_bound_needs_a_first_token() -> None:
    one_token = ok_request(0, 0.25, 0.25, output=1)
    assert one_token.tpot_s is None
    assert SLO(tpot_s=0.01).request_ok(one_token)
    no_first_token = ok_request(1, 0.25, 0.5)
    no_first_token.first_token_s = None
    assert not SLO(ttft_s=10.0).request_ok(no_first_token)
    assert SLO(e2e_s=10.0).request_ok(no_first_token)
    failed = ok_request(2, 0.1, 0.2)
    failed.ok = False
    assert not SLO().request_ok(failed)


def test_sessions_jct_and_session_goodput() -> None:
    sessions = [
        SessionRecord("a", arrival_s=0.0, calls=3, completed_calls=3, finished_s=2.0, ok=True),
        SessionRecord("b", arrival_s=1.0, calls=3, completed_calls=3, finished_s=5.0, ok=True),
        SessionRecord("c", arrival_s=2.0, calls=3, completed_calls=1, error="boom"),
    ]
    summary = summarize(ModeRun("plait", "x", sessions=sessions, wall_s=30.0), SLO(jct_s=2.0))
    assert summary["sessions"] == 3 and summary["sessions_completed"] == 2
    assert summary["jct_mean"] == pytest.approx(3.0)
    assert summary["jct_max"] == pytest.approx(4.0)
    assert summary["jct_p50"] == pytest.approx(3.0)
    assert summary["sessions_per_min"] == pytest.approx(4.0)
    assert summary["session_goodput"] == 1  # JCT exactly 2.0 meets the bound
    assert summary["session_goodput_per_min"] == pytest.approx(2.0)
    assert summary["session_goodput_fraction"] == pytest.approx(1 / 3)


def test_prefix_hit_rate_sources() -> None:
    from_engine = summarize(sample_run(engine={"prefix_hit_rate": 0.4}), SLO())
    assert (from_engine["prefix_hit_rate"], from_engine["prefix_hit_source"]) == (0.4, "engine")
    run = sample_run()
    assert summarize(run, SLO())["prefix_hit_source"] is None  # no request reports cached tokens
    for i, record in enumerate(r for r in run.requests if r.ok):
        record.cached_tokens = 50 if i < 3 else 0
    measured = summarize(run, SLO())
    assert measured["prefix_hit_rate"] == pytest.approx(150 / 500)  # the failed request does not count
    assert measured["prefix_hit_source"] == "cached_tokens"
    run.requests[0].cached_tokens = None
    assert summarize(run, SLO())["prefix_hit_rate"] is None  # not every ok request reports it


def test_kv_usage_interrupted_and_engine_counters() -> None:
    engine = {"prefix_hit_rate": 0.5, "retractions": 3, "model": "tiny", "paged": True, "peak_gib": 1.5}
    run = sample_run(kv_usage=[(0.0, 0.25), (1.0, 0.75)], engine=engine, interrupted=True)
    summary = summarize(run, SLO())
    assert summary["kv_usage_mean"] == pytest.approx(0.5)
    assert summary["kv_usage_max"] == pytest.approx(0.75)
    assert summary["interrupted"] is True
    assert summary["engine_retractions"] == 3
    assert summary["engine_peak_gib"] == 1.5
    assert not {"engine_model", "engine_paged", "engine_prefix_hit_rate"} & summary.keys()


def test_summary_survives_a_json_round_trip_of_the_run() -> None:
    run = sample_run(kv_usage=[(0.5, 0.1)], notes=["hello"])
    assert summarize(ModeRun.from_dict(run.to_dict()), SLO(ttft_s=0.5)) == summarize(run, SLO(ttft_s=0.5))


def test_slo_dict_round_trip() -> None:
    slo = SLO(ttft_s=2.0, tpot_s=0.1)
    assert slo.to_dict() == {"ttft_s": 2.0, "tpot_s": 0.1, "e2e_s": None, "jct_s": None}
    assert SLO.from_dict(slo.to_dict()) == slo
    assert SLO.from_dict(None) == SLO()
    assert SLO.from_dict({"e2e_s": 3, "other": 1}) == SLO(e2e_s=3.0)


def test_ratios_are_oriented_so_above_one_means_plait_is_better() -> None:
    plait = {"ttft_mean": 1.0, "e2e_p95": 4.0, "output_tokens_per_s": 300.0, "goodput_rps": 0.0, "jct_mean": None}
    baseline = {"ttft_mean": 2.0, "e2e_p95": 2.0, "output_tokens_per_s": 100.0, "goodput_rps": 0.0}
    gains = ratios(plait, baseline)
    assert gains["ttft_mean"] == pytest.approx(2.0)  # plait's TTFT is half: better
    assert gains["e2e_p95"] == pytest.approx(0.5)  # plait's e2e is double: worse
    assert gains["output_tokens_per_s"] == pytest.approx(3.0)  # plait's throughput is triple: better
    assert "goodput_rps" not in gains  # zero divisor
    assert "jct_mean" not in gains and "tpot_p95" not in gains  # missing
    assert ratios({"prefix_hit_rate": 0.0}, {"prefix_hit_rate": 0.5}) == {"prefix_hit_rate": 0.0}


def test_throughput_over_time_spreads_tokens_between_first_token_and_finish() -> None:
    run = ModeRun("plait", "x", requests=[ok_request(0, 0.5, 1.5, output=10)])
    assert throughput_over_time(run, 1.0) == [(0.0, pytest.approx(5.0)), (1.0, pytest.approx(5.0))]
    assert throughput_over_time(ModeRun("plait", "x"), 1.0) == []
    with pytest.raises(ValueError):
        throughput_over_time(run, 0.0)


@pytest.mark.parametrize("bin_s", [0.1, 0.3, 1.0, 7.0, 100.0])
def test_throughput_bins_conserve_total_output_tokens(bin_s: float) -> None:
    run = sample_run()
    run.requests.append(ok_request(7, 0.0, 0.0, output=4, sent=2.0))  # no duration: all at its finish
    run.requests.append(ok_request(8, 1.0, 3.0, output=5, sent=3.0))  # finishes at 6.0, a bin edge for some sizes
    bins = throughput_over_time(run, bin_s)
    expected = sum(r.output_tokens for r in run.requests if r.ok)
    assert sum(rate * bin_s for _, rate in bins) == pytest.approx(expected)
    assert [t for t, _ in bins] == pytest.approx([i * bin_s for i in range(len(bins))])
    assert len(bins) == max(1, math.ceil(6.0 / bin_s))


def test_completions_over_time() -> None:
    bins = completions_over_time(sample_run(), 2.0)  # finishes at 1, 2, 3, 4, 5 s
    assert [rate * 2.0 for _, rate in bins] == pytest.approx([1.0, 2.0, 2.0])


def test_summary_table_rows_with_sessions_and_ratio_row() -> None:
    run = sample_run(engine={"retractions": 2})
    run.sessions = [SessionRecord("a", 0.0, 2, 2, finished_s=3.0, ok=True)]
    plait = summarize(run, SLO(ttft_s=0.5))
    baseline = summarize(ModeRun("baseline", "x", requests=run.requests[:2], wall_s=10.0), SLO(ttft_s=0.5))
    columns, rows = summary_table_rows({"plait": plait, "baseline": baseline}, ratios(plait, baseline))
    assert columns[0] == "mode" and "JCT p95 (s)" in columns and "retractions" in columns
    assert len(rows) == 3 and all(len(row) == len(columns) for row in rows)
    plait_row = dict(zip(columns, rows[0], strict=True))
    assert plait_row["done/sent"] == "5/6"
    assert plait_row["TTFT p50 (ms)"] == "500.0"
    assert plait_row["goodput"] == "0.30/s (50%)"
    assert plait_row["retractions"] == "2"
    assert dict(zip(columns, rows[1], strict=True))["JCT mean (s)"] == "-"
    ratio_row = dict(zip(columns, rows[2], strict=True))
    assert ratio_row["mode"] == RATIO_ROW_LABEL
    assert ratio_row["req/s"] == "2.50x"  # 0.5 vs 0.2 requests/s
    assert ratio_row["done/sent"] == ""


def test_summary_table_rows_without_sessions_or_ratios() -> None:
    columns, rows = summary_table_rows({"target": summarize(sample_run(), SLO())}, None)
    assert not any(c.startswith("JCT") for c in columns)
    assert len(rows) == 1 and rows[0][0] == "target"
