"""Program-level planning: who runs next, whose KV stays, what is fetched ahead, what is computed once.

The ``Planner`` watches every program (its graph, progress and deadline) and turns that into plain data for the
engine: a priority per request, KV hints (next use, pins with a TTL, prefetch) and deduplicated calls. Every feature
is switched by ``PlanConfig``; ``PlanConfig.baseline()`` turns all of them off (a request-level engine).
"""

from __future__ import annotations

from plait.runtime.planning.call_dedup import CallDeduplicator
from plait.runtime.planning.plan_config import FEATURES, PlanConfig
from plait.runtime.planning.planner import Planner

__all__ = ["FEATURES", "CallDeduplicator", "PlanConfig", "Planner"]
