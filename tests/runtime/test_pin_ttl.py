"""Pin TTLs chosen by cost/benefit from per-tool duration statistics (``tool_stats``, ``pin_ttl``)."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from plait.runtime.planning.pin_ttl import choose_pin_ttl
from plait.runtime.planning.tool_stats import DurationDistribution, ToolDurationStats

# A 2k-token program in an 8k-slot pool holds a quarter of the KV memory.
CTX = dict(context_tokens=2000, pool_slots=8000)


def _stats(tool: str, durations: list[float], **kwargs) -> ToolDurationStats:
    stats = ToolDurationStats(**kwargs)
    for d in durations:
        stats.record(tool, d)
    return stats


def test_cold_start_uses_prior():
    stats = ToolDurationStats()
    d = stats.distribution("never_seen")
    assert stats.samples("never_seen") == []
    assert len(d.values) == 32
    assert math.isclose(sum(d.weights), 1.0)
    assert d.quantile(0.5) == pytest.approx(2.0, rel=0.1)
    assert d.cdf(2.0) == pytest.approx(0.5, abs=0.05)
    # A few observations are blended with the prior (5 pseudo-observations), not trusted alone.
    stats.record("t", 0.5)
    stats.record("t", 0.5)
    blended = stats.distribution("t").cdf(0.5)
    assert 2 / 7 < blended < 0.5
    for _ in range(3):
        stats.record("t", 0.5)
    assert stats.distribution("t").values == [0.5]  # min_samples reached: prior dropped


def test_fast_tool_gets_short_ttl_with_certain_hit():
    rng = random.Random(1)
    stats = _stats("search", [rng.uniform(0.45, 0.55) for _ in range(200)])
    dec = choose_pin_ttl(stats.distribution("search"), **CTX, reload_cost_s=0.5, memory_pressure=0.8)
    assert dec.pin
    assert 0.5 <= dec.ttl_s < 2.0
    assert dec.hit_probability == pytest.approx(1.0, abs=0.02)
    assert dec.expected_benefit_s > dec.expected_cost_s
    assert "p(hit)=" in dec.reason


def test_slow_tool_under_pressure_is_not_pinned():
    rng = random.Random(2)
    stats = _stats("crawl", [rng.uniform(30.0, 60.0) for _ in range(100)])
    dec = choose_pin_ttl(stats.distribution("crawl"), **CTX, reload_cost_s=0.3, memory_pressure=0.9)
    assert not dec.pin
    assert dec.ttl_s == 0.0 and dec.hit_probability == 0.0
    assert dec.reason.startswith("no pin")


def test_higher_pressure_never_gives_longer_ttl():
    rng = random.Random(3)
    dists = [
        ToolDurationStats().distribution("cold"),
        DurationDistribution.from_samples([rng.lognormvariate(0.0, 1.5) for _ in range(256)]),
        DurationDistribution.from_samples([0.2] * 10 + [40.0] * 10),
        DurationDistribution.from_samples([rng.uniform(0.1, 90.0) for _ in range(64)]),
    ]
    pressures = [i / 20 for i in range(21)]
    for dist in dists:
        for reload in (0.05, 0.5, 3.0, 20.0):
            for tokens in (100, 4000, 8000):
                ttls = [
                    choose_pin_ttl(
                        dist, context_tokens=tokens, pool_slots=8000, reload_cost_s=reload, memory_pressure=p
                    ).ttl_s
                    for p in pressures
                ]
                assert all(a >= b for a, b in itertools.pairwise(ttls)), (reload, tokens, ttls)
    # The grid is not vacuous: TTLs do shrink with pressure somewhere.
    assert (
        choose_pin_ttl(dists[1], **CTX, reload_cost_s=0.5, memory_pressure=0.0).ttl_s
        > choose_pin_ttl(dists[1], **CTX, reload_cost_s=0.5, memory_pressure=1.0).ttl_s
    )


def test_zero_pressure_covers_observed_max():
    rng = random.Random(4)
    samples = [rng.uniform(0.1, 5.0) for _ in range(50)]
    dec = choose_pin_ttl(DurationDistribution.from_samples(samples), **CTX, reload_cost_s=0.2, memory_pressure=0.0)
    assert dec.ttl_s == max(samples)  # the shortest TTL that catches every observed return, not "forever"
    assert dec.hit_probability == pytest.approx(1.0)
    assert dec.expected_cost_s == 0.0
    # Beyond max_ttl it is capped.
    capped = choose_pin_ttl(
        DurationDistribution.from_samples(samples), **CTX, reload_cost_s=0.2, memory_pressure=0.0, max_ttl_s=2.0
    )
    assert capped.ttl_s <= 2.0 and capped.pin
    # Nothing to save: no pin even though memory is free.
    assert not choose_pin_ttl(
        DurationDistribution.from_samples(samples), **CTX, reload_cost_s=0.0, memory_pressure=0.0
    ).pin


def test_bimodal_picks_fast_mode_under_pressure():
    rng = random.Random(5)
    samples = [rng.uniform(0.18, 0.22) for _ in range(50)] + [rng.uniform(38.0, 42.0) for _ in range(50)]
    dec = choose_pin_ttl(DurationDistribution.from_samples(samples), **CTX, reload_cost_s=1.0, memory_pressure=0.8)
    assert 0.15 <= dec.ttl_s <= 0.25
    assert dec.hit_probability == pytest.approx(0.5, abs=0.02)


def test_bounded_window_drops_old_samples():
    stats = _stats("t", [float(i) for i in range(20)], window=10)
    assert stats.samples("t") == [float(i) for i in range(10, 20)]
    assert stats.summary()["t"]["count"] == 10
    assert stats.summary()["t"]["mean"] == pytest.approx(14.5)


def test_distribution_matches_brute_force():
    rng = random.Random(6)
    xs = [round(rng.uniform(0.0, 10.0), 1) for _ in range(15)] + [3.0, 3.0]  # with ties
    d = DurationDistribution.from_samples(xs)
    n = len(xs)
    srt = sorted(xs)
    for t in [-1.0, 0.0, 0.05, 3.0, 2.99, 5.5, 9.9, 10.0, 11.0, *xs]:
        assert d.cdf(t) == pytest.approx(sum(x <= t for x in xs) / n)
        assert d.expected_min(t) == pytest.approx(sum(min(x, t) for x in xs) / n)
    for q in [0.0, 0.01, 0.1, 0.25, 0.5, 0.5001, 0.9, 0.99, 1.0, *(k / n for k in range(n + 1))]:
        assert d.quantile(q) == srt[max(0, math.ceil(q * n - 1e-9) - 1)], q  # nearest rank
    assert d.mean() == pytest.approx(sum(xs) / n)
    with pytest.raises(ValueError, match="q"):
        d.quantile(1.5)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        (dict(context_tokens=-1), "context_tokens"),
        (dict(pool_slots=0), "pool_slots"),
        (dict(memory_pressure=-0.1), "memory_pressure"),
        (dict(memory_pressure=1.5), "memory_pressure"),
        (dict(memory_pressure=float("nan")), "memory_pressure"),
        (dict(reload_cost_s=-0.5), "reload_cost_s"),
        (dict(max_ttl_s=-1.0), "max_ttl_s"),
        (dict(step_fixed_share=1.5), "step_fixed_share"),
        (dict(step_fixed_share=float("nan")), "step_fixed_share"),
    ],
)
def test_invalid_arguments_name_the_argument(kwargs, name):
    args = dict(context_tokens=100, pool_slots=1000, reload_cost_s=0.1, memory_pressure=0.5) | kwargs
    with pytest.raises(ValueError, match=name):
        choose_pin_ttl(DurationDistribution.from_samples([1.0]), **args)


def test_bad_samples_are_ignored():
    stats = _stats("t", [float("nan"), -1.0, float("inf"), float("-inf")])
    assert stats.samples("t") == []
    assert stats.summary() == {}
    stats.record("t", 0.7)
    stats.record("t", float("nan"))
    assert stats.samples("t") == [0.7]
    assert stats.summary()["t"] == {"count": 1, "mean": 0.7, "p50": 0.7, "p90": 0.7}


def test_distribution_is_reused_until_the_tool_records_again():
    """Planning reads a tool's distribution for every stage estimate: it is built once per change of the samples,
    and a new duration (also one that pushes an old sample out of a full window) is seen at once."""
    stats = ToolDurationStats(window=3, min_samples=1)
    for seconds in (1.0, 2.0, 3.0):
        stats.record("t", seconds)
    first = stats.distribution("t")
    assert stats.distribution("t") is first and first.mean() == pytest.approx(2.0)
    stats.record("t", 9.0)  # the window is full: 1.0 drops out, the count stays 3
    second = stats.distribution("t")
    assert second is not first and second.mean() == pytest.approx((2.0 + 3.0 + 9.0) / 3)
    assert stats.distribution("other").mean() > 0  # the prior, cached per tool
    stats.record("other", 0.5)
    assert 0.5 in stats.distribution("other").values


def test_a_pin_pays_only_where_the_kv_would_be_lost_without_it():
    """Unpinned KV is lost only once allocations use up the room evicted before it (``eviction_horizon_s``): a tool
    that returns well inside that horizon finds its KV without a pin, so pinning saves little and holds memory."""
    rng = random.Random(8)
    dist = _stats("search", [rng.uniform(0.2, 0.4) for _ in range(100)]).distribution("search")
    args = dict(**CTX, reload_cost_s=0.5, memory_pressure=0.8)
    certain = choose_pin_ttl(dist, **args)  # the default horizon 0: lost at once, as before
    assert certain.pin and certain.hit_probability == pytest.approx(1.0)
    # A horizon below every duration: q = 1 for all of them, the same decision.
    assert choose_pin_ttl(dist, **args, eviction_horizon_s=0.1) == certain
    # A horizon of 4 s: a 0.3 s tool finds its KV gone 7.5% of the time; the saving no longer pays for the hold.
    lasting = choose_pin_ttl(dist, **args, eviction_horizon_s=4.0)
    assert not lasting.pin and lasting.reason.startswith("no pin: best ttl")
    never = choose_pin_ttl(dist, **args, eviction_horizon_s=math.inf)
    assert not never.pin and "nothing would evict" in never.reason
    # The expected saving falls as the horizon grows (memory free: every pin's cost is 0, its benefit shows).
    free = dict(**CTX, reload_cost_s=0.5, memory_pressure=0.0)
    benefits = [choose_pin_ttl(dist, **free, eviction_horizon_s=h).expected_benefit_s for h in (0.0, 0.3, 1.0, 4.0)]
    assert benefits == sorted(benefits, reverse=True) and benefits[0] > benefits[-1] > 0
    assert benefits[-1] == pytest.approx(0.5 * sum(v / 4.0 * w for v, w in zip(dist.values, dist.weights, strict=True)))
    with pytest.raises(ValueError, match="eviction_horizon_s"):
        choose_pin_ttl(dist, **args, eviction_horizon_s=-1.0)


def test_a_smaller_fixed_share_of_the_step_makes_holding_cheaper():
    """Memory held away from decode rows costs only the share of a step that does not grow with its batch: the cost
    scales with it, the saving does not, so a pin declined at share 1 may pay at a smaller share, with a TTL never
    shorter."""
    rng = random.Random(8)
    stats = _stats("search", [rng.uniform(0.5, 4.0) for _ in range(200)])
    args = dict(**CTX, reload_cost_s=0.4, memory_pressure=1.0)
    whole = choose_pin_ttl(stats.distribution("search"), **args)
    third = choose_pin_ttl(stats.distribution("search"), **args, step_fixed_share=1 / 3)
    assert not whole.pin and third.pin, (whole.reason, third.reason)
    for t in (0.5, 1.0, 2.0):
        a = choose_pin_ttl(stats.distribution("search"), **args, max_ttl_s=t)
        b = choose_pin_ttl(stats.distribution("search"), **args, max_ttl_s=t, step_fixed_share=0.5)
        assert b.ttl_s >= a.ttl_s
    free = choose_pin_ttl(stats.distribution("search"), **args, step_fixed_share=0.0)
    assert free.expected_cost_s == 0.0 and "(memory is free)" in free.reason
