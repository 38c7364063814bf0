"""Whether a quantity sampled over a soak stays flat: the server's RSS (a least-squares slope against a threshold) and
the journal's size (no new growth once finished workflows are being deleted).

Each check gives a ``Verdict``: ``flat`` or ``growing`` when the samples decide it, ``inconclusive`` when they cannot
(too few samples, a window shorter than ``MIN_WINDOW_S``, or an RSS slope above the threshold whose growth over the
window is within ``RSS_NOISE_MIB``: one allocator step in a short window is a steep slope, not a leak). Only
``growing`` fails a soak.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

MIB = 1024 * 1024
MIN_SAMPLES = 5  # fewest samples a trend is computed from
MIN_WINDOW_S = 60.0  # a trend is judged only over a window at least this long (shorter: inconclusive)
# Default RSS threshold: 32 MiB per hour is 16 MiB over a 30-minute soak; a leak of 1 KiB per operation at 10
# operations per second (35 MiB/h) is above it.
MAX_RSS_SLOPE_MIB_PER_H = 32.0
# Fitted RSS growth over the whole window that a slope above the threshold needs to count as growing: less is within
# the steps in which the allocator takes memory (a few MiB each), so a longer run has to decide.
RSS_NOISE_MIB = 8.0
# The journal is bounded when, once retention deletes finished workflows, its second half-window adds at most this
# share of its size plus ``JOURNAL_SLACK_BYTES`` (SQLite reuses freed pages; its WAL file grows up to a checkpoint).
JOURNAL_GROWTH_TOLERANCE = 0.10
JOURNAL_SLACK_BYTES = 1 * MIB


class Verdict(StrEnum):
    FLAT = "flat"
    GROWING = "growing"
    INCONCLUSIVE = "inconclusive"
    NOT_MEASURED = "not measured"


@dataclass(frozen=True)
class LinearFit:
    """``value ≈ intercept + slope * t`` by least squares; ``slope_stderr`` is the slope's standard error."""

    slope: float  # value units per second
    intercept: float
    slope_stderr: float
    samples: int
    window_s: float


def linear_fit(times_s: list[float], values: list[float]) -> LinearFit | None:
    """The least-squares line through ``(times_s[i], values[i])``; None for fewer than two distinct times."""
    n = len(times_s)
    if n != len(values):
        raise ValueError(f"{n} times but {len(values)} values")
    if n < 2:
        return None
    t_mean = sum(times_s) / n
    v_mean = sum(values) / n
    sxx = sum((t - t_mean) ** 2 for t in times_s)
    if sxx == 0.0:
        return None
    slope = sum((t - t_mean) * (v - v_mean) for t, v in zip(times_s, values, strict=True)) / sxx
    intercept = v_mean - slope * t_mean
    residual = sum((v - intercept - slope * t) ** 2 for t, v in zip(times_s, values, strict=True))
    stderr = math.sqrt(residual / (n - 2) / sxx) if n > 2 else math.inf
    return LinearFit(slope, intercept, stderr, n, max(times_s) - min(times_s))


@dataclass(frozen=True)
class RssTrend:
    """The RSS slope over the samples after the warm-up, and its verdict against ``max_slope_mib_per_h``."""

    verdict: Verdict
    reason: str
    max_slope_mib_per_h: float
    warmup_s: float
    slope_mib_per_h: float | None = None
    slope_stderr_mib_per_h: float | None = None
    samples: int = 0
    window_s: float = 0.0
    fit_start_mib: float | None = None  # the fitted line at the window's first sample (for plots)
    fit_start_s: float | None = None

    def to_json(self) -> dict[str, Any]:
        """As JSON values: the verdict as its string, an infinite warm-up (no fit) as None."""
        return {k: _jsonable(v) for k, v in asdict(self).items()}


def _jsonable(value: Any) -> Any:
    if isinstance(value, Verdict):
        return str(value)
    if isinstance(value, float) and math.isinf(value):
        return None
    return value


def rss_trend(
    times_s: list[float],
    rss_bytes: list[float],
    *,
    warmup_s: float,
    max_slope_mib_per_h: float = MAX_RSS_SLOPE_MIB_PER_H,
) -> RssTrend:
    """Rule: fit the samples taken at ``t >= warmup_s``; ``flat`` when the slope is at most ``max_slope_mib_per_h``;
    ``growing`` when above it and the fitted growth over the window exceeds ``RSS_NOISE_MIB``; ``inconclusive`` when
    above it within that noise, or with fewer than ``MIN_SAMPLES`` samples, or a window under ``MIN_WINDOW_S``. No
    samples at all (a ``--target`` server whose process is not ours): ``not measured``."""
    base = {"max_slope_mib_per_h": max_slope_mib_per_h, "warmup_s": warmup_s}
    if not times_s:
        return RssTrend(Verdict.NOT_MEASURED, "no RSS samples (the server is not a process of this run)", **base)
    kept = [(t, v / MIB) for t, v in zip(times_s, rss_bytes, strict=True) if t >= warmup_s]
    fit = linear_fit([t for t, _ in kept], [v for _, v in kept])
    if fit is None or fit.samples < MIN_SAMPLES:
        reason = f"{len(kept)} samples after the {warmup_s:.0f} s warm-up; a trend needs {MIN_SAMPLES}"
        if math.isinf(warmup_s):
            reason = "the warm-up did not end within the run (too few operations); no trend"
        return RssTrend(Verdict.INCONCLUSIVE, reason, samples=len(kept), **base)
    slope = fit.slope * 3600.0
    measured = {
        "slope_mib_per_h": slope,
        "slope_stderr_mib_per_h": fit.slope_stderr * 3600.0,
        "samples": fit.samples,
        "window_s": fit.window_s,
        "fit_start_s": kept[0][0],
        "fit_start_mib": fit.intercept + fit.slope * kept[0][0],
    }
    if fit.window_s < MIN_WINDOW_S:
        reason = f"a {fit.window_s:.0f} s window after the warm-up; a verdict needs {MIN_WINDOW_S:.0f} s"
        return RssTrend(Verdict.INCONCLUSIVE, reason, **base, **measured)
    if slope <= max_slope_mib_per_h:
        reason = f"{slope:+.1f} MiB/h <= {max_slope_mib_per_h:g} MiB/h"
        return RssTrend(Verdict.FLAT, reason, **base, **measured)
    growth_mib = fit.slope * fit.window_s
    if growth_mib <= RSS_NOISE_MIB:
        reason = (
            f"{slope:+.1f} MiB/h > {max_slope_mib_per_h:g} MiB/h, but {growth_mib:+.1f} MiB over the "
            f"{fit.window_s:.0f} s window is within the {RSS_NOISE_MIB:g} MiB noise floor: run longer"
        )
        return RssTrend(Verdict.INCONCLUSIVE, reason, **base, **measured)
    reason = f"{slope:+.1f} MiB/h > {max_slope_mib_per_h:g} MiB/h ({growth_mib:+.1f} MiB over {fit.window_s:.0f} s)"
    return RssTrend(Verdict.GROWING, reason, **base, **measured)


@dataclass(frozen=True)
class JournalTrend:
    """The journal's size after ``horizon_s`` (the retention horizon): bounded when its second half-window adds at
    most ``JOURNAL_GROWTH_TOLERANCE`` of the first half's peak plus ``JOURNAL_SLACK_BYTES``."""

    verdict: Verdict
    reason: str
    horizon_s: float
    first_half_peak_bytes: int | None = None
    second_half_peak_bytes: int | None = None
    slope_mib_per_h: float | None = None
    window_s: float = 0.0
    samples: int = 0

    def to_json(self) -> dict[str, Any]:
        """As JSON values (the verdict as its string)."""
        return {k: _jsonable(v) for k, v in asdict(self).items()}


def journal_trend(times_s: list[float], sizes_bytes: list[int | None], *, horizon_s: float) -> JournalTrend:
    """Rule: split the samples taken at ``t >= horizon_s`` into two halves by time; ``flat`` (bounded) when the
    second half's peak is at most ``(1 + JOURNAL_GROWTH_TOLERANCE) * first half's peak + JOURNAL_SLACK_BYTES``,
    ``growing`` otherwise; ``inconclusive`` with fewer than ``MIN_SAMPLES`` samples or a window under
    ``MIN_WINDOW_S``; ``not measured`` without a journal."""
    pairs = [(t, s) for t, s in zip(times_s, sizes_bytes, strict=True) if s is not None]
    if not pairs:
        return JournalTrend(Verdict.NOT_MEASURED, "no journal (no data directory to measure)", horizon_s)
    kept = [(t, s) for t, s in pairs if t >= horizon_s]
    window_s = kept[-1][0] - kept[0][0] if kept else 0.0
    fit = linear_fit([t for t, _ in kept], [s / MIB for _, s in kept])
    slope = fit.slope * 3600.0 if fit is not None else None
    if len(kept) < MIN_SAMPLES or window_s < MIN_WINDOW_S:
        reason = (
            f"{len(kept)} samples over {window_s:.0f} s after the {horizon_s:.0f} s retention horizon; a verdict "
            f"needs {MIN_SAMPLES} samples over {MIN_WINDOW_S:.0f} s"
        )
        return JournalTrend(Verdict.INCONCLUSIVE, reason, horizon_s, None, None, slope, window_s, len(kept))
    middle = kept[0][0] + window_s / 2
    first = max(s for t, s in kept if t <= middle)
    second = max(s for t, s in kept if t > middle)
    bound = (1 + JOURNAL_GROWTH_TOLERANCE) * first + JOURNAL_SLACK_BYTES
    verdict = Verdict.FLAT if second <= bound else Verdict.GROWING
    sign = "<=" if verdict is Verdict.FLAT else ">"
    reason = (
        f"second half's peak {second / MIB:.2f} MiB {sign} {bound / MIB:.2f} MiB (first half's peak "
        f"{first / MIB:.2f} MiB + {JOURNAL_GROWTH_TOLERANCE:.0%} + {JOURNAL_SLACK_BYTES / MIB:g} MiB)"
    )
    return JournalTrend(verdict, reason, horizon_s, first, second, slope, window_s, len(kept))
