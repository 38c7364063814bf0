"""Server-sent events for streamed completions: ``data: {json}\\n\\n`` per chunk, then ``data: [DONE]\\n\\n``.

The route primes the generation (waits for its first update) before answering, so request errors that only the
engine can see still come back as a plain 4xx; once the 200 is sent, a failure becomes an ``error`` event (which the
``openai`` client raises) followed by ``[DONE]``.

Clean-up is guaranteed on every path: the event generator's ``finally`` runs when the stream ends or fails, and the
response's background task (which Starlette runs after a client disconnect too) closes the generator, which aborts
the engine request, frees its KV and releases the tenant's admission.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any, Protocol

from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.background import BackgroundTask

from plait.server.errors import error_body
from plait.server.openai.generation import Generation, GenerationFailed, SampleUpdate
from plait.server.openai.responses import dump
from plait.server.sse_data import one_line_json

logger = logging.getLogger("plait.server")
DONE = b"data: [DONE]\n\n"
CLIENT_CLOSED = 499  # nginx's code for "the client closed the connection": the status metrics count


class Output(Protocol):
    def first_chunks(self) -> list[Any]: ...
    def chunks(self, update: SampleUpdate) -> list[Any]: ...
    def usage_chunk(self) -> Any: ...


def sse(payload: BaseModel | dict[str, Any]) -> bytes:
    body = dump(payload) if isinstance(payload, BaseModel) else payload
    return b"data: " + one_line_json(json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()) + b"\n\n"


class EventStream:
    """The events of ``gen`` rendered by ``output``; ``first`` is the update the route already pulled."""

    def __init__(
        self, gen: Generation, output: Output, updates: AsyncIterator[SampleUpdate], first: SampleUpdate | None
    ) -> None:
        self.gen = gen
        self.output = output
        self.updates = updates
        self.first = first
        self.status = CLIENT_CLOSED  # until the stream reaches its end
        self.events = self._events()

    def response(self) -> StreamingResponse:
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(
            self.events, media_type="text/event-stream", headers=headers, background=BackgroundTask(self.close)
        )

    async def _events(self) -> AsyncIterator[bytes]:
        try:
            for chunk in self.output.first_chunks():
                yield sse(chunk)
            pending = [self.first] if self.first is not None else []
            for update in pending:
                for chunk in self.output.chunks(update):
                    yield sse(chunk)
            async for update in self.updates:
                for chunk in self.output.chunks(update):
                    yield sse(chunk)
            if self.gen.plan.include_usage:
                yield sse(self.output.usage_chunk())
            self.status = 200
        except GenerationFailed as failure:
            self.status = failure.status
            yield sse(failure.api_error().body())
        except Exception as error:  # a bug: say so in the stream rather than cut it silently
            logger.exception("streamed %s request failed", self.gen.plan.endpoint)
            self.status = 500
            yield sse(error_body(500, f"internal error: {type(error).__name__}"))
        finally:
            await self._finish()
        yield DONE

    async def _finish(self) -> None:
        await self.updates.aclose()  # a no-op when it ended; otherwise this aborts the engine request
        self.gen.close(self.status)

    async def close(self) -> None:
        """Run after the response (also after a client disconnect): make sure everything was released."""
        await self.events.aclose()
        await self._finish()
