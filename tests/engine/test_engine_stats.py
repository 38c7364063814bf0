"""The step meter's per-second rates: kept as running sums over the window, equal to summing the window anew."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

from plait.engine import engine_stats
from plait.engine.engine_stats import RATE_WINDOW_S, ThroughputMeter


def _batch(decodes: int, chunks: list[int]) -> SimpleNamespace:
    decode_items = [SimpleNamespace(samples=True, new_len=1) for _ in range(decodes)]
    extend_items = [SimpleNamespace(samples=i % 2 == 0, new_len=n) for i, n in enumerate(chunks)]
    return SimpleNamespace(decodes=decode_items, extends=extend_items, seqs=decode_items + extend_items)


def test_rates_match_a_fresh_sum_over_the_window(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(engine_stats.time, "perf_counter", lambda: now[0])
    meter = ThroughputMeter()
    assert meter.rate(1) == 0.0 and meter.rate(2) == 0.0
    rng = random.Random(7)
    steps: list[tuple[float, int, int]] = []
    for _ in range(600):  # several windows long, with gaps that empty it
        now[0] += rng.choice([0.01, 0.02, 0.5, RATE_WINDOW_S + 1]) if rng.random() < 0.05 else 0.015
        batch = _batch(rng.randrange(0, 40), [rng.randrange(1, 512) for _ in range(rng.randrange(0, 3))])
        meter.account(batch)
        steps.append((now[0], sum(1 for s in batch.seqs if s.samples), sum(s.new_len for s in batch.extends)))
        window = [s for s in steps if now[0] - s[0] <= RATE_WINDOW_S]
        span = window[-1][0] - window[0][0]
        for column in (1, 2):
            expected = sum(s[column] for s in window[1:]) / span if len(window) > 1 and span > 0 else 0.0
            assert meter.rate(column) == pytest.approx(expected)


# ---- the marginal cost of a prefill token ------------------------------------------------------------------------


def _step_time(prefill: int, decodes: int, rng: random.Random) -> float:
    """A step: 5 ms fixed, 20 us per prefill token, 0.1 ms per decode row, a little noise."""
    return 0.005 + 2e-5 * prefill + 1e-4 * decodes + rng.gauss(0.0, 2e-4)


def test_step_cost_fit_finds_the_per_token_slope_beside_decodes():
    from plait.engine.step_cost_fit import StepCostFit

    rng = random.Random(3)
    fit = StepCostFit()
    for i in range(400):
        prefill = rng.choice([0, 0, 0, rng.randrange(64, 4096)])
        decodes = rng.randrange(20, 80) - prefill // 200  # prefills crowd decodes out: correlated, not collinear
        fit.observe(prefill, decodes, _step_time(prefill, decodes, rng))
        if i < 63:
            assert fit.prefill_s_per_token is None  # too few steps to trust
    assert fit.prefill_s_per_token == pytest.approx(2e-5, rel=0.05)


def test_step_cost_fit_finds_the_fixed_share_of_a_step():
    """5 ms fixed out of a mean step of 5 ms + 20 us per prefill token + 0.1 ms per decode row: the fixed share is
    5 ms over the mean step time; it needs both slopes, so a decode count that never varies leaves it unknown."""
    from plait.engine.step_cost_fit import StepCostFit

    rng = random.Random(5)
    fit, constant_rows = StepCostFit(), StepCostFit()
    times = []
    for i in range(400):
        prefill = rng.choice([0, 0, 0, rng.randrange(64, 4096)])
        decodes = rng.randrange(20, 80) - prefill // 200
        seconds = _step_time(prefill, decodes, rng)
        times.append(seconds)
        fit.observe(prefill, decodes, seconds)
        constant_rows.observe(prefill, 40, _step_time(prefill, 40, rng))
        if i < 63:
            assert fit.fixed_share is None  # too few steps to trust
    # The fit weights recent steps more; the plain mean of the last ~500 steps is close to its weighted mean.
    assert fit.fixed_share == pytest.approx(0.005 / (sum(times) / len(times)), rel=0.1)
    assert 0.0 < fit.fixed_share < 1.0
    assert constant_rows.prefill_s_per_token == pytest.approx(2e-5, rel=0.05)
    assert constant_rows.fixed_share is None


def test_lagged_step_cost_fit_pairs_a_step_time_with_the_batch_before():
    """With the overlap loop a step waits for the previous batch's device work: fed as it happens (sizes of step k
    with the time of step k, which is the work of step k - 1), the lagged fit recovers the slope, the unlagged none."""
    from plait.engine.step_cost_fit import StepCostFit

    rng = random.Random(4)
    lagged, unlagged = StepCostFit(lagged=True), StepCostFit()
    previous = (0, 40)
    for _ in range(600):
        batch = (rng.choice([0, rng.randrange(64, 4096)]), rng.randrange(20, 80))
        seconds = _step_time(*previous, rng)  # this step's wall time: the previous batch's device work
        lagged.observe(*batch, seconds)
        unlagged.observe(*batch, seconds)
        previous = batch
    assert lagged.prefill_s_per_token == pytest.approx(2e-5, rel=0.05)
    assert unlagged.prefill_s_per_token is None or unlagged.prefill_s_per_token < 2e-6


def test_lagged_fit_pairs_time_with_the_work_queued_before_a_read_back():
    """Prompt chunks that sample nothing leave nothing to read back: the next step waits for nothing and the device
    work queued meanwhile is waited for at the next read-back. Modelled as a device queue at low load (one prompt at
    a time, chunked, then a few decodes), the fit still finds the per-token slope; so does an idle gap."""
    from plait.engine.step_cost_fit import StepCostFit

    rng = random.Random(9)
    fit = StepCostFit(lagged=True)
    host_s = 0.002
    now = device_free = 0.0
    pending_end: float | None = None  # when the last step whose tokens are still to be read back ends on the device
    for _ in range(300):
        prompt = rng.randrange(256, 3000)
        steps = [(min(512, prompt - i), 0, i + 512 >= prompt) for i in range(0, prompt, 512)]
        steps += [(0, 1, True)] * rng.randrange(2, 6)
        for prefill, decodes, samples in steps:
            started = now
            device_free = max(now + host_s, device_free) + _step_time(prefill, decodes, rng)
            read_back = pending_end is not None
            now = max(now + host_s, pending_end) if read_back else now + host_s
            pending_end = device_free if samples else None
            fit.observe(prefill, decodes, now - started, read_back)
        if rng.random() < 0.2:  # the engine goes idle: the last step is read back untimed
            fit.idle()
            now, pending_end = max(now, device_free) + 0.5, None
    assert fit.prefill_s_per_token == pytest.approx(2e-5, rel=0.1)


def test_step_cost_fit_says_nothing_without_prefills_or_with_a_flat_or_falling_cost():
    from plait.engine.step_cost_fit import StepCostFit

    rng = random.Random(5)
    decode_only = StepCostFit()
    for _ in range(200):
        decodes = rng.randrange(1, 64)
        decode_only.observe(0, decodes, _step_time(0, decodes, rng))
    assert decode_only.prefill_s_per_token is None
    falling = StepCostFit()
    for _ in range(200):
        prefill = rng.randrange(0, 2048)
        falling.observe(prefill, 32, 0.02 - 1e-6 * prefill)
    assert falling.prefill_s_per_token is None  # a non-positive slope is no cost to plan with
    collinear = StepCostFit()
    for _ in range(200):
        rows = rng.randrange(0, 32)
        collinear.observe(64 * rows, rows, _step_time(64 * rows, rows, rng))
    assert collinear.prefill_s_per_token is None  # prefill and decode sizes moved together: cannot be told apart
    for prefill, decodes in ((512, 40), (3, 7), (1000, 1)):  # one size throughout: rounding residue, not a slope
        constant = StepCostFit()
        for _ in range(1000):
            constant.observe(prefill, decodes, rng.uniform(0.01, 0.03))
        assert constant.prefill_s_per_token is None


def test_the_meter_feeds_the_fit():
    meter = ThroughputMeter()
    rng = random.Random(6)
    for _ in range(200):
        chunks = [rng.randrange(64, 1024)] if rng.random() < 0.5 else []
        decodes = rng.randrange(8, 64)
        meter.account(_batch(decodes, chunks), _step_time(sum(chunks), decodes, rng))
    assert meter.cost_fit.prefill_s_per_token == pytest.approx(2e-5, rel=0.1)
