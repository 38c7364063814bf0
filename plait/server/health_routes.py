"""Liveness, readiness and Prometheus metrics: ``/health``, ``/ready``, ``/metrics``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

router = APIRouter(tags=["operations"])


@router.get("/health", summary="Liveness: the process answers")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/ready",
    summary="Readiness: the engine is loaded and the server accepts work",
    responses={503: {"description": "starting or draining"}},
)
async def ready(request: Request) -> JSONResponse:
    state = request.app.state.plait
    if not state.ready or state.draining:
        status = "draining" if state.draining else "starting"
        return JSONResponse({"status": status}, status_code=503)
    return JSONResponse({"status": "ready", "model": state.model_name})


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    state = request.app.state.plait
    return Response(state.metrics.exposition(state), media_type=CONTENT_TYPE_LATEST)
