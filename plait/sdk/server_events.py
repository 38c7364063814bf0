"""Server-sent events as the plait server sends them (``GET /v1/workflows/{id}/events``), parsed from an httpx
stream; and the errors the REST API answers with."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx

FINAL_EVENTS = ("done", "failed", "cancelled")


@dataclass(frozen=True)
class ServerEvent:
    """One event: ``kind`` (``node_started``, ``token``, ``tool_call``, ``node_finished``, ``done``, ``failed``,
    ``cancelled``), its JSON ``data`` and its ``id`` (what ``Last-Event-ID`` resumes from)."""

    kind: str
    data: dict[str, Any] = field(default_factory=dict)
    id: int | None = None

    @property
    def is_final(self) -> bool:
        return self.kind in FINAL_EVENTS


async def parse_events(lines: AsyncIterator[str]) -> AsyncIterator[ServerEvent]:
    """Events from the lines of a ``text/event-stream`` body (comments and keep-alives skipped)."""
    kind, data, event_id = "message", [], None
    async for line in lines:
        if not line:
            if data:
                yield ServerEvent(kind, json.loads("\n".join(data)), event_id)
            kind, data, event_id = "message", [], None
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            kind = value
        elif name == "data":
            data.append(value)
        elif name == "id" and value.isdigit():
            event_id = int(value)
    if data:
        yield ServerEvent(kind, json.loads("\n".join(data)), event_id)


class ServerError(Exception):
    """The server refused a request: ``status`` (HTTP), ``message``, ``field`` (the input to fix), ``problems`` (a
    rejected workflow's list of ``{"node", "field", "message"}``), ``retry_after`` (seconds, on 429)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        field: str | None = None,
        type: str | None = None,
        problems: list[dict[str, Any]] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.field = field
        self.type = type
        self.problems = problems or []
        self.retry_after = retry_after

    @classmethod
    def from_response(cls, response: httpx.Response) -> ServerError:
        try:
            error = response.json().get("error") or {}
        except (ValueError, AttributeError):
            error = {}
        retry = response.headers.get("retry-after")
        return cls(
            response.status_code,
            error.get("message") or response.text or response.reason_phrase,
            field=error.get("field"),
            type=error.get("type"),
            problems=error.get("problems"),
            retry_after=float(retry) if retry and retry.replace(".", "", 1).isdigit() else None,
        )


class RemoteFailure(RuntimeError):
    """Why a workflow failed on the server (the cause of ``ProgramFailedError`` for remote runs)."""
