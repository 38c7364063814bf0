"""What the planner adds to every engine request of a program (plain data)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class RequestOptions:
    """``priority``: a number or a tuple compared element by element, lower first (see ``planning/ordering.py``)."""

    program_id: str
    priority: float | tuple[float, ...] = 0
    hints: dict[str, Any] = field(default_factory=dict)
