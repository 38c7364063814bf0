"""What every route shares: the engine, the executor, the settings, tenant usage and metrics.

One ``ServerState`` lives on ``app.state.plait``. It exists before its engine: ``plait serve`` listens while the
engine loads, and ``attach`` hands it the engine and executor once they are ready. It owns the engine only when it
created it (``owns_engine``).

Phases (``phase``): ``starting`` (no engine yet: ``/ready`` and the API answer 503), ``ready``, ``draining`` (at
shutdown: new work answers 503), ``failed`` (the engine could not be loaded: the process exits).
"""

from __future__ import annotations

import enum
import time
from typing import TYPE_CHECKING, Any

from plait.server.config import ServerConfig
from plait.server.errors import EngineNotLoadedError
from plait.server.metrics import ServerMetrics
from plait.server.tenants import TenantUsage

if TYPE_CHECKING:
    from plait.engine import Engine
    from plait.runtime.executor import Executor


class ServerPhase(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    FAILED = "failed"


class ServerState:
    def __init__(
        self,
        config: ServerConfig,
        *,
        engine: Engine | None = None,
        executor: Executor | None = None,
        owns_engine: bool = False,
    ) -> None:
        self.config = config
        self._engine: Engine | None = None
        self._executor: Executor | None = None
        self.owns_engine = False
        self.usage = TenantUsage()
        self.metrics = ServerMetrics()
        self.started_at = time.time()
        self.ready = False  # set once the app has started and the engine is attached
        self.draining = False  # set at shutdown: new work answers 503
        self.drained = False  # the drain has let running work finish or cancelled it (see app.drain)
        self.startup_error: BaseException | None = None  # why the engine could not be loaded
        self.inflight_api_requests = 0  # /v1 requests whose response has not ended (the drain waits for them)
        # Owner tags of REST workflows: program id -> tenant name (see tenants.py, "Ownership rule").
        self.owners: dict[str, str] = {}
        self.extras: dict[str, Any] = {}
        if engine is not None or executor is not None:
            if engine is None or executor is None:
                raise ValueError("ServerState: give both the engine and its executor, or neither")
            self.attach(engine, executor, owns_engine=owns_engine)

    def attach(self, engine: Engine, executor: Executor, *, owns_engine: bool = False) -> None:
        """The engine and the executor over it (``owns_engine``: close the engine at shutdown)."""
        self._engine, self._executor, self.owns_engine = engine, executor, owns_engine

    @property
    def loaded(self) -> bool:
        return self._engine is not None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise EngineNotLoadedError(failed=self.startup_error is not None)
        return self._engine

    @property
    def executor(self) -> Executor:
        if self._executor is None:
            raise EngineNotLoadedError(failed=self.startup_error is not None)
        return self._executor

    @property
    def phase(self) -> ServerPhase:
        if self.draining:
            return ServerPhase.DRAINING
        if self.startup_error is not None:
            return ServerPhase.FAILED
        return ServerPhase.READY if self.ready else ServerPhase.STARTING

    @property
    def model_name(self) -> str:
        if self.config.model_name:
            return self.config.model_name
        return self.engine.model_config.name or "plait-default"
