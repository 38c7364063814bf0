"""The planner's prefill model separates a call's fixed cost from its per-token cost, so reload costs are right."""

from __future__ import annotations

import random

import pytest

from plait.runtime.planning.durations import DurationModel, PrefillFit


def test_fixed_and_per_token_costs_are_separated():
    model = DurationModel()
    rng = random.Random(0)
    for _ in range(100):
        tokens = rng.choice([50, 200, 800, 3000])
        model.observe_llm(tokens, 0.04 + 2e-5 * tokens + rng.uniform(-0.002, 0.002), 10, 0.1)
    assert model.prefill_s_per_token == pytest.approx(2e-5, rel=0.1)
    assert model.prefill.overhead_s == pytest.approx(0.04, rel=0.1)
    # Recomputing a 20k-token context costs its per-token part; a ratio of the averages would say ~10x more.
    assert model.reload_cost_s(20_000) == pytest.approx(0.4, rel=0.1)


def test_alike_sizes_or_a_meaningless_fit_fall_back_to_the_ratio():
    fit = PrefillFit(1e-3)
    for _ in range(20):
        fit.observe(100, 0.05)
    assert fit.s_per_token == pytest.approx(5e-4) and fit.overhead_s == 0.0
    falling = PrefillFit(1e-3)
    for tokens, seconds in [(100, 0.5), (1000, 0.1)] * 10:  # larger calls faster: no usable slope
        falling.observe(tokens, seconds)
    assert falling.s_per_token == pytest.approx(6.0 / 11_000) and falling.overhead_s == 0.0


def test_the_prior_holds_until_calls_are_seen():
    model = DurationModel(prefill_s_per_token=3e-4)
    assert model.prefill_s_per_token == 3e-4 and model.reload_cost_s(1000) == pytest.approx(0.3)
    model.observe_llm(0, 0.1, 0, 0.0)  # nothing computed: nothing learned
    assert model.prefill_s_per_token == 3e-4
