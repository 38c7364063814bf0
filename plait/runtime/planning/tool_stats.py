"""Online per-tool duration statistics, with a log-normal cold-start prior, for cost/benefit decisions.

``ToolDurationStats`` keeps a bounded window of each tool's most recent durations. ``distribution(tool)`` turns it
into a ``DurationDistribution`` (weighted points): the observed samples alone once a tool has ``min_samples`` of them,
before that the samples blended with a fixed set of quantile points of a log-normal prior that counts as
``prior_weight`` pseudo-observations. Callers (e.g. ``plait.runtime.planning.pin_ttl``) never see an empty distribution.
"""

from __future__ import annotations

import bisect
import itertools
import math
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from statistics import NormalDist

_PRIOR_POINTS = 32


@dataclass(frozen=True)
class DurationDistribution:
    """A discrete distribution of durations in seconds: ``values`` sorted ascending, ``weights`` summing to 1."""

    values: list[float]
    weights: list[float]
    # Prefix sums of weights and of weight*value, so cdf / expected_min are O(log n).
    _cum_w: list[float] = field(init=False, repr=False, compare=False)
    _cum_wv: list[float] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.values or len(self.values) != len(self.weights):
            raise ValueError("values and weights must be non-empty and of equal length")
        if any(b < a for a, b in itertools.pairwise(self.values)):
            raise ValueError("values must be sorted ascending")
        if any(not w >= 0 for w in self.weights) or not math.isclose(sum(self.weights), 1.0, abs_tol=1e-9):
            raise ValueError("weights must be non-negative and sum to 1")
        cum_w, cum_wv, sw, swv = [], [], 0.0, 0.0
        for v, w in zip(self.values, self.weights, strict=True):
            sw += w
            swv += w * v
            cum_w.append(sw)
            cum_wv.append(swv)
        object.__setattr__(self, "_cum_w", cum_w)
        object.__setattr__(self, "_cum_wv", cum_wv)

    @classmethod
    def from_samples(cls, samples: Iterable[float], weights: Iterable[float] | None = None) -> DurationDistribution:
        """Build from unsorted samples (equal weights unless given); merges equal values and normalises weights."""
        xs = list(samples)
        ws = [1.0] * len(xs) if weights is None else list(weights)
        if len(xs) != len(ws) or not xs:
            raise ValueError("samples and weights must be non-empty and of equal length")
        total = sum(ws)
        if not total > 0:
            raise ValueError("weights must sum to a positive number")
        values: list[float] = []
        merged: list[float] = []
        for v, w in sorted(zip(xs, ws, strict=True)):
            if values and values[-1] == v:
                merged[-1] += w / total
            else:
                values.append(float(v))
                merged.append(w / total)
        return cls(values, merged)

    def cdf(self, t: float) -> float:
        """P(D <= t)."""
        i = bisect.bisect_right(self.values, t)
        return min(1.0, self._cum_w[i - 1]) if i else 0.0

    def expected_min(self, t: float) -> float:
        """E[min(D, t)]: how long something released at ``t`` at the latest is held on average."""
        i = bisect.bisect_right(self.values, t)
        below_w = self._cum_w[i - 1] if i else 0.0
        below_wv = self._cum_wv[i - 1] if i else 0.0
        return below_wv + t * max(0.0, 1.0 - below_w)

    def quantile(self, q: float) -> float:
        """The smallest value ``v`` with P(D <= v) >= q (``q`` in [0, 1])."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"q must be in [0, 1], got {q}")
        i = bisect.bisect_left(self._cum_w, q - 1e-12)  # tolerance: prefix sums carry rounding error
        return self.values[min(i, len(self.values) - 1)]

    def mean(self) -> float:
        """E[D]."""
        return self._cum_wv[-1]


def lognormal_points(median: float, sigma: float, n: int = _PRIOR_POINTS) -> list[float]:
    """``n`` quantiles of a log-normal with the given median and sigma, at the midpoints (i + 0.5) / n."""
    z = NormalDist()
    return [median * math.exp(sigma * z.inv_cdf((i + 0.5) / n)) for i in range(n)]


class ToolDurationStats:
    """Per-tool durations observed online, with a cold-start prior for tools seen fewer than ``min_samples`` times.

    Thread-safe: tools may finish on executor threads while the planner reads distributions.
    """

    def __init__(
        self,
        *,
        window: int = 256,
        min_samples: int = 5,
        prior_median_s: float = 2.0,
        prior_sigma: float = 1.0,
        prior_weight: float = 5.0,
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if min_samples < 0:
            raise ValueError(f"min_samples must be >= 0, got {min_samples}")
        if not (prior_median_s > 0 and math.isfinite(prior_median_s)):
            raise ValueError(f"prior_median_s must be positive and finite, got {prior_median_s}")
        if not (prior_sigma >= 0 and math.isfinite(prior_sigma)):
            raise ValueError(f"prior_sigma must be non-negative and finite, got {prior_sigma}")
        if not (prior_weight > 0 and math.isfinite(prior_weight)):
            raise ValueError(f"prior_weight must be positive and finite, got {prior_weight}")
        self.window = window
        self.min_samples = min_samples
        self.prior_weight = prior_weight
        self.prior_points = lognormal_points(prior_median_s, prior_sigma)
        self._samples: dict[str, deque[float]] = {}
        # Built distributions by tool, dropped when the tool records a duration: planning reads a tool's distribution
        # for every stage estimate, far more often than the tool finishes.
        self._distributions: dict[str, DurationDistribution] = {}
        self._recorded = 0  # record() calls so far: a distribution built across one is not cached
        self._lock = threading.Lock()

    def record(self, tool: str, seconds: float) -> None:
        """Record one duration of ``tool``. NaN, infinite and negative durations are dropped silently (not an error:
        a clock glitch must not fail the program that ran the tool)."""
        if not (math.isfinite(seconds) and seconds >= 0):
            return
        with self._lock:
            window = self._samples.get(tool)
            if window is None:
                window = self._samples[tool] = deque(maxlen=self.window)
            window.append(float(seconds))
            self._recorded += 1
            self._distributions.pop(tool, None)

    def samples(self, tool: str) -> list[float]:
        """The observed durations of ``tool`` in the window, oldest first (no prior points)."""
        with self._lock:
            return list(self._samples.get(tool, ()))

    def distribution(self, tool: str) -> DurationDistribution:
        """The duration distribution used for decisions: observed samples, plus the prior while they are few."""
        with self._lock:
            cached = self._distributions.get(tool)
            observed = list(self._samples.get(tool, ())) if cached is None else []
            recorded = self._recorded
        if cached is not None:
            return cached
        if len(observed) >= self.min_samples and observed:
            built = DurationDistribution.from_samples(observed)
        else:
            # Each observation weighs 1; the prior's points share prior_weight between them.
            prior_w = self.prior_weight / len(self.prior_points)
            built = DurationDistribution.from_samples(
                observed + self.prior_points, [1.0] * len(observed) + [prior_w] * len(self.prior_points)
            )
        with self._lock:
            if self._recorded == recorded:  # no record() in between (else the next call builds it again)
                self._distributions[tool] = built
        return built

    def summary(self) -> dict[str, dict]:
        """Per tool with observations: ``count``, ``mean``, ``p50``, ``p90`` of the observed samples only."""
        with self._lock:
            snapshot = {tool: list(window) for tool, window in self._samples.items() if window}
        out: dict[str, dict] = {}
        for tool, xs in sorted(snapshot.items()):
            d = DurationDistribution.from_samples(xs)
            out[tool] = {"count": len(xs), "mean": d.mean(), "p50": d.quantile(0.5), "p90": d.quantile(0.9)}
        return out
