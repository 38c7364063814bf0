"""The HTTP layer (``plait serve``): REST workflows, the OpenAI-compatible API, tenants, metrics.

Owns: the FastAPI application, one folder per API (``openai/``, ``workflows/``: ``api_router.py`` thin routes,
``protocol.py`` request bodies, a serving module doing the work), tenants and their limits, metrics, start-up and
draining. ``app.py`` builds the application from a ``ServerState``; ``errors.py`` turns every failure into a JSON
body naming the field and the reason.
May import: ``plait.sdk``, ``plait.runtime``, ``plait.dag``, ``plait.semantic_vars`` and ``plait.engine``, through
their public APIs only (never ``plait.engine.engine_core``).
"""

from __future__ import annotations

from plait.server.app import create_app
from plait.server.config import ServerConfig, TenantLimits
from plait.server.errors import APIError
from plait.server.state import ServerState
from plait.server.tenants import Tenant

__all__ = ["APIError", "ServerConfig", "ServerState", "Tenant", "TenantLimits", "create_app"]
