"""Python SDK: ``@program``, ``gen`` / ``select`` / ``tool``, the in-process ``Runtime`` and the REST ``Client``.

Owns: the authoring surface for agent programs. May import: ``plait.runtime``, ``plait.dag``,
``plait.semantic_vars``. Nothing below it knows it exists.
"""

from __future__ import annotations

__all__: list[str] = []
