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
