"""plait: a serving runtime for agent programs.

Layers (imports point downwards only): ``server -> sdk -> runtime -> dag / semantic_vars``,
``runtime -> engine -> cache``.
``bench`` sits beside the top and may import any layer.

The SDK's names are available here (``plait.Runtime``, ``plait.program``, ``plait.tool``, ...), loaded on first
use so that ``import plait`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Client": "plait.sdk",
    "Program": "plait.sdk",
    "ProgramDef": "plait.sdk",
    "Runtime": "plait.sdk",
    "ServerError": "plait.sdk",
    "program": "plait.sdk",
    "tool": "plait.sdk",
    "SemanticVariable": "plait.semantic_vars",
    "VariableFailedError": "plait.semantic_vars",
    "Workflow": "plait.dag",
    "WorkflowError": "plait.dag",
    "EngineConfig": "plait.runtime",
    "EnginePolicy": "plait.runtime",
    "PlanConfig": "plait.runtime",
    "ProgramFailedError": "plait.runtime",
    "ProgramCancelledError": "plait.runtime",
    "NodeError": "plait.runtime",
    "NonDeterminismError": "plait.runtime",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'plait' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
