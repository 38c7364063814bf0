"""Liveness, readiness and Prometheus metrics: ``/health``, ``/ready``, ``/metrics``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from plait.server.errors import STARTING_RETRY_AFTER_S
from plait.server.state import ServerPhase

router = APIRouter(tags=["operations"])


@router.get("/health", summary="Liveness: the process answers")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/ready",
    summary="Readiness: the engine is loaded and the server accepts work",
    responses={503: {"description": "starting (the engine is loading), draining (shutting down) or failed"}},
)
async def ready(request: Request) -> JSONResponse:
    state = request.app.state.plait
    phase = state.phase
    if phase is ServerPhase.READY:
        return JSONResponse({"status": "ready", "model": state.model_name})
    headers = {"Retry-After": str(STARTING_RETRY_AFTER_S)} if phase is ServerPhase.STARTING else None
    return JSONResponse({"status": phase.value}, status_code=503, headers=headers)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    state = request.app.state.plait
    return Response(state.metrics.exposition(state), media_type=CONTENT_TYPE_LATEST)
