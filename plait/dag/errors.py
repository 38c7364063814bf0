"""Workflow errors: every problem names the node and the field to fix."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    node: str | None  # None for workflow-level problems (outputs, inputs, cycles spanning nodes)
    field: str
    message: str

    def __str__(self) -> str:
        where = f"node {self.node!r}, " if self.node else ""
        return f"{where}field {self.field!r}: {self.message}"


class WorkflowError(ValueError):
    """A workflow is invalid. ``problems`` lists everything found (nothing runs until all are fixed)."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid workflow ({len(problems)} problem{'s' if len(problems) != 1 else ''}):\n{lines}")
