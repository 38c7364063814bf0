"""Running a workflow suite end to end in both planning modes on the tiny engine (for suites that check their
programs after a run)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from plait.bench.workflow_run import ModeResult, run_mode
from plait.bench.workflow_suites import Suite
from plait.engine import Engine, EngineConfig
from plait.runtime.planning import PlanConfig
from tests.conftest import TINY


def run_both_modes(build: Callable[[], Suite], time_limit_s: float = 120) -> list[ModeResult]:
    """The plait and the baseline run of fresh builds of one suite, one after the other on one tiny engine."""

    async def main(engine: Engine) -> list[ModeResult]:
        modes = (PlanConfig(), PlanConfig.baseline())
        return [await run_mode(engine, build, mode, time_limit_s=time_limit_s) for mode in modes]

    engine = Engine(EngineConfig(**TINY))
    try:
        return asyncio.run(main(engine))
    finally:
        engine.close()
