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


def test_the_meter_feeds_the_fit_and_engine_stats_report_it():
    meter = ThroughputMeter()
    rng = random.Random(6)
    for _ in range(200):
        chunks = [rng.randrange(64, 1024)] if rng.random() < 0.5 else []
        decodes = rng.randrange(8, 64)
        meter.account(_batch(decodes, chunks), _step_time(sum(chunks), decodes, rng))
    assert meter.cost_fit.prefill_s_per_token == pytest.approx(2e-5, rel=0.1)
