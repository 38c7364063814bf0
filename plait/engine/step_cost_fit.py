"""The marginal device time of a prefill token, fitted online from the steps the engine ran.

A step's time is modelled as ``fixed + a * prefill_tokens + b * decode_rows`` and fitted by exponentially weighted
least squares over the recent steps. ``a`` is what one more prompt token costs everyone in the batch: the GPU work a
re-prefill displaces. It differs from a prompt's own latency to its first token (several steps shared with decodes,
plus any queueing), which over-states that work several times over.

With the overlap loop a step's wall time is spent waiting for the *previous* step's device work, so the engine feeds
the previous batch's sizes with it (``lagged``).
"""

from __future__ import annotations

_DECAY = 0.998  # per step: the fit remembers the last ~500 steps
_MIN_STEPS = 64  # steps seen before the fit is trusted
_MIN_PREFILL_SHARE = 0.05  # ... of which this weighted share must have carried prefill tokens


class StepCostFit:
    """Exponentially weighted least squares of step seconds on (1, prefill tokens, decode rows)."""

    def __init__(self, lagged: bool = False) -> None:
        self.lagged = lagged
        self.steps = 0
        self._previous: tuple[float, float] | None = None
        # Weighted sums of x x^T (x = (1, p, d)) and x y, kept as the 6 + 3 distinct entries.
        self._xx = [0.0] * 6  # 11, 1p, 1d, pp, pd, dd
        self._xy = [0.0] * 3
        self._with_prefill = 0.0  # weighted count of steps with prefill tokens

    def observe(self, prefill_tokens: int, decode_rows: int, seconds: float) -> None:
        """One step: its batch's sizes and its wall time (with ``lagged``, the sizes are paired with the next step's
        time)."""
        sizes = (float(prefill_tokens), float(decode_rows))
        if self.lagged:
            sizes, self._previous = self._previous, sizes
            if sizes is None:
                return
        p, d = sizes
        xx, xy = self._xx, self._xy
        for i in range(6):
            xx[i] *= _DECAY
        for i in range(3):
            xy[i] *= _DECAY
        self._with_prefill *= _DECAY
        xx[0] += 1.0
        xx[1] += p
        xx[2] += d
        xx[3] += p * p
        xx[4] += p * d
        xx[5] += d * d
        xy[0] += seconds
        xy[1] += p * seconds
        xy[2] += d * seconds
        self._with_prefill += p > 0
        self.steps += 1

    @property
    def prefill_s_per_token(self) -> float | None:
        """Marginal seconds per prefill token, or None until the steps seen can separate it (too few steps, too few
        with prefills, prefill sizes that always moved with the decode count, or a non-positive slope)."""
        xx = self._xx
        if self.steps < _MIN_STEPS or self._with_prefill < _MIN_PREFILL_SHARE * xx[0]:
            return None
        n, sp, sd, spp, spd, sdd = xx
        sy, spy, sdy = self._xy
        # Centre on the means; the slope on prefill tokens from the 2x2 normal equations (Cramer's rule).
        cpp = spp - sp * sp / n
        cpd = spd - sp * sd / n
        cdd = sdd - sd * sd / n
        cpy = spy - sp * sy / n
        cdy = sdy - sd * sy / n
        det = cpp * cdd - cpd * cpd
        if cpp <= 0:
            return None
        if cdd <= 1e-9 * max(1.0, n):  # the decode count never changed: one regressor
            slope = cpy / cpp
        elif det <= 1e-6 * cpp * cdd:  # collinear: the two effects cannot be told apart
            return None
        else:
            slope = (cpy * cdd - cdy * cpd) / det
        return slope if slope > 0 else None
