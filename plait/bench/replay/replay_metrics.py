"""The numbers of a replay run: latency percentiles, throughput, goodput under an SLO, prefix reuse, KV usage, and the
plait-vs-baseline ratios, plus the rows of the terminal table.

A summary is a flat ``dict`` (JSON-ready, ``None`` where there is no data) so that two modes' summaries can be
compared key by key. Latencies count only requests that finished ok; failed requests are counted, not timed.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, TypeGuard

from plait.bench.replay.records import ModeRun, RequestRecord, SessionRecord
from plait.bench.workflow_suites.common import percentile

PERCENTILES = (("p50", 0.50), ("p90", 0.90), ("p95", 0.95), ("p99", 0.99))
JCT_PERCENTILES = (("p50", 0.50), ("p95", 0.95), ("p99", 0.99))

# Ratios are oriented so that > 1 always means plait is better.
LOWER_IS_BETTER = tuple(f"{m}_{s}" for m in ("ttft", "tpot", "e2e", "jct") for s in ("mean", "p50", "p95"))
HIGHER_IS_BETTER = (
    "request_throughput",
    "output_tokens_per_s",
    "total_tokens_per_s",
    "goodput_rps",
    "goodput_fraction",
    "sessions_per_min",
    "session_goodput_per_min",
    "session_goodput_fraction",
    "prefix_hit_rate",
)
RATIO_ROW_LABEL = "plait gain"


@dataclass(frozen=True)
class SLO:
    """Latency bounds in seconds; ``None`` means unbounded.

    A request meets the SLO when it finished ok and every set bound holds (``<=``). A bound on TPOT holds trivially
    for a request with fewer than two output tokens (it has no TPOT); a bound on TTFT fails when no first token was
    recorded. A session meets the SLO when it finished ok and its JCT is within ``jct_s`` (if set).
    """

    ttft_s: float | None = None
    tpot_s: float | None = None
    e2e_s: float | None = None
    jct_s: float | None = None

    def to_dict(self) -> dict[str, float | None]:
        """The bounds by field name (``None`` for unbounded)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> SLO:
        """The SLO from ``to_dict``'s output; missing keys or ``None`` give no bound, unknown keys are ignored."""
        data = data or {}
        values = {f.name: None if data.get(f.name) is None else float(data[f.name]) for f in fields(cls)}
        return cls(**values)

    def request_ok(self, record: RequestRecord) -> bool:
        """Whether ``record`` finished ok within every set bound."""
        if not record.ok:
            return False
        checks = (
            (self.ttft_s, record.ttft_s, False),
            (self.tpot_s, record.tpot_s, True),
            (self.e2e_s, record.e2e_s, False),
        )
        for bound, value, missing_ok in checks:
            if bound is None:
                continue
            if value is None:
                if not missing_ok:
                    return False
            elif value > bound:
                return False
        return True

    def session_ok(self, record: SessionRecord) -> bool:
        """Whether ``record`` finished ok within ``jct_s`` (when set)."""
        if not record.ok:
            return False
        jct = record.jct_s
        return self.jct_s is None or (jct is not None and jct <= self.jct_s)


def distribution(values: Sequence[float], prefix: str, points: Sequence[tuple[str, float]] = PERCENTILES) -> dict:
    """``{prefix}_mean`` and ``{prefix}_{pXX}`` of ``values`` (all ``None`` when there are none)."""
    out: dict[str, float | None] = {f"{prefix}_mean": statistics.fmean(values) if values else None}
    for name, fraction in points:
        out[f"{prefix}_{name}"] = percentile(values, fraction) if values else None
    return out


def _per_s(amount: float, wall_s: float) -> float | None:
    return amount / wall_s if wall_s > 0 else None


def _present(values: Iterable[float | None]) -> list[float]:
    return [v for v in values if v is not None]


def request_counts(requests: Sequence[RequestRecord]) -> dict[str, int]:
    """How many records there are, how many were sent, finished ok, and failed (sent but not ok)."""
    sent = sum(1 for r in requests if r.sent_s is not None or r.ok)
    completed = sum(1 for r in requests if r.ok)
    return {
        "requests_total": len(requests),
        "requests_sent": sent,
        "requests_completed": completed,
        "requests_failed": sent - completed,
    }


def latency_metrics(requests: Sequence[RequestRecord]) -> dict[str, float | None]:
    """TTFT, TPOT and e2e mean/p50/p90/p95/p99 over the requests that finished ok."""
    done = [r for r in requests if r.ok]
    out: dict[str, float | None] = {}
    out.update(distribution(_present(r.ttft_s for r in done), "ttft"))
    out.update(distribution(_present(r.tpot_s for r in done), "tpot"))
    out.update(distribution(_present(r.e2e_s for r in done), "e2e"))
    return out


def throughput_metrics(requests: Sequence[RequestRecord], wall_s: float, slo: SLO) -> dict[str, float | None]:
    """Completed requests, output tokens and all tokens (input + output) per second of ``wall_s``, over requests
    that finished ok; goodput is the requests per second meeting ``slo`` and their fraction of the requests sent."""
    done = [r for r in requests if r.ok]
    sent = request_counts(requests)["requests_sent"]
    good = sum(1 for r in requests if slo.request_ok(r))
    output = sum(r.output_tokens for r in done)
    return {
        "wall_s": wall_s,
        "request_throughput": _per_s(len(done), wall_s),
        "output_tokens_per_s": _per_s(output, wall_s),
        "total_tokens_per_s": _per_s(output + sum(r.input_tokens for r in done), wall_s),
        "goodput_requests": good,
        "goodput_rps": _per_s(good, wall_s),
        "goodput_fraction": good / sent if sent else None,
    }


def session_metrics(sessions: Sequence[SessionRecord], wall_s: float, slo: SLO) -> dict[str, Any]:
    """Session count, completed, JCT mean/p50/p95/p99/max, sessions per minute and session goodput (per minute and
    fraction of all sessions); empty when the run had no sessions."""
    if not sessions:
        return {}
    jcts = _present(s.jct_s for s in sessions)
    good = sum(1 for s in sessions if slo.session_ok(s))
    per_s = _per_s(len(jcts), wall_s)
    good_per_s = _per_s(good, wall_s)
    return {
        "sessions": len(sessions),
        "sessions_completed": len(jcts),
        **distribution(jcts, "jct", JCT_PERCENTILES),
        "jct_max": max(jcts) if jcts else None,
        "sessions_per_min": None if per_s is None else per_s * 60.0,
        "session_goodput": good,
        "session_goodput_per_min": None if good_per_s is None else good_per_s * 60.0,
        "session_goodput_fraction": good / len(sessions),
    }


def _is_number(value: Any) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def prefix_hit(run: ModeRun) -> tuple[float | None, str | None]:
    """The prefix hit rate and where it came from: ``"engine"`` (the target's own counter), ``"cached_tokens"``
    (sum of cached over input tokens of the ok requests, when every one of them reports it), or ``(None, None)``."""
    engine_rate = run.engine.get("prefix_hit_rate")
    if _is_number(engine_rate):
        return float(engine_rate), "engine"
    done = [r for r in run.requests if r.ok]
    if not done or any(r.cached_tokens is None for r in done):
        return None, None
    total = sum(r.input_tokens for r in done)
    if total <= 0:
        return None, None
    return sum(r.cached_tokens or 0 for r in done) / total, "cached_tokens"


def kv_metrics(samples: Sequence[tuple[float, float]]) -> dict[str, float | None]:
    """Mean and max of the KV usage samples (fractions of the pool), ``None`` without samples."""
    usage = [u for _, u in samples]
    return {
        "kv_usage_mean": statistics.fmean(usage) if usage else None,
        "kv_usage_max": max(usage) if usage else None,
    }


def engine_counters(engine: Mapping[str, Any]) -> dict[str, float]:
    """The numeric counters of ``engine`` other than the prefix hit rate, keyed ``engine_<name>``."""
    return {f"engine_{k}": v for k, v in engine.items() if k != "prefix_hit_rate" and _is_number(v)}


def summarize(run: ModeRun, slo: SLO) -> dict[str, Any]:
    """Every headline number of one run as a flat JSON-ready dict (see the module docstring)."""
    hit_rate, hit_source = prefix_hit(run)
    return {
        "mode": run.mode,
        "target": run.target,
        **request_counts(run.requests),
        **latency_metrics(run.requests),
        **throughput_metrics(run.requests, run.wall_s, slo),
        **session_metrics(run.sessions, run.wall_s, slo),
        "prefix_hit_rate": hit_rate,
        "prefix_hit_source": hit_source,
        **kv_metrics(run.kv_usage),
        "interrupted": run.interrupted,
        **engine_counters(run.engine),
    }


def ratios(plait: Mapping[str, Any], baseline: Mapping[str, Any]) -> dict[str, float]:
    """Plait's gain over baseline per metric, oriented so that a ratio > 1 always means plait is better.

    Lower-is-better latencies (``LOWER_IS_BETTER``: mean/p50/p95 of TTFT, TPOT, e2e and JCT) give
    ``baseline / plait``; higher-is-better rates (``HIGHER_IS_BETTER``: throughput, goodput, sessions per minute,
    prefix hit rate) give ``plait / baseline``. A key is left out when either side lacks a number or the divisor is
    zero.
    """
    out: dict[str, float] = {}
    pairs = [(k, baseline.get(k), plait.get(k)) for k in LOWER_IS_BETTER]
    pairs += [(k, plait.get(k), baseline.get(k)) for k in HIGHER_IS_BETTER]
    for key, numerator, divisor in pairs:
        if _is_number(numerator) and _is_number(divisor) and divisor != 0:
            out[key] = numerator / divisor
    return out


def _binned(spans: Iterable[tuple[float, float, float]], bin_s: float) -> list[tuple[float, float]]:
    """Spread each ``(start, end, amount)`` uniformly over ``[start, end]`` (all at ``end`` when it has no length)
    into bins of ``bin_s`` seconds from 0; return ``(bin start, amount per second)`` for every bin up to the last."""
    if bin_s <= 0:
        raise ValueError(f"bin_s must be > 0, got {bin_s}")
    spans = [(max(0.0, s), max(0.0, e), a) for s, e, a in spans]
    if not spans:
        return []
    last_end = max(e for _, e, _ in spans)
    totals = [0.0] * max(1, math.ceil(last_end / bin_s))

    def index(t: float) -> int:
        return min(int(t // bin_s), len(totals) - 1)

    for start, end, amount in spans:
        if end <= start:
            totals[index(end)] += amount
            continue
        for i in range(index(start), index(end) + 1):
            overlap = min(end, (i + 1) * bin_s) - max(start, i * bin_s)
            if i == len(totals) - 1:  # the last bin also takes what lies past its edge (float rounding)
                overlap = end - max(start, i * bin_s)
            totals[i] += amount * max(0.0, overlap) / (end - start)
    return [(i * bin_s, total / bin_s) for i, total in enumerate(totals)]


def throughput_over_time(run: ModeRun, bin_s: float) -> list[tuple[float, float]]:
    """Output tokens per second in consecutive ``bin_s`` bins from the run's start: each ok request's output tokens
    are spread uniformly between its first token and its finish. The bins' ``rate * bin_s`` sum to the output tokens
    of the ok requests. Returns ``(bin start in seconds, tokens/s)``; empty when no request finished ok."""
    spans = []
    for r in run.requests:
        if r.ok and r.finished_s is not None and r.output_tokens > 0:
            start = r.first_token_s if r.first_token_s is not None else r.finished_s
            spans.append((start, r.finished_s, float(r.output_tokens)))
    return _binned(spans, bin_s)


def completions_over_time(run: ModeRun, bin_s: float) -> list[tuple[float, float]]:
    """Requests finished ok per second in consecutive ``bin_s`` bins (by finish time): ``(bin start, requests/s)``."""
    spans = [(r.finished_s, r.finished_s, 1.0) for r in run.requests if r.ok and r.finished_s is not None]
    return _binned(spans, bin_s)


def _fixed(digits: int, scale: float = 1.0, suffix: str = "") -> Callable[[Any], str]:
    def render(value: Any) -> str:
        return f"{value * scale:,.{digits}f}{suffix}" if _is_number(value) else "-"

    return render


def _goodput_cell(summary: Mapping[str, Any]) -> str:
    rate, fraction = summary.get("goodput_rps"), summary.get("goodput_fraction")
    if not _is_number(rate):
        return "-"
    return f"{rate:,.2f}/s ({fraction:.0%})" if _is_number(fraction) else f"{rate:,.2f}/s"


def _retractions_cell(summary: Mapping[str, Any]) -> str:
    value = summary.get("engine_retractions")
    return f"{value:,.0f}" if _is_number(value) else "-"


# (column, summary key whose ratio goes in the ratio row or None, how a summary renders in the cell)
_Column = tuple[str, str | None, Callable[[Mapping[str, Any]], str]]


def _key(name: str, render: Callable[[Any], str]) -> Callable[[Mapping[str, Any]], str]:
    return lambda summary: render(summary.get(name))


def _columns(with_sessions: bool) -> list[_Column]:
    ms, s = _fixed(1, 1000.0), _fixed(2)
    columns: list[_Column] = [
        ("done/sent", None, lambda x: f"{x.get('requests_completed', 0)}/{x.get('requests_sent', 0)}"),
        ("TTFT p50 (ms)", "ttft_p50", _key("ttft_p50", ms)),
        ("TTFT p95 (ms)", "ttft_p95", _key("ttft_p95", ms)),
        ("TPOT p50 (ms)", "tpot_p50", _key("tpot_p50", ms)),
        ("e2e p95 (s)", "e2e_p95", _key("e2e_p95", s)),
    ]
    if with_sessions:
        columns += [
            ("JCT mean (s)", "jct_mean", _key("jct_mean", s)),
            ("JCT p95 (s)", "jct_p95", _key("jct_p95", s)),
        ]
    columns += [
        ("req/s", "request_throughput", _key("request_throughput", s)),
        ("out tok/s", "output_tokens_per_s", _key("output_tokens_per_s", _fixed(1))),
        ("goodput", "goodput_rps", _goodput_cell),
        ("prefix hit", "prefix_hit_rate", _key("prefix_hit_rate", _fixed(1, 100.0, "%"))),
        ("retractions", None, _retractions_cell),
    ]
    return columns


def summary_table_rows(
    summaries: Mapping[str, Mapping[str, Any]], ratios: Mapping[str, float] | None = None
) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows (cells already formatted as strings, ``-`` for no data) for the terminal and markdown table:
    one row per mode, then a ``RATIO_ROW_LABEL`` row with ``ratios`` (``x`` suffixed; > 1: plait better) when given.
    JCT columns appear when any mode ran sessions."""
    with_sessions = any(s.get("sessions") for s in summaries.values())
    columns = _columns(with_sessions)
    rows: list[list[Any]] = [
        [mode, *(render(summary) for _, _, render in columns)] for mode, summary in summaries.items()
    ]
    if ratios:
        rows.append(
            [
                RATIO_ROW_LABEL,
                *(f"{ratios[key]:.2f}x" if key is not None and key in ratios else "" for _, key, _ in columns),
            ]
        )
    return ["mode", *(name for name, _, _ in columns)], rows
