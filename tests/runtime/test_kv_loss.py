"""``ToolWaitLoss``: the loss rate of tool-waiting KV, learned as decayed tokens lost over token-seconds exposed."""

from __future__ import annotations

import math

import pytest

from plait.runtime.planning.kv_loss import ToolWaitLoss


def test_no_estimate_until_enough_waits_then_exposure_over_loss():
    loss = ToolWaitLoss(time_constant_s=1e9, min_waits=3.5)  # (decayed counts fall a hair short of 4)
    loss.observe_lost(1000, now=0.0)  # the first reading is the baseline: earlier work is not this planner's
    for i in range(3):
        loss.observe_wait(100, 0.5, now=float(i))
    assert loss.horizon_s() is None
    loss.observe_wait(100, 0.5, now=3.0)
    assert loss.horizon_s() == math.inf  # 200 token-seconds exposed, nothing lost: a pin would save nothing
    loss.observe_lost(1050, now=4.0)
    assert loss.horizon_s() == pytest.approx(200 / 50)  # 50 tokens per 200 token-seconds: q(D) = D / 4 s


def test_old_observations_fade():
    loss = ToolWaitLoss(time_constant_s=10.0, min_waits=1)
    loss.observe_lost(0, now=0.0)
    loss.observe_wait(100, 1.0, now=0.0)
    loss.observe_lost(100, now=0.0)
    assert loss.horizon_s() == pytest.approx(1.0)
    loss.observe_wait(100, 1.0, now=100.0)  # the loss was ten time constants ago
    assert loss.horizon_s() > 1000.0


def test_empty_waits_and_a_counter_reset_are_ignored():
    loss = ToolWaitLoss(min_waits=1)
    loss.observe_wait(0, 5.0, now=0.0)
    loss.observe_wait(100, 0.0, now=0.0)
    assert loss.horizon_s() is None
    loss.observe_lost(500, now=0.0)
    loss.observe_lost(10, now=1.0)  # a fresh engine: a new baseline, not a negative loss
    loss.observe_wait(100, 1.0, now=1.0)
    assert loss.horizon_s() == math.inf
    with pytest.raises(ValueError, match="time_constant_s"):
        ToolWaitLoss(time_constant_s=0.0)
