"""Exceptions the engine raises. User mistakes name the field at fault; the REST layer maps them to 4xx."""

from __future__ import annotations


class EngineError(Exception):
    """Base class of every error the engine raises on purpose."""


class ModelNotFoundError(EngineError):
    """A model path (or the default model's wheel) does not exist."""


class ModelLoadError(EngineError):
    """A model file exists but cannot be used: corrupt, unsupported architecture or quantisation, missing tensors."""


class InvalidRequestError(EngineError, ValueError):
    """A request is malformed. ``field`` names the offending field so clients can point at it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class EngineStoppedError(EngineError):
    """The engine was shut down (or its step loop died) while the request was waiting or running."""
