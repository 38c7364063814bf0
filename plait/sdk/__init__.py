"""Python SDK: ``@program``, ``gen`` / ``select`` / ``tool``, the in-process ``Runtime`` and the REST ``Client``.

Owns: the authoring surface for agent programs. May import: ``plait.runtime``, ``plait.dag``,
``plait.semantic_vars``. Nothing below it knows it exists.
"""

from __future__ import annotations

from plait.runtime import NonDeterminismError
from plait.sdk.client import Client
from plait.sdk.program import Program, ProgramDef, program, resolve
from plait.sdk.runtime import Runtime
from plait.sdk.server_events import ServerError, ServerEvent
from plait.sdk.tool_decorator import tool

__all__ = [
    "Client",
    "NonDeterminismError",
    "Program",
    "ProgramDef",
    "Runtime",
    "ServerError",
    "ServerEvent",
    "program",
    "resolve",
    "tool",
]
