"""Errors of the semantic-variable layer: user mistakes in templates, bindings and constraints."""

from __future__ import annotations


class SemanticVarError(ValueError):
    """A template, binding or constraint is malformed. ``field`` names what to fix."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class VariableFailedError(RuntimeError):
    """The call that produces a variable failed (or was cancelled), so the variable will never get a value."""

    def __init__(self, variable: str, reason: str, *, producer: str | None = None) -> None:
        where = f" (produced by node {producer!r})" if producer else ""
        super().__init__(f"variable {variable!r}{where} has no value: {reason}")
        self.variable = variable
        self.reason = reason
        self.producer = producer
