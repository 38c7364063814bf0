"""The HTTP service: REST workflows, the OpenAI-compatible API, tenants, metrics (``plait serve``).

Layout: ``app.py`` builds the FastAPI application from a ``ServerState``; each group of routes lives in its own
module and exposes ``router``; ``errors.py`` turns every failure into a JSON body naming the field and the reason;
``tenants.py`` maps API keys to tenants and enforces per-tenant limits.
"""

from __future__ import annotations

from plait.runtime.server.app import create_app
from plait.runtime.server.config import ServerConfig, TenantLimits
from plait.runtime.server.errors import APIError
from plait.runtime.server.state import ServerState
from plait.runtime.server.tenants import Tenant

__all__ = ["APIError", "ServerConfig", "ServerState", "Tenant", "TenantLimits", "create_app"]
