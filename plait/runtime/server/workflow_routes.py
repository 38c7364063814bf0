"""(being written) routes of the plait server."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
