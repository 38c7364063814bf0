"""Durable REST workflows: what the server writes to its journal and reads back. ``plait/runtime/journal.py`` holds
the contract of what is committed before what; this module applies it to the workflow routes.

- Accept: ``POST /v1/workflows`` commits the workflow (its spec with the inputs, its options, the tenant, the
  Idempotency-Key and the request's digest) before the workflow starts and before the 201.
- Steps: each node's outcome is committed before its dependents start (``ProgramExecution`` with a
  ``ProgramJournal`` matching nodes by id).
- Events: the ``EventRecorder`` writes the event log (see ``events.py``), so SSE replays after a restart.
- Growth: an open workflow's node batch is committed before ``POST .../nodes`` answers.
- End: the terminal state and the final event are committed together; DELETE and close answer after that. A server
  that drains (SIGTERM) records no end for the workflows it stops: they are suspended and resume in the next process.
- Start: every accepted, unfinished workflow resumes (``serving.resume_workflows``); a finished one is loaded from
  the journal when it is looked up, so ids stay valid across restarts for ``retain_finished_s``.
- Idempotency-Key: a retry (same tenant, same key, same body) gets the workflow the first request created; the key
  with another body is a 422 naming the header. A key lives as long as its workflow is retained.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import msgspec

from plait.dag import WorkflowSpec, decode_workflow
from plait.runtime.journal import Journal
from plait.runtime.journal_rows import EventRow, ProgramRow
from plait.server.errors import APIError
from plait.server.workflows.events import LoggedEvent
from plait.server.workflows.protocol import SubmissionOptions
from plait.server.workflows.registry import WorkflowEntry
from plait.server.workflows.views import jsonable

JOURNAL_FILE = "journal.sqlite3"
WORKFLOW_KIND = "workflow"  # the journal's kind of REST workflows (plait.Runtime programs are "python")
IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_IDEMPOTENCY_KEY_CHARS = 255
_EXTRAS_KEY = "journal"


class JournaledSubmission(msgspec.Struct, kw_only=True):
    """What the journal keeps of a submission: enough to build the workflow again."""

    workflow: WorkflowSpec  # with the submission's inputs merged in
    options: SubmissionOptions  # (its inputs are in the workflow)
    deadline_at: float | None = None  # unix time: a resumed workflow keeps its original deadline


def open_journal(state: Any, path: str | Path | None = None) -> Journal:
    """Open the journal (``<data_dir>/journal.sqlite3`` by default) and attach it to the server's state; raises
    ``JournalError`` saying what to fix. Workflows it holds resume once the engine is loaded (``resume_workflows``)."""
    config = state.config
    journal = Journal(
        Path(path) if path is not None else Path(config.data_dir) / JOURNAL_FILE,
        retain_finished_s=config.retain_finished_s,
    )
    attach_journal(state, journal)
    return journal


def attach_journal(state: Any, journal: Journal | None) -> None:
    """Make workflows submitted from now on durable in ``journal`` (None: not durable). The caller owns it."""
    if journal is None:
        state.extras.pop(_EXTRAS_KEY, None)
    else:
        state.extras[_EXTRAS_KEY] = journal


def journal_of(state: Any) -> Journal | None:
    """The server's journal (None: not durable)."""
    return state.extras.get(_EXTRAS_KEY)


def check_idempotency_key(key: str) -> str:
    """The key, checked (422 naming the header when it is empty, too long or not printable ASCII)."""
    if not key or len(key) > MAX_IDEMPOTENCY_KEY_CHARS or not key.isascii() or not key.isprintable():
        raise APIError(
            422,
            f"{IDEMPOTENCY_HEADER}: must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} printable ASCII characters "
            "(for example a UUID)",
            field=IDEMPOTENCY_HEADER,
        )
    return key


def request_digest(raw: Any) -> str:
    """A digest of a request body (its JSON with sorted keys): what a retry with the same key must match."""
    return hashlib.sha256(msgspec.json.encode(raw, order="sorted")).hexdigest()


def key_reused(workflow_id: str) -> APIError:
    return APIError(
        422,
        f"{IDEMPOTENCY_HEADER}: this key was used for workflow '{workflow_id}' with a different request body; "
        "a retry must send the same body, and a new request needs a new key",
        field=IDEMPOTENCY_HEADER,
    )


def deadline_at(options: SubmissionOptions) -> float | None:
    return None if options.deadline_s is None else time.time() + options.deadline_s


async def record_accept(journal: Journal, entry: WorkflowEntry, spec: WorkflowSpec, options: SubmissionOptions) -> None:
    """Commit an accepted workflow (returns once durable)."""
    record = JournaledSubmission(
        workflow=spec, options=msgspec.structs.replace(options, inputs={}), deadline_at=entry.deadline_at
    )
    row = ProgramRow(
        id=entry.id,
        kind=WORKFLOW_KIND,
        name=spec.name,
        spec=msgspec.to_builtins(record),
        tenant=entry.tenant,
        idempotency_key=entry.idempotency_key,
        request_digest=entry.request_digest,
        created_at=entry.created_at,
    )
    await journal.accept(row)


def read_submission(row: ProgramRow) -> JournaledSubmission:
    """A journaled submission, decoded (raises ``ValueError`` when it no longer parses)."""
    try:
        record = msgspec.convert(row.spec, JournaledSubmission)
    except msgspec.ValidationError as error:
        raise ValueError(f"the journaled submission does not parse: {error}") from None
    record.workflow = decode_workflow(msgspec.to_builtins(record.workflow))
    return record


async def record_batch(journal: Journal, entry: WorkflowEntry, body: dict[str, Any]) -> None:
    """Commit a node batch added to an open workflow (returns once durable)."""
    entry.batches += 1
    await journal.add_nodes(entry.id, entry.batches, body)


def event_writer(journal: Journal, workflow_id: str) -> Any:
    """The ``durable`` callback of a workflow's ``EventRecorder``."""

    def write(event: LoggedEvent) -> None:
        journal.write_event(workflow_id, EventRow(event.seq, event.kind, jsonable(event.data)))

    return write


def record_end(journal: Journal, entry: WorkflowEntry, final: LoggedEvent) -> None:
    """Commit the terminal state with the final event (``entry.ended`` resolves once it is durable)."""
    result = final.data.get("outputs")
    event = EventRow(final.seq, final.kind, jsonable(final.data))
    entry.ended = journal.finish(  # type: ignore[assignment]
        entry.id, final.kind, error=entry.error, result=jsonable(result), final_event=event
    )


def restored_events(journal: Journal, workflow_id: str) -> list[LoggedEvent]:
    return [LoggedEvent(row.seq, row.kind, row.data) for row in journal.events(workflow_id)]
