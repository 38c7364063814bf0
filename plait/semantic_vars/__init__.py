"""Semantic variables: named values (with futures) that flow between calls, prompt templates, output constraints.

Owns: ``SemanticVariable``, ``Template`` (``{{name}}`` slots), ``ChatPrompt``, ``GenConstraints``.
May import: nothing else in plait.
"""

from __future__ import annotations

from plait.semantic_vars.constraints import OUTPUT_CONSTRAINTS, SAMPLING_FIELDS, TEXT_OUTPUT, GenConstraints
from plait.semantic_vars.errors import SemanticVarError, VariableFailedError
from plait.semantic_vars.template import CHAT_ROLES, ChatPrompt, Message, Prompt, Template, render_value
from plait.semantic_vars.variable import Generation, SemanticVariable, VarState

__all__ = [
    "CHAT_ROLES",
    "OUTPUT_CONSTRAINTS",
    "SAMPLING_FIELDS",
    "TEXT_OUTPUT",
    "ChatPrompt",
    "GenConstraints",
    "Generation",
    "Message",
    "Prompt",
    "SemanticVarError",
    "SemanticVariable",
    "Template",
    "VarState",
    "VariableFailedError",
    "render_value",
]
