"""What every route shares: the engine, the executor, the settings, tenant usage and metrics.

One ``ServerState`` lives on ``app.state.plait``. It owns the engine only when it created it (``owns_engine``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from plait.engine import Engine
from plait.runtime.executor import Executor
from plait.server.config import ServerConfig
from plait.server.metrics import ServerMetrics
from plait.server.tenants import TenantUsage


@dataclass
class ServerState:
    engine: Engine
    executor: Executor
    config: ServerConfig
    owns_engine: bool = False
    usage: TenantUsage = field(default_factory=TenantUsage)
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    started_at: float = field(default_factory=time.time)
    ready: bool = False  # set once the app has started and the engine answers
    draining: bool = False  # set at shutdown: new work answers 503
    # Owner tags of REST workflows: program id -> tenant name (see tenants.py, "Ownership rule").
    owners: dict[str, str] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def model_name(self) -> str:
        if self.config.model_name:
            return self.config.model_name
        return self.engine.core.model_config.name or "plait-default"
