"""Runtime errors. A node's error fails its node; the failure policy decides what happens to its program."""

from __future__ import annotations


class NodeError(RuntimeError):
    """A node failed. ``kind`` says how: ``engine``, ``output`` (unparseable/ill-typed output), ``tool_raised``,
    ``tool_timeout``, ``tool_arguments``, ``tool_result``, ``upstream`` (an input variable has no value)."""

    def __init__(self, node: str, kind: str, message: str) -> None:
        super().__init__(f"node {node!r} failed ({kind}): {message}")
        self.node = node
        self.kind = kind
        self.message = message


class ProgramFailedError(RuntimeError):
    """A program failed: ``cause`` is the first error that was not handled."""

    def __init__(self, program_id: str, cause: BaseException) -> None:
        super().__init__(f"program {program_id!r} failed: {cause}")
        self.program_id = program_id
        self.cause = cause


class ProgramCancelledError(RuntimeError):
    def __init__(self, program_id: str) -> None:
        super().__init__(f"program {program_id!r} was cancelled")
        self.program_id = program_id


class ToolDefinitionError(TypeError):
    """A function cannot be a tool as written (for example an untyped or variadic parameter)."""
