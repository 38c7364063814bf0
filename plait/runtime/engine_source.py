"""Where a runtime's engine comes from: an ``Engine`` the caller owns, or one built from a config or model path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from plait.engine import Engine, EngineConfig


def open_engine(source: Any = None) -> tuple[Engine, bool]:
    """``(engine, owned)``: ``owned`` is True when the engine was created here (the caller must close it).

    ``source``: an ``Engine`` or a ``ReplicaSet`` (used as is), an ``EngineConfig``, a ``ReplicatedEngine`` (engine
    replicas behind one facade), a model path, or None for the default model.
    """
    from plait.runtime.replicas import ReplicaSet, ReplicatedEngine

    if isinstance(source, Engine | ReplicaSet):
        return source, False
    if isinstance(source, ReplicatedEngine):
        return ReplicaSet.start(source.engine, source.replicas), True
    if source is None:
        return Engine(EngineConfig()), True
    if isinstance(source, EngineConfig):
        return Engine(source), True
    if isinstance(source, str | Path):
        return Engine(EngineConfig(model=str(source))), True
    raise TypeError(f"engine must be an Engine, EngineConfig, model path or None, got {type(source).__name__}")
