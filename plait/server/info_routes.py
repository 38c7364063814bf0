"""``GET /server_info``: what this server runs with, as it runs (authenticated).

The engine settings are the effective ones (``auto`` resolved) and the engine policy is the one the engine schedules
under now, read from the engine itself; a test compares it with the plan the server was started with, so a plan
that is not applied shows here. ``counters`` are the engine's running totals (``EngineStats``) and the planner's
(``Planner.stats``) since the server started: a benchmark's difference of two readings is its own (``plait bench replay
--target`` reports them beside its own numbers).
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from plait import __version__
from plait.server.tenants import Tenant, current_tenant

router = APIRouter(tags=["operations"])


@router.get(
    "/server_info",
    summary="The effective engine settings, engine policy, planner features, model, version, device and counters",
    responses={401: {"description": "missing or unknown API key"}, 503: {"description": "the engine is loading"}},
)
async def server_info(request: Request, tenant: Annotated[Tenant, Depends(current_tenant)]) -> dict[str, Any]:
    state = request.app.state.plait
    plan = state.executor.planner.config
    engine = state.engine.effective_settings()
    return {
        "version": __version__,
        "model": state.model_name,
        "device": engine["device"],
        "torch": _torch_version(),
        "engine": engine,
        "plan": {
            "name": plan.name,
            "enabled": plan.enabled,
            "features": {key: value for key, value in plan.to_dict().items() if key not in ("name", "engine")},
            "engine_policy": plan.engine.to_dict(),
            "summary": plan.describe(),
        },
        "tenant": tenant.name,
        "counters": {"engine": dataclasses.asdict(state.engine.stats()), "planner": state.executor.planner.stats()},
        **_replicas(state.engine),
    }


def _replicas(engine: Any) -> dict[str, Any]:
    """Scale-out servers: each replica's load, stats and bindings, and the routing's decisions."""
    describe = getattr(engine, "describe_replicas", None)
    return {"replicas": describe()} if describe is not None else {}


def _torch_version() -> str:
    import torch  # loaded with the engine already

    return str(torch.__version__)
