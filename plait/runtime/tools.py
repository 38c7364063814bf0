"""Tools: Python functions (sync or async) that programs call, with arguments and results checked by type.

A tool's parameter and return annotations become a JSON schema (for validation before a workflow runs, and for
REST users) and a msgspec type (for converting arguments and checking results when it runs). Unannotated
parameters accept anything.

Idempotency: a tool runs at least once per call (a retry, or a resume after a crash, may run it again). A tool with
side effects declares a parameter named ``idempotency_key`` (``def charge(amount: int, idempotency_key: str)``): the
runtime fills it with a key that is the same for every run of the same call (``"<program id>/<node id>"``), so the
tool can apply its effect once per key. It is not an argument a program passes, and not part of the tool's schema.
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from plait.dag import ToolSpec
from plait.runtime.errors import ToolDefinitionError

_TOOL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*\Z")
IDEMPOTENCY_KEY_PARAMETER = "idempotency_key"  # filled by the runtime, never by the caller (see the module doc)


@dataclass(eq=False)
class Tool:
    """A callable registered for programs. Call it directly like the function it wraps.

    ``timeout_s``: each attempt's limit (None: none). ``retries``: extra attempts after an exception or timeout,
    spaced by ``retry_backoff_s`` doubling each time. ``max_concurrency``: calls of this tool running at once
    across all programs (None: unlimited).
    """

    fn: Callable[..., Any]
    name: str = ""
    description: str = ""
    timeout_s: float | None = 60.0
    retries: int = 0
    retry_backoff_s: float = 0.1
    max_concurrency: int | None = None
    params_type: type = field(init=False)
    return_type: Any = field(init=False)
    spec: ToolSpec = field(init=False)
    takes_idempotency_key: bool = field(init=False)  # declares ``idempotency_key``: the runtime passes the call's key

    def __post_init__(self) -> None:
        if not callable(self.fn):
            raise ToolDefinitionError(f"a tool must be callable, got {self.fn!r}")
        self.name = self.name or self.fn.__name__
        if not _TOOL_NAME.match(self.name):
            raise ToolDefinitionError(f"tool name {self.name!r} must use letters, digits, _ . -")
        self.description = self.description or inspect.getdoc(self.fn) or ""
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise ToolDefinitionError(f"tool {self.name!r}: timeout_s must be positive")
        if self.retries < 0 or (self.max_concurrency is not None and self.max_concurrency < 1):
            raise ToolDefinitionError(f"tool {self.name!r}: retries must be >= 0 and max_concurrency >= 1")
        self.takes_idempotency_key = IDEMPOTENCY_KEY_PARAMETER in inspect.signature(self.fn).parameters
        self.params_type, self.return_type = _signature_types(self.fn, self.name)
        self.spec = ToolSpec(
            self.name, _parameters_schema(self.params_type), _return_schema(self.return_type), self.description
        )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.fn)

    def convert_arguments(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """Arguments converted to the declared types; raises ``msgspec.ValidationError`` naming the parameter."""
        converted = msgspec.convert(arguments, self.params_type)
        return {name: getattr(converted, name) for name in self.params_type.__struct_fields__}

    def convert_result(self, result: Any) -> Any:
        """The result as JSON-compatible data, checked against the return annotation (raises ``ValidationError``)."""
        if self.return_type is Any:
            return msgspec.to_builtins(result)
        checked = msgspec.convert(msgspec.to_builtins(result), self.return_type, strict=False)
        return msgspec.to_builtins(checked)


def _signature_types(fn: Callable[..., Any], name: str) -> tuple[type, Any]:
    try:
        hints = typing.get_type_hints(fn)
    except Exception as error:  # an annotation that does not resolve
        raise ToolDefinitionError(f"tool {name!r}: cannot resolve its type hints: {error}") from error
    fields = []
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
            raise ToolDefinitionError(f"tool {name!r}: parameter {param.name!r} must be a named (keyword) parameter")
        if param.name == IDEMPOTENCY_KEY_PARAMETER:
            continue  # the runtime's to fill: not an argument
        annotation = hints.get(param.name, Any)
        if param.default is inspect.Parameter.empty:
            fields.append((param.name, annotation))
        else:
            fields.append((param.name, annotation, param.default))
    params_type = msgspec.defstruct(
        f"{name.replace('.', '_').replace('-', '_')}_arguments", fields, kw_only=True, forbid_unknown_fields=True
    )
    returns = hints.get("return", Any)
    return params_type, (Any if returns is type(None) else returns)


def _parameters_schema(params_type: type) -> dict[str, Any]:
    (ref,), components = msgspec.json.schema_components([params_type])
    own = dict(components.pop(ref["$ref"].rsplit("/", 1)[-1]))
    own.pop("title", None)
    own.setdefault("properties", {})
    if components:
        own["$defs"] = components
    return own


def _return_schema(return_type: Any) -> dict[str, Any] | None:
    if return_type is Any:
        return None
    try:
        return msgspec.json.schema(return_type)
    except TypeError:  # a type msgspec cannot describe: checked at run time only
        return None


class ToolRegistry:
    """Tools by name. Registering the same name twice with a different function is an error."""

    def __init__(self, tools: Iterable[Tool | Callable[..., Any]] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        for tool in tools:
            self.register(tool)

    def register(self, tool: Tool | Callable[..., Any]) -> Tool:
        tool = tool if isinstance(tool, Tool) else Tool(tool)
        existing = self._tools.get(tool.name)
        if existing is not None and existing.fn is not tool.fn:
            raise ToolDefinitionError(f"a different tool named {tool.name!r} is already registered")
        self._tools.setdefault(tool.name, tool)
        return self._tools[tool.name]

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self):
        return iter(self._tools.values())

    def specs(self) -> dict[str, ToolSpec]:
        return {name: tool.spec for name, tool in self._tools.items()}
