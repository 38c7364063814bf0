"""``@plait.tool``: turn a function into a tool that programs can call (``p.tool(fn, ...)``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, overload

from plait.runtime import Tool


@overload
def tool(fn: Callable[..., Any], /) -> Tool: ...


@overload
def tool(
    *,
    name: str | None = None,
    timeout_s: float | None = 60.0,
    retries: int = 0,
    retry_backoff_s: float = 0.1,
    max_concurrency: int | None = None,
    description: str | None = None,
) -> Callable[[Callable[..., Any]], Tool]: ...


def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    timeout_s: float | None = 60.0,
    retries: int = 0,
    retry_backoff_s: float = 0.1,
    max_concurrency: int | None = None,
    description: str | None = None,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Declare a tool. Use bare (``@plait.tool``) or with settings (``@plait.tool(timeout_s=5, retries=2)``).

    Parameters must be keyword-compatible and should be annotated: annotations give the JSON schema that
    arguments are checked against before a workflow runs and converted to when the tool is called; the return
    annotation is checked against what the tool returns. The result stays callable like the function.
    """

    def wrap(function: Callable[..., Any]) -> Tool:
        return Tool(
            function,
            name=name or "",
            description=description or "",
            timeout_s=timeout_s,
            retries=retries,
            retry_backoff_s=retry_backoff_s,
            max_concurrency=max_concurrency,
        )

    return wrap(fn) if fn is not None else wrap
