"""Runtime: the planner that turns ready nodes into engine requests and tool runs, policies, tools, the server.

Owns: program execution, ordering policies, tool executor, REST / OpenAI-compatible server, journal.
May import: ``plait.dag``, ``plait.semantic_vars``, ``plait.engine`` (through its public API and plain-data hints).
"""

from __future__ import annotations

__all__: list[str] = []
