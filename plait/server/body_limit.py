"""An ASGI middleware that refuses request bodies over ``max_bytes`` with a JSON 413, before any route runs.

It checks ``Content-Length`` up front and also counts streamed (chunked) bodies as they arrive, so a client cannot
bypass the limit by omitting the header.
"""

from __future__ import annotations

import json
from typing import Any

from plait.server.errors import error_body

Scope = dict[str, Any]


class BodyTooLarge(Exception):
    pass


class BodyLimitMiddleware:
    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    await self._reject(send, 400, "Content-Length is not an integer")
                    return
                if length > self.max_bytes:
                    await self._reject(send, 413, self._message(length))
                    return
        received = 0
        started = False

        async def limited_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._reject(send, 413, self._message(received))

    def _message(self, size: int) -> str:
        return f"request body of {size} bytes exceeds the server's limit of {self.max_bytes} bytes"

    @staticmethod
    async def _reject(send: Any, status: int, message: str) -> None:
        body = json.dumps(error_body(status, message, field="body")).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
