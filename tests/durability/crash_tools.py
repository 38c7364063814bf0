"""The server-side tool of the crash tests (``plait serve --tools tests/durability/crash_tools.py:TOOLS``).

``slow_upper`` has a side effect, applied once per idempotency key however often it runs: each run appends its key to
``attempts.log``; the effect (a line in ``effects.log``) is appended only when the key is not there yet. Both files
live in ``$PLAIT_TEST_EFFECTS_DIR``. A run killed after the effect and before its result was journaled runs again
after the restart (at least once) and finds its key: the effect counter stays at one per node.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

EFFECTS_DIR_ENV = "PLAIT_TEST_EFFECTS_DIR"


def _append(path: Path, line: str) -> None:
    with path.open("a", encoding="utf-8") as file:
        file.write(line + "\n")
        file.flush()
        os.fsync(file.fileno())


async def slow_upper(text: str, delay_s: float = 0.2, idempotency_key: str = "") -> str:
    """Upper-case ``text`` after applying the effect for ``idempotency_key`` (once) and sleeping ``delay_s``."""
    directory = Path(os.environ[EFFECTS_DIR_ENV])
    _append(directory / "attempts.log", idempotency_key)
    effects = directory / "effects.log"
    applied = effects.read_text(encoding="utf-8").split() if effects.exists() else []
    if idempotency_key not in applied:
        _append(effects, idempotency_key)
    await asyncio.sleep(delay_s)
    return text.upper().strip()[:40]


TOOLS = [slow_upper]
