"""Runs tool calls: argument conversion, per-tool concurrency limits, per-attempt timeouts, retries with backoff.

Async tools are cancelled when their program is cancelled. Sync tools run in worker threads; a thread cannot be
interrupted, so a cancelled (or timed-out) sync call is abandoned: its result is discarded and its program moves on.
An abandoned thread no longer counts towards ``max_concurrency``, so a sync tool that ignores its timeout can briefly
run more copies than its limit; make long sync tools time-bounded themselves, or write them as ``async def``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import anyio
import msgspec

from plait.runtime.crash_points import crash_point
from plait.runtime.errors import NodeError
from plait.runtime.tools import IDEMPOTENCY_KEY_PARAMETER, Tool


class ToolExecutor:
    def __init__(self) -> None:
        self._limiters: dict[str, anyio.CapacityLimiter] = {}

    def _limiter(self, tool: Tool) -> anyio.CapacityLimiter | None:
        if tool.max_concurrency is None:
            return None
        limiter = self._limiters.get(tool.name)
        if limiter is None:
            limiter = self._limiters[tool.name] = anyio.CapacityLimiter(tool.max_concurrency)
        return limiter

    async def run(
        self,
        tool: Tool,
        arguments: dict[str, Any],
        node_id: str,
        on_attempt: Callable[[int], None] | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> Any:
        """The tool's checked result. Raises ``NodeError`` (kinds: tool_arguments, tool_raised, tool_timeout,
        tool_result) once the retries are used up. ``idempotency_key``: passed to a tool that declares the parameter
        (every attempt gets the same key; default: the node id)."""
        try:
            kwargs = tool.convert_arguments(arguments)
        except msgspec.ValidationError as error:
            raise NodeError(node_id, "tool_arguments", f"tool {tool.name!r}: {error}") from None
        if tool.takes_idempotency_key:
            kwargs[IDEMPOTENCY_KEY_PARAMETER] = idempotency_key or node_id
        delay = tool.retry_backoff_s
        for attempt in range(1, tool.retries + 2):
            if on_attempt is not None:
                on_attempt(attempt)
            try:
                result = await self._attempt(tool, kwargs)
            except TimeoutError:
                failure = NodeError(
                    node_id, "tool_timeout", f"tool {tool.name!r} ran past its {tool.timeout_s}s timeout"
                )
            except Exception as error:  # the tool's own exception, whatever it is
                raised = error.error if isinstance(error, _RaisedTimeoutError) else error
                failure = NodeError(
                    node_id, "tool_raised", f"tool {tool.name!r} raised {type(raised).__name__}: {raised}"
                )
                failure.__cause__ = raised
            else:
                crash_point("mid_tool")  # the tool's effect has happened; its result is not yet recorded
                try:
                    return tool.convert_result(result)
                except (msgspec.ValidationError, TypeError) as error:
                    raise NodeError(
                        node_id,
                        "tool_result",
                        f"tool {tool.name!r} returned data that does not match its return type: {error}",
                    ) from None
            if attempt <= tool.retries:
                await anyio.sleep(delay)
                delay *= 2
        raise failure

    async def _attempt(self, tool: Tool, kwargs: dict[str, Any]) -> Any:
        limiter = self._limiter(tool)
        if limiter is not None:
            async with limiter:
                return await self._call(tool, kwargs)
        return await self._call(tool, kwargs)

    @staticmethod
    async def _call(tool: Tool, kwargs: dict[str, Any]) -> Any:
        with anyio.fail_after(tool.timeout_s):
            try:
                if tool.is_async:
                    return await tool.fn(**kwargs)
                return await anyio.to_thread.run_sync(functools.partial(tool.fn, **kwargs), abandon_on_cancel=True)
            except TimeoutError as error:  # raised by the tool itself: our deadline surfaces as a cancellation here
                raise _RaisedTimeoutError(error) from error


class _RaisedTimeoutError(Exception):
    """A ``TimeoutError`` the tool raised, kept apart from the executor's own per-attempt timeout."""

    def __init__(self, error: TimeoutError) -> None:
        super().__init__(str(error))
        self.error = error
