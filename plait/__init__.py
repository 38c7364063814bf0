"""plait: a serving runtime for agent programs.

Layers (imports point downwards only): ``sdk -> runtime -> dag / semantic_vars``, ``runtime -> engine -> cache``.
``bench`` sits beside the top and may import any layer.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
