"""Workload generators for ``plait bench workflow``: suites of agent programs with arrivals, deadlines and tools.

Owns: the suites (multi-agent, react, text2sql, map-reduce, starvation, bfcl), simulated tools, synthetic text and the
size/time estimates used to size them. May import: any plait layer (it is part of ``plait.bench``).
"""

from __future__ import annotations

from plait.bench.workflow_suites.sim_tools import make_sim_tool, make_sim_tools, sim_tool_args
from plait.bench.workflow_suites.suite import (
    SUITE_NAMES,
    Suite,
    SuiteDataMissing,
    SuiteOptions,
    SuiteProgram,
    build_suite,
)
from plait.bench.workflow_suites.synthetic_text import synthetic_text

__all__ = [
    "SUITE_NAMES",
    "Suite",
    "SuiteDataMissing",
    "SuiteOptions",
    "SuiteProgram",
    "build_suite",
    "make_sim_tool",
    "make_sim_tools",
    "sim_tool_args",
    "synthetic_text",
]
