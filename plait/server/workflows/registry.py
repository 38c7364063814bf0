"""The REST workflows the server knows: each with its tenant, event log and client-tool executor.

Ownership rule (see ``tenants.py``): a workflow of another tenant is looked up exactly like an unknown id (404).
Finished workflows are kept for status queries, events and listing, up to ``history`` of them and for at most
``retain_s`` after they finished (the server's ``retain_finished_s``, as in the journal), the oldest forgotten first,
together with their owner tag in ``ServerState.owners`` and, through ``on_forget``, their program in the executor (its
records and timeline): a server's memory for finished work is bounded by age, as its journal is. With a journal, a
workflow this process does not hold (finished in an earlier process, or forgotten) is loaded from the journal by
``fallback`` on lookup. Idempotency keys: a workflow submitted with one is found again by ``(tenant, key)``.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from plait.runtime.executor import FINISHED_HISTORY
from plait.runtime.program_execution import ProgramExecution
from plait.server.errors import APIError, not_found
from plait.server.workflows.client_tools import ClientToolExecutor, ProgramTools
from plait.server.workflows.events import EventLog


@dataclass(eq=False)
class WorkflowEntry:
    program: ProgramExecution
    tenant: str
    log: EventLog
    tools: ClientToolExecutor
    registry: ProgramTools
    open: bool = False
    created_at: float = field(default_factory=time.time)  # unix time
    note: str | None = None  # why the server ended it, when it did (a deadline)
    # An open workflow's end: set by POST .../close with the caller's error (None: success).
    closing: asyncio.Future[str | None] | None = None
    idempotency_key: str | None = None  # the submitter's Idempotency-Key header
    request_digest: str | None = None  # the submission's digest: a retry with the same key must match it
    # Durable workflows: done once the acceptance is committed (retries with the same key wait for it) and once
    # the terminal state is committed (DELETE and close answer after it). None without a journal.
    accepted: asyncio.Future[None] | None = None
    ended: asyncio.Future[None] | None = None
    durable: bool = False  # its acceptance is committed to the journal (its end will be too)
    cancel_requested: bool = False  # cancelled by its caller or its deadline (not by a draining server)
    deadline_at: float | None = None  # unix time by which it must end (its deadline_s from submission)
    deadline_timer: asyncio.TimerHandle | None = None
    batches: int = 0  # node batches added to an open workflow (their journal sequence)
    grow_lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one node batch at a time

    @property
    def id(self) -> str:
        return self.program.program_id

    @property
    def finished(self) -> bool:
        return self.program.state.finished

    @property
    def error(self) -> str | None:
        return self.note or self.program.record.error


class WorkflowRegistry:
    def __init__(self, history: int = FINISHED_HISTORY, retain_s: float | None = None) -> None:
        self.history = history
        self.retain_s = retain_s  # finished workflows are forgotten this long after they finished (None: by count)
        self.on_forget: Callable[[str], None] | None = None  # called with each forgotten workflow's id
        self._entries: OrderedDict[str, WorkflowEntry] = OrderedDict()  # creation order
        self._by_key: dict[tuple[str, str], WorkflowEntry] = {}  # (tenant, idempotency key) -> entry
        # Loads a workflow this process does not hold from the journal (None: no journal, or not there).
        self.fallback: Callable[[str], WorkflowEntry | None] | None = None
        self.owners: dict[str, str] | None = None  # the server's owner tags, kept with the entries

    def add(self, entry: WorkflowEntry, owners: dict[str, str]) -> None:
        self.owners = owners
        self._entries[entry.id] = entry
        owners[entry.id] = entry.tenant
        if entry.idempotency_key is not None:
            self._by_key[(entry.tenant, entry.idempotency_key)] = entry
        self.trim()

    def trim(self, now: float | None = None) -> int:
        """Forget the finished workflows beyond ``history`` (oldest first) and those that finished more than
        ``retain_s`` before ``now`` (``time.monotonic()``); how many were forgotten."""
        now = time.monotonic() if now is None else now
        finished = [(key, item.program.record.finished_at) for key, item in self._entries.items() if item.finished]
        excess = len(finished) - self.history
        cutoff = None if self.retain_s is None else now - self.retain_s
        stale = [
            key
            for position, (key, finished_at) in enumerate(finished)
            if position < excess or (cutoff is not None and finished_at is not None and finished_at <= cutoff)
        ]
        for key in stale:
            self.discard(key)
        return len(stale)

    def discard(self, workflow_id: str) -> None:
        """Forget a workflow (its id answers 404 unless the journal holds it) and, once finished, its program."""
        entry = self._entries.pop(workflow_id, None)
        if entry is None:
            return
        if self.owners is not None:
            self.owners.pop(workflow_id, None)
        if entry.idempotency_key is not None:
            self._by_key.pop((entry.tenant, entry.idempotency_key), None)
        if self.on_forget is not None:
            self.on_forget(workflow_id)

    def get(self, workflow_id: str, tenant: str) -> WorkflowEntry:
        """The tenant's workflow; 404 for unknown ids and other tenants' workflows alike."""
        entry = self._entries.get(workflow_id)
        if entry is None and self.fallback is not None:
            entry = self.fallback(workflow_id)
        if entry is None or entry.tenant != tenant:
            raise not_found("workflow", workflow_id)
        return entry

    def by_key(self, tenant: str, idempotency_key: str) -> WorkflowEntry | None:
        """The workflow the tenant submitted with ``idempotency_key`` that this process holds."""
        return self._by_key.get((tenant, idempotency_key))

    def holds(self, workflow_id: str) -> bool:
        return workflow_id in self._entries

    def page(self, tenant: str, limit: int, after: str | None) -> tuple[list[WorkflowEntry], bool]:
        """Up to ``limit`` of the tenant's workflows, newest first, starting after the one with id ``after``;
        also whether more follow."""
        mine = [entry for entry in reversed(self._entries.values()) if entry.tenant == tenant]
        start = 0
        if after is not None:
            ids = [entry.id for entry in mine]
            if after not in ids:
                raise APIError(400, f"'after': no workflow '{after}' to continue from", field="after")
            start = ids.index(after) + 1
        chunk = mine[start : start + limit]
        return chunk, start + limit < len(mine)

    def __len__(self) -> int:
        return len(self._entries)


def registry_of(state: Any) -> WorkflowRegistry:
    """The server's workflow registry (kept in ``ServerState.extras``)."""
    registry = state.extras.get("workflows")
    if registry is None:
        registry = state.extras["workflows"] = WorkflowRegistry(retain_s=state.config.retain_finished_s)
        registry.on_forget = state.executor.forget
    return registry
