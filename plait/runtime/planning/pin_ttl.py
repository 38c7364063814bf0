"""How long to pin a program's KV cache on the GPU while it waits for a tool: a cost/benefit choice.

When an LLM call is followed by a tool call of (random) duration D, keeping the program's KV resident until the tool
returns spares the next LLM call a reload (re-prefill, or a copy back from host memory) that costs ``reload_cost_s``
seconds of GPU time. A pin with TTL t is released when the tool returns (the next call takes over the KV) or at t,
whichever comes first (the TTL clock starts when the tool starts), so:

* benefit(t) = E[1{D <= t} * q(D)] * reload_cost_s: the reload is saved only if the tool returns while the pin holds
  and the KV would have been lost without it. Unpinned, the KV goes only once the allocations made while the tool
  runs have used up the room that is evicted before it (free slots, and cached KV needed later than this program's:
  next-use eviction takes the farthest first). ``eviction_horizon_s`` is how long that room lasts at the recent
  allocation rate, and ``q(D) = min(1, D / horizon)``: certain loss for a tool outlasting the horizon, a chance
  growing with D below it (allocation comes in bursts: admissions). A horizon of 0 means the KV is lost at once
  (q = 1), an infinite one that nothing would evict it (no pin pays);
* cost(t) = f * p * r * E[min(D, t)], with f = context_tokens / pool_slots the fraction of KV memory held, p the
  memory pressure (fraction of the pool that others are using or waiting for) and r the share of a step's time that
  does not grow with its batch (``step_fixed_share``; 1 by default). Holding fraction f of the memory for s seconds
  while it is under pressure p keeps about that fraction of the decode rows out; the rows still run, over more steps,
  and each extra step pays the fixed part again: about f * p * r * s seconds of GPU work displaced. r = 1 charges
  the whole step, as if every row's work were lost.

Both sides are in seconds of GPU work. The TTL maximises benefit - cost over the candidates {0} and the support
points of the distribution up to ``max_ttl_s`` (between two support points the benefit is flat while the cost
grows, so no other TTL can do better). Ties, including a net of zero, go to the shorter TTL, so 0 (no pin) wins
when pinning gains nothing; with p = 0 this picks the shortest TTL reaching the best hit probability, never
"forever". For a fixed distribution the chosen TTL never grows with the pressure (the cost term is increasing in t).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from plait.runtime.planning.tool_stats import DurationDistribution

__all__ = ["PinDecision", "choose_pin_ttl"]


@dataclass(frozen=True)
class PinDecision:
    """The outcome of ``choose_pin_ttl``; ``ttl_s == 0`` means do not pin."""

    ttl_s: float
    hit_probability: float  # P(tool returns within the TTL); 0 when not pinning
    expected_benefit_s: float  # expected GPU seconds of reload saved
    expected_cost_s: float  # expected GPU seconds of other work displaced by holding the memory
    reason: str

    @property
    def pin(self) -> bool:
        """Whether to pin at all."""
        return self.ttl_s > 0

    @property
    def net_s(self) -> float:
        """Expected benefit minus expected cost, in GPU seconds."""
        return self.expected_benefit_s - self.expected_cost_s


def _validate(
    context_tokens: int,
    reload_cost_s: float,
    pool_slots: int,
    memory_pressure: float,
    max_ttl_s: float,
    step_fixed_share: float,
):
    if not 0.0 <= step_fixed_share <= 1.0:  # also rejects NaN
        raise ValueError(f"step_fixed_share must be in [0, 1], got {step_fixed_share}")
    if context_tokens < 0:
        raise ValueError(f"context_tokens must be >= 0, got {context_tokens}")
    if pool_slots <= 0:
        raise ValueError(f"pool_slots must be > 0, got {pool_slots}")
    if not 0.0 <= memory_pressure <= 1.0:  # also rejects NaN
        raise ValueError(f"memory_pressure must be in [0, 1], got {memory_pressure}")
    if not (reload_cost_s >= 0 and math.isfinite(reload_cost_s)):
        raise ValueError(f"reload_cost_s must be non-negative and finite, got {reload_cost_s}")
    if not (max_ttl_s >= 0 and math.isfinite(max_ttl_s)):
        raise ValueError(f"max_ttl_s must be non-negative and finite, got {max_ttl_s}")


def choose_pin_ttl(
    distribution: DurationDistribution,
    *,
    context_tokens: int,
    reload_cost_s: float,
    pool_slots: int,
    memory_pressure: float,
    max_ttl_s: float = 60.0,
    eviction_horizon_s: float = 0.0,
    step_fixed_share: float = 1.0,
) -> PinDecision:
    """Choose the pin TTL maximising expected reload time saved minus expected GPU work displaced (module doc).

    ``distribution``: the tool's durations (``ToolDurationStats.distribution``); ``context_tokens``: KV slots the
    program holds; ``reload_cost_s``: GPU seconds to rebuild that KV if it is dropped; ``pool_slots``: KV slots in
    the pool; ``memory_pressure``: in [0, 1]; ``max_ttl_s``: the longest pin allowed; ``eviction_horizon_s``: seconds
    until the KV would be evicted without a pin (module doc; 0: at once); ``step_fixed_share``: in [0, 1], the share of
    a step's time memory held away from decode rows costs (module doc; 1: all of it). Raises ``ValueError`` naming the
    first invalid argument.
    """
    _validate(context_tokens, reload_cost_s, pool_slots, memory_pressure, max_ttl_s, step_fixed_share)
    if not eviction_horizon_s >= 0:  # also rejects NaN; infinity is allowed (nothing would evict it)
        raise ValueError(f"eviction_horizon_s must be >= 0, got {eviction_horizon_s}")
    # A program cannot hold more than the whole pool, so the held fraction is capped at 1.
    hold_price = min(1.0, context_tokens / pool_slots) * memory_pressure * step_fixed_share
    # Tolerance for comparing nets: prefix sums carry rounding error, and a mere rounding gain must not buy a pin.
    eps = 1e-12 * max(1.0, reload_cost_s)

    best = (0.0, 0.0, 0.0, 0.0)  # (ttl, p_hit, benefit, cost) of "no pin"; its net is 0
    best_net = 0.0
    runner_up: tuple[float, float, float, float] | None = None  # the best positive TTL, to explain a "no pin"
    saved = 0.0  # E[1{D <= t} * q(D)], accumulated over the support points up to t
    for t, weight in zip(distribution.values, distribution.weights, strict=True):  # ascending: a strict
        if t > max_ttl_s:  # improvement is needed to prefer a longer TTL
            break
        saved += weight * _loss_chance(t, eviction_horizon_s)
        if t <= 0:
            continue  # a zero-length pin is no pin
        p_hit = distribution.cdf(t)
        benefit = saved * reload_cost_s
        cost = hold_price * distribution.expected_min(t)
        net = benefit - cost
        if runner_up is None or net > runner_up[2] - runner_up[3] + eps:
            runner_up = (t, p_hit, benefit, cost)
        if net > best_net + eps:
            best, best_net = (t, p_hit, benefit, cost), net

    ttl, p_hit, benefit, cost = best
    if ttl > 0:
        reason = f"p(hit)={p_hit:.2f} saves {benefit:.2f} s vs holds {cost:.2f} s"
        if hold_price == 0:
            reason += " (memory is free)"
        return PinDecision(ttl, p_hit, benefit, cost, reason)
    if reload_cost_s == 0:
        reason = "no pin: reloading costs nothing"
    elif eviction_horizon_s == math.inf:
        reason = "no pin: nothing would evict the KV while the tool runs"
    elif runner_up is None:
        reason = f"no pin: no duration on record ends within max_ttl={max_ttl_s:.2f} s"
    else:
        t, p_hit, benefit, cost = runner_up
        reason = f"no pin: best ttl {t:.2f} s, p(hit)={p_hit:.2f} saves {benefit:.2f} s vs holds {cost:.2f} s"
    return PinDecision(0.0, 0.0, 0.0, 0.0, reason)


def _loss_chance(duration_s: float, horizon_s: float) -> float:
    """q(D): the chance that unpinned KV is evicted before a tool of ``duration_s`` returns (module doc)."""
    if horizon_s <= 0:
        return 1.0
    return min(1.0, duration_s / horizon_s)
