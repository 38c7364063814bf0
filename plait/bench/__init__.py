"""Benchmarks behind ``plait bench ...``: each prints a table and writes JSON.

Owns: measurement harnesses and report writing. May import: any plait layer (it sits beside the top).
"""

from __future__ import annotations

__all__: list[str] = []
