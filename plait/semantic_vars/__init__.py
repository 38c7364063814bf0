"""Semantic variables: named values (with futures) that flow between calls, prompt templates, output constraints.

Owns: ``SemanticVariable``, ``Template`` (``{{name}}`` slots), constraints. May import: nothing else in plait.
"""

from __future__ import annotations

__all__: list[str] = []
