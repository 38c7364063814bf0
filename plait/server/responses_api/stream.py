"""Server-sent events of a streamed response: ``event: TYPE`` and ``data: {json}`` per event (OpenAI's framing; no
``[DONE]`` line, the stream ends after ``response.completed``, ``response.incomplete`` or ``response.failed``).

The route primes the generation (waits for its first update) before answering, so request errors still come back as
a plain 4xx; once the 200 is sent, a failure becomes an ``error`` event and ``response.failed``.

Ordering rule: when the generation ends, it is closed (its program call ends, its admission is released) and
``on_done`` stores the response *before* the final event goes out, so a client that continues the chain as soon as it
reads ``response.completed`` finds the response stored and its program between calls.

Clean-up is guaranteed on every path, as for chat streams: the generator's ``finally`` runs when the stream ends or
fails, and the response's background task (run after a client disconnect too) closes the generator, which aborts the
engine request, frees its KV and releases the tenant's admission.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from plait.server.openai.generation import Generation, GenerationFailed, SampleUpdate
from plait.server.openai.stream import CLIENT_CLOSED
from plait.server.responses_api.output import ResponseOutput
from plait.server.sse_data import one_line_json

logger = logging.getLogger("plait.server")


def sse_event(event: dict[str, Any]) -> bytes:
    data = one_line_json(json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode())
    return b"event: %s\ndata: %s\n\n" % (event["type"].encode(), data)


class ResponseEventStream:
    """The events of ``gen`` built by ``output``; ``first`` is the update the route already pulled; ``on_done`` runs
    once the generation ended well (status 200), before the final event."""

    def __init__(
        self,
        gen: Generation,
        output: ResponseOutput,
        updates: AsyncIterator[SampleUpdate],
        first: SampleUpdate | None,
        on_done: Callable[[], None],
    ) -> None:
        self.gen = gen
        self.output = output
        self.updates = updates
        self.first = first
        self.on_done = on_done
        self.status = CLIENT_CLOSED  # until the stream reaches its end
        self.events = self._events()

    def response(self, headers: dict[str, str]) -> StreamingResponse:
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **headers}
        return StreamingResponse(
            self.events, media_type="text/event-stream", headers=headers, background=BackgroundTask(self.close)
        )

    async def _events(self) -> AsyncIterator[bytes]:
        final: list[dict[str, Any]] = []
        try:
            for event in self.output.start():
                yield sse_event(event)
            if self.first is not None:
                for event in self.output.feed(self.first):
                    yield sse_event(event)
            async for update in self.updates:
                for event in self.output.feed(update):
                    yield sse_event(event)
            final = self.output.finish(self.gen)
            self.status = 200
        except GenerationFailed as failure:
            self.status = failure.status
            code = "server_error" if failure.status >= 500 else "invalid_request"
            final = self.output.fail(code, str(failure), failure.field)
        except Exception as error:  # a bug: say so in the stream rather than cut it silently
            logger.exception("streamed response %s failed", self.output.id)
            self.status = 500
            final = self.output.fail("server_error", f"internal error: {type(error).__name__}")
        finally:
            await self._finish()
        if self.status == 200:
            self.on_done()
            final.append(self.output.final_event())
        for event in final:
            yield sse_event(event)

    async def _finish(self) -> None:
        await self.updates.aclose()  # a no-op when it ended; otherwise this aborts the engine request
        self.gen.close(self.status)

    async def close(self) -> None:
        """Run after the response (also after a client disconnect): make sure everything was released."""
        await self.events.aclose()
        await self._finish()
