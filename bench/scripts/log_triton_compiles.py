"""Run a plait command and log every Triton kernel compilation (time, kernel, specialization) and every engine step
longer than ``SLOW_STEP_S`` (with its batch) to stderr.

First-use compilations inside a measured run stall every stream for a fraction of a second; this shows which kernel
and which argument specialization (an integer equal to 1 or divisible by 16, an aligned pointer) caused each.

    python bench/scripts/log_triton_compiles.py bench replay --trace ... --format lmcache-agent
"""

from __future__ import annotations

import sys
import time

import triton

from plait.cli import main
from plait.engine import engine_core
from plait.engine.engine_stats import SLOW_STEP_S

_START = time.monotonic()


def _log(**hook_args: object) -> None:
    if not hook_args.get("already_compiled"):
        print(
            f"[triton compile +{time.monotonic() - _START:7.2f}s] {hook_args.get('repr')}", file=sys.stderr, flush=True
        )


def _timed_step(step):
    def run(self):
        waiting, running = len(self.scheduler.waiting), len(self.scheduler.running)
        started = time.monotonic()
        deltas = step(self)
        took = time.monotonic() - started
        if took > SLOW_STEP_S:
            print(
                f"[slow step +{started - _START:7.2f}s] {took:.2f}s; before it: {waiting} waiting, {running} running",
                file=sys.stderr,
                flush=True,
            )
        return deltas

    return run


triton.knobs.runtime.jit_cache_hook = _log
engine_core.EngineCore.step = _timed_step(engine_core.EngineCore.step)

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
