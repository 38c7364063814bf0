"""Server-side tools named by configuration: ``"package.module:attr"`` or ``"path/to/file.py:attr"``.

``attr`` may be a tool (``@plait.tool`` or a plain function) or a list/tuple/dict of them.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any


def load_tools(specs: list[str]) -> list[Any]:
    tools: list[Any] = []
    for spec in specs:
        obj = _load(spec)
        if isinstance(obj, dict):
            tools.extend(obj.values())
        elif isinstance(obj, list | tuple):
            tools.extend(obj)
        else:
            tools.append(obj)
    return tools


def _load(spec: str) -> Any:
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"'{spec}' must be MODULE:ATTR or FILE.py:ATTR (for example mytools:run_sql)")
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise ValueError(f"file '{path}' not found")
        module_spec = importlib.util.spec_from_file_location(f"plait_tools_{path.stem}", path)
        if module_spec is None or module_spec.loader is None:
            raise ValueError(f"cannot load '{path}'")
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)
        except (ImportError, OSError) as exc:
            raise ValueError(f"cannot import '{path}': {exc}") from exc
    else:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ValueError(f"cannot import '{module_name}': {exc}") from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ValueError(f"'{module_name}' has no attribute '{attr}'") from None
