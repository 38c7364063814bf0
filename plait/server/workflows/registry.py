"""The REST workflows the server knows: each with its tenant, event log and client-tool executor.

Ownership rule (see ``tenants.py``): a workflow of another tenant is looked up exactly like an unknown id (404).
Finished workflows are kept for status queries, events and listing, up to ``history`` of them (oldest forgotten
first, together with their owner tag in ``ServerState.owners``).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
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
    def __init__(self, history: int = FINISHED_HISTORY) -> None:
        self.history = history
        self._entries: OrderedDict[str, WorkflowEntry] = OrderedDict()  # creation order

    def add(self, entry: WorkflowEntry, owners: dict[str, str]) -> None:
        self._entries[entry.id] = entry
        owners[entry.id] = entry.tenant
        finished = [key for key, item in self._entries.items() if item.finished]
        for key in finished[: max(0, len(finished) - self.history)]:
            del self._entries[key]
            owners.pop(key, None)

    def get(self, workflow_id: str, tenant: str) -> WorkflowEntry:
        """The tenant's workflow; 404 for unknown ids and other tenants' workflows alike."""
        entry = self._entries.get(workflow_id)
        if entry is None or entry.tenant != tenant:
            raise not_found("workflow", workflow_id)
        return entry

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
        registry = state.extras["workflows"] = WorkflowRegistry()
    return registry
