"""The stored responses of the Responses API: in memory, per tenant, what ``previous_response_id`` and
``GET /v1/responses/{id}`` read.

A stored response keeps its response object, its program (the chain's), its own turns (this request's input messages
and its output as one assistant turn) and a reference to the response it continued; its conversation is the chain of
those turns. Instructions are not part of it: each request sends its own.

Bounds: each tenant keeps at most ``max_per_tenant`` responses; storing one more forgets the oldest (it can no longer
be fetched nor continued). A response that continued an evicted or deleted one still holds the turns it needs, so a
live chain never breaks; memory stays bounded by the stored count times one context window of text each. The ids of
responses made with ``store: false`` are remembered the same way (ids only), so that continuing one is answered as
such (400) rather than as unknown (404).

Tenants: lookups are by (tenant, id); another tenant's id answers exactly as an unknown one, so ids leak nothing.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from plait.server.errors import APIError
from plait.server.openai.protocol import ChatMessage
from plait.server.state import ServerState

DEFAULT_MAX_PER_TENANT = 10_000
_KEY = "responses_store"


@dataclass(frozen=True)
class StoredResponse:
    """One stored response. ``turns`` are its own; ``previous`` is the response it continued (kept alive by this one
    even when the store has forgotten it)."""

    id: str
    program_id: str
    body: dict[str, Any]  # the response object, JSON-ready, as it was returned
    turns: tuple[ChatMessage, ...]
    previous: StoredResponse | None = None

    def conversation(self) -> list[ChatMessage]:
        """Every turn of the chain up to and including this response's output, oldest first."""
        chain: list[StoredResponse] = []
        node: StoredResponse | None = self
        while node is not None:
            chain.append(node)
            node = node.previous
        return [turn for stored in reversed(chain) for turn in stored.turns]


class ResponseStore:
    """Stored responses per tenant, each tenant bounded by ``max_per_tenant`` (the oldest forgotten first)."""

    def __init__(self, max_per_tenant: int = DEFAULT_MAX_PER_TENANT) -> None:
        if max_per_tenant < 1:
            raise ValueError(f"max_per_tenant must be >= 1, got {max_per_tenant}")
        self.max_per_tenant = max_per_tenant
        self._stored: dict[str, OrderedDict[str, StoredResponse]] = {}
        self._unstored: dict[str, OrderedDict[str, None]] = {}

    def put(self, tenant: str, response: StoredResponse) -> None:
        """Store ``response`` for ``tenant``, forgetting the tenant's oldest when over the bound."""
        _bounded_add(self._stored.setdefault(tenant, OrderedDict()), response.id, response, self.max_per_tenant)

    def note_unstored(self, tenant: str, response_id: str) -> None:
        """Remember that ``response_id`` was made with ``store: false``."""
        _bounded_add(self._unstored.setdefault(tenant, OrderedDict()), response_id, None, self.max_per_tenant)

    def get(self, tenant: str, response_id: str) -> StoredResponse:
        """The tenant's stored response; ``APIError`` 404 naming ``response_id`` when it is unknown, was not stored,
        was deleted or forgotten, or is another tenant's."""
        stored = self._lookup(tenant, response_id)
        if stored is None:
            raise APIError(404, f"response '{response_id}' not found", field="response_id")
        return stored

    def previous(self, tenant: str, response_id: str) -> StoredResponse:
        """The stored response a request continues; ``APIError`` naming ``previous_response_id``: 400 when it was
        made with ``store: false``, 404 when it is unknown, deleted, forgotten, or another tenant's."""
        field = "previous_response_id"
        stored = self._lookup(tenant, response_id)
        if stored is not None:
            return stored
        if response_id in self._unstored.get(tenant, ()):
            message = f"response '{response_id}' was created with store: false, so it cannot be continued"
            raise APIError(400, message, field=field)
        raise APIError(404, f"previous response '{response_id}' not found", field=field)

    def delete(self, tenant: str, response_id: str) -> StoredResponse:
        """Forget the tenant's stored response (404 naming ``response_id`` when there is none)."""
        stored = self.get(tenant, response_id)
        del self._stored[tenant][response_id]
        return stored

    def _lookup(self, tenant: str, response_id: str) -> StoredResponse | None:
        responses = self._stored.get(tenant)
        return None if responses is None else responses.get(response_id)

    def __len__(self) -> int:
        return sum(len(responses) for responses in self._stored.values())


def _bounded_add(entries: OrderedDict[str, Any], key: str, value: Any, bound: int) -> None:
    entries[key] = value
    entries.move_to_end(key)
    while len(entries) > bound:
        entries.popitem(last=False)


def store_of(state: ServerState) -> ResponseStore:
    """The server's response store (made on first use)."""
    store = state.extras.get(_KEY)
    if store is None:
        store = state.extras[_KEY] = ResponseStore()
    return store
