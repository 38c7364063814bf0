"""Workflow graphs: LLM and tool call nodes, edges from variable data flow, validation, wire format, analysis.

Owns: the program as data (networkx graph, msgspec wire format), levels, critical path, steps-to-execution.
May import: ``plait.semantic_vars``.
"""

from __future__ import annotations

__all__: list[str] = []
