"""The HTTP layer (``plait serve``): REST workflows, the OpenAI-compatible API, tenants, metrics.

Owns: the FastAPI application, one folder per API (``openai/``, ``workflows/``: ``api_router.py`` thin routes,
``protocol.py`` request bodies, a serving module doing the work), tenants and their limits, metrics, start-up and
draining. ``app.py`` builds the application from a ``ServerState``; ``errors.py`` turns every failure into a JSON
body naming the field and the reason.
May import: ``plait.sdk``, ``plait.runtime``, ``plait.dag``, ``plait.semantic_vars`` and ``plait.engine``, through
their public APIs only (never ``plait.engine.engine_core``).

The names below load on first use, so that ``plait serve`` reads its settings and binds its port before it imports
the engine (torch) and the routes.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "APIError": "plait.server.errors",
    "ServerConfig": "plait.server.config",
    "ServerState": "plait.server.state",
    "Tenant": "plait.server.tenants",
    "TenantLimits": "plait.server.config",
    "create_app": "plait.server.app",
}

__all__ = ["APIError", "ServerConfig", "ServerState", "Tenant", "TenantLimits", "create_app"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'plait.server' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
