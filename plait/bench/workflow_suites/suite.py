"""The suite interface: options in, programs (workflows with arrival times and deadlines) and tools out.

``build_suite(name, options)`` is what ``plait bench workflow --suite NAME`` calls. Every suite is deterministic for
a given ``SuiteOptions``: same seed, same prompts, same arrivals, same tool durations.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plait.dag import Workflow
from plait.runtime import Tool

PROFILES = ("cpu", "gpu")
SUITE_NAMES: tuple[str, ...] = ("multi-agent", "react", "text2sql", "map-reduce", "starvation", "bfcl")
# Suite name -> module under plait.bench.workflow_suites with a ``build(options) -> Suite`` function. Imported on
# demand: the suite modules import this one for the dataclasses.
_MODULES = {
    "multi-agent": "multi_agent",
    "react": "react",
    "text2sql": "text2sql",
    "map-reduce": "map_reduce",
    "starvation": "starvation",
    "bfcl": "bfcl",
}


class SuiteDataMissing(Exception):
    """A suite needs files from the shared data folder that are not there; the message names the path and the data."""


@dataclass
class SuiteOptions:
    """How to size a suite. ``None`` fields take the suite's default for the profile.

    ``profile``: "cpu" (SmolLM2-135M on a 2-core CPU: short prompts and outputs) or "gpu" (Llama-3.1-8B shape on an
    H100/H200: ~8x longer prompts, 4-10x more programs). ``arrival_rate``: programs per second (Poisson, seeded);
    0 puts every program at t=0. ``data_dir``: the shared data folder (default: ``../shared/data`` next to the repo,
    else next to the working directory).
    """

    profile: str = "cpu"
    programs: int | None = None
    arrival_rate: float | None = None
    seed: int = 0
    data_dir: Path | None = None

    def validate(self) -> None:
        if self.profile not in PROFILES:
            raise ValueError(f"profile must be one of {', '.join(PROFILES)}, got {self.profile!r}")
        if self.programs is not None and self.programs < 1:
            raise ValueError(f"programs must be >= 1, got {self.programs}")
        if self.arrival_rate is not None and not self.arrival_rate >= 0:
            raise ValueError(f"arrival_rate must be >= 0 (0: all at t=0), got {self.arrival_rate}")


@dataclass
class SuiteProgram:
    """One program of a suite: when it arrives (seconds from the start of the run), its graph, its SLO."""

    arrival_s: float
    workflow: Workflow
    deadline_s: float | None = None  # relative to arrival; None: no deadline
    tag: str = ""  # group label for reporting ("huge", "small", ...)


@dataclass
class CheckReport:
    """A suite's check of its programs after a run; ``to_dict`` is what ``Suite.check`` returns."""

    programs: int
    passed: int
    incomplete: list[str]  # programs that did not run everything they had to (time limit, failure)
    failures: list[dict[str, str]]  # {"program", "error", ...} for programs whose check failed
    extra: dict[str, Any] = field(default_factory=dict)  # the suite's own numbers

    def to_dict(self) -> dict[str, Any]:
        return {
            "programs": self.programs,
            "passed": self.passed,
            "failed": len(self.failures),
            "incomplete": len(self.incomplete),
            "failures": self.failures[:10],
            "incomplete_programs": self.incomplete[:10],
            **self.extra,
        }


@dataclass
class Suite:
    """A built suite: programs sorted by arrival, the tools they call, the KV pool size it is designed for, every
    parameter that shaped it (written into the benchmark's JSON report) and, for suites whose programs can be
    checked, ``check``: called once after a run, it returns ``{"programs", "passed", "failed", ...}``."""

    name: str
    description: str
    programs: list[SuiteProgram]
    tools: list[Tool]
    kv_slots: int
    parameters: dict[str, Any] = field(default_factory=dict)
    check: Callable[[], dict[str, Any]] | None = None


def build_suite(name: str, options: SuiteOptions) -> Suite:
    """Build suite ``name`` (one of ``SUITE_NAMES``). Raises ``ValueError`` for an unknown name or bad options and
    ``SuiteDataMissing`` when the suite's shared data is absent."""
    if name not in _MODULES:
        raise ValueError(f"unknown workflow suite {name!r} (known: {', '.join(SUITE_NAMES)})")
    options.validate()
    module = importlib.import_module(f"plait.bench.workflow_suites.{_MODULES[name]}")
    suite: Suite = module.build(options)
    suite.programs.sort(key=lambda program: program.arrival_s)  # stable: equal arrivals keep the suite's order
    return suite
