"""The marginal device time of a prefill token, and the fixed share of a step, fitted online from the steps run.

A step's time is modelled as ``fixed + a * prefill_tokens + b * decode_rows`` and fitted by exponentially weighted
least squares over the recent steps. ``a`` is what one more prompt token costs everyone in the batch: the GPU work a
re-prefill displaces. It differs from a prompt's own latency to its first token (several steps shared with decodes,
plus any queueing), which over-states that work several times over. ``fixed`` over the mean step time is what memory
that keeps decode rows out costs: the same rows run over more steps, and only the fixed part is paid again.

With the overlap loop (``lagged``) a step's wall time is spent waiting for device work queued *before* it: the
engine reads back the previous step's tokens while this step's batch computes. A step that had nothing to read back
(the previous batch sampled no token: prompt chunks only) waits for nothing, and the work queued meanwhile is waited
for at the next read-back. So the lagged fit sums wall times and batch sizes between read-backs and pairs them there:
the time up to a read-back with the batches queued before it, as one observation of their mean (the model is
linear, so the mean batch took the mean time, fixed part included). An idle engine drains what was in flight
without a step to time, so ``idle`` drops what was pending.
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
        # Lagged: batch sizes queued on the device and not yet waited for, and wall time since the last read-back.
        self._queued: tuple[float, float] | None = None
        self._queued_batches = 0
        self._waited_s = 0.0
        # Weighted sums of x x^T (x = (1, p, d)) and x y, kept as the 6 + 3 distinct entries.
        self._xx = [0.0] * 6  # 11, 1p, 1d, pp, pd, dd
        self._xy = [0.0] * 3
        self._with_prefill = 0.0  # weighted count of steps with prefill tokens
        # The slopes solved at step ``_solved_at``: engine stats read both fitted values every step.
        self._solved: tuple[float | None, float | None] | None = None
        self._solved_at = -1

    def observe(self, prefill_tokens: int, decode_rows: int, seconds: float, read_back: bool = True) -> None:
        """One step: its batch's sizes and its wall time. With ``lagged``, ``read_back`` says whether the step waited
        for an earlier step's tokens: its time (and that of the steps since the last read-back) is paired with the
        batches queued before it, and its own batch waits for the next read-back."""
        sizes = (float(prefill_tokens), float(decode_rows))
        if not self.lagged:
            self._add(sizes, seconds)
            return
        self._waited_s += seconds
        if read_back and self._queued is not None:
            k = self._queued_batches
            self._add((self._queued[0] / k, self._queued[1] / k), self._waited_s / k)
            self.idle()
        if self._queued is None:
            self._queued = sizes
        else:
            self._queued = (self._queued[0] + sizes[0], self._queued[1] + sizes[1])
        self._queued_batches += 1

    def idle(self) -> None:
        """The engine drained its in-flight work with no batch to time: what was pending cannot be paired."""
        self._queued, self._queued_batches, self._waited_s = None, 0, 0.0

    def _add(self, sizes: tuple[float, float], seconds: float) -> None:
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
        slopes = self._slopes()
        if slopes is None or slopes[0] is None or slopes[0] <= 0:
            return None
        return slopes[0]

    @property
    def fixed_share(self) -> float | None:
        """The share of the mean step's time that does not grow with its batch: ``fixed / mean step seconds``, in
        [0, 1]. Rows that memory keeps out of a step still run later, over more steps, and only the fixed part of
        each extra step is paid again: that memory displaces this share of the GPU work, not all of it. None
        until both slopes can be told apart (see ``prefill_s_per_token``) and the decode count has varied."""
        slopes = self._slopes()
        if slopes is None or slopes[0] is None or slopes[1] is None:
            return None
        n, sp, sd = self._xx[:3]
        mean_s = self._xy[0] / n
        if mean_s <= 0:
            return None
        fixed = mean_s - slopes[0] * sp / n - slopes[1] * sd / n
        return min(1.0, max(0.0, fixed / mean_s))

    def _slopes(self) -> tuple[float | None, float | None] | None:
        """(seconds per prefill token, seconds per decode row) by least squares on the centred sums; a slope is None
        where the data cannot tell it (that size never varied, or moved with the other). None until enough steps,
        enough of them with prefills, were seen. Solved once per step added."""
        if self._solved_at != self.steps:
            self._solved, self._solved_at = self._solve(), self.steps
        return self._solved

    def _solve(self) -> tuple[float | None, float | None] | None:
        xx = self._xx
        if self.steps < _MIN_STEPS or self._with_prefill < _MIN_PREFILL_SHARE * xx[0]:
            return None
        n, sp, sd, spp, spd, sdd = xx
        sy, spy, sdy = self._xy
        # Centre on the means; the slopes from the 2x2 normal equations (Cramer's rule).
        cpp = spp - sp * sp / n
        cpd = spd - sp * sd / n
        cdd = sdd - sd * sd / n
        cpy = spy - sp * sy / n
        cdy = sdy - sd * sy / n
        det = cpp * cdd - cpd * cpd
        # Relative thresholds: a size that never changed leaves only rounding residue after centring.
        if cpp <= 1e-9 * spp:
            return None
        if cdd <= 1e-9 * max(sdd, 1.0):  # the decode count never changed: one regressor
            return cpy / cpp, None
        if det <= 1e-6 * cpp * cdd:  # collinear: the two effects cannot be told apart
            return None
        return (cpy * cdd - cdy * cpd) / det, (cdy * cpp - cpy * cpd) / det
