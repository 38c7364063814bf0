"""Tools for the example workflows.

``plait run examples/workflows/qa_check.json --tools examples/workflows/tools.py:TOOLS``
"""

from __future__ import annotations

import plait


@plait.tool
def word_count(text: str) -> int:
    """Number of whitespace-separated words in ``text``."""
    return len(text.split())


TOOLS = [word_count]
