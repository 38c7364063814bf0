"""The journal: a durable record of accepted programs and of what their steps produced, in one SQLite file.

What is committed before what (each arrow: the left side is durable before the right side happens):

- accept: a program's row (its spec and inputs, options, tenant, idempotency key) -> the submitter is told that the
  program was accepted (HTTP 201) and its first node starts;
- a node's outcome (its value, metadata and generated token ids; or the error of a step that failed) -> the node's
  output variable is settled, so nothing ever depends on an output a crash could lose, and a recorded node never runs
  again: a resumed program replays it;
- an open workflow's added nodes -> the caller is told they were added;
- a program's terminal state (with its final event) -> the caller of DELETE or close is answered. A program without
  a terminal state is resumed by the next process that opens the journal;
- events (``write_event``) are durable in the order they are written, but nothing waits for them: after a crash the
  stored log is a prefix of what followers saw, and a resumed program's new events get larger ids (see ``boot``),
  so a follower resuming from ``Last-Event-ID`` misses nothing (it may see an event twice).

Writes go to one writer thread (``group_commit.py``) in the order they are queued; it commits everything queued as
one transaction, so the cost of durability is per batch, not per node, and the event loop never waits on the disk; a
write that fails (a broken constraint) is rolled back alone and its waiter gets the error. SQLite runs in WAL mode with
``synchronous=FULL``: a commit returns once the write-ahead log is on disk.

One process uses a journal at a time (an exclusive ``flock`` on ``<path>.lock``, released by the OS however the
process ends): two processes resuming the same programs would run them twice. Retention: programs that finished more
than ``retain_finished_s`` ago are deleted with all their rows by the writer thread every ``sweep_interval_s``, and
the freed pages are returned to the file system (incremental vacuum), so the file stays bounded.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from plait.runtime.group_commit import GroupCommitWriter, Operation
from plait.runtime.journal_rows import (
    PROGRAM_COLUMNS,
    EventRow,
    OutcomeRow,
    ProgramRow,
    decode_value,
    encode_value,
    program_row,
)

logger = logging.getLogger("plait.runtime.journal")

SCHEMA_VERSION = 1
BOOT_SEQ_SHIFT = 32  # a resumed program's event ids start at boot << BOOT_SEQ_SHIFT (above every earlier id)
_WAL_SIZE_LIMIT = 64 * 1024 * 1024  # the write-ahead log is truncated back to this after a checkpoint

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS programs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    tenant TEXT,
    idempotency_key TEXT,
    request_digest TEXT,
    name TEXT NOT NULL,
    spec BLOB NOT NULL,
    state TEXT NOT NULL DEFAULT 'running',
    error TEXT,
    result BLOB,
    created_at REAL NOT NULL,
    finished_at REAL
);
CREATE UNIQUE INDEX IF NOT EXISTS programs_by_idempotency_key
    ON programs (kind, tenant, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS programs_by_finish ON programs (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS programs_unfinished ON programs (kind) WHERE finished_at IS NULL;
CREATE TABLE IF NOT EXISTS additions (
    program_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (program_id, seq)
);
CREATE TABLE IF NOT EXISTS outcomes (
    program_id TEXT NOT NULL,
    node_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    signature TEXT,
    state TEXT NOT NULL,
    value BLOB,
    error_kind TEXT,
    error TEXT,
    details BLOB,
    PRIMARY KEY (program_id, node_id)
);
CREATE TABLE IF NOT EXISTS events (
    program_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (program_id, seq)
) WITHOUT ROWID;
"""


class JournalError(RuntimeError):
    """The journal cannot be used: the message says why and what to do."""


class Journal:
    """A journal file, open for this process. A write is queued when it is called (writes commit in call order);
    those that return an awaitable resolve once durable and must be called in a running event loop (the one that
    awaits them); ``write_event`` returns nothing. Reads see what has been committed. Thread-safe."""

    def __init__(
        self, path: str | Path, *, retain_finished_s: float | None = None, sweep_interval_s: float = 60.0
    ) -> None:
        """Open (or create) the journal at ``path``. ``retain_finished_s``: delete programs this long after they
        finish (None: keep them). Raises ``JournalError`` when the file is not a journal, is damaged, is newer than
        this version, or is in use by another process."""
        self.path = Path(path)
        self.retain_finished_s = retain_finished_s
        self.sweep_interval_s = sweep_interval_s
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise JournalError(f"cannot create the journal's directory {self.path.parent}: {error}") from None
        self._lock_fd = _lock(self.path)
        try:
            self._db = _connect(self.path)
            self.boot = self._init_schema()
            self._reader = _connect(self.path)
        except BaseException as error:
            os.close(self._lock_fd)
            if isinstance(error, sqlite3.DatabaseError):
                raise JournalError(
                    f"{self.path} is not a usable plait journal (SQLite: {error}); move it away to start with an "
                    "empty journal, or run without one (plait serve --no-journal)"
                ) from None
            raise
        self._read_lock = threading.Lock()
        self._closed = False
        self._last_sweep = 0.0
        self._writer = GroupCommitWriter(
            self._db,
            label=f"the journal {self.path}",
            error_type=JournalError,
            on_idle=self._maybe_sweep,
            idle_s=sweep_interval_s,
            thread_name="plait-journal",
        )

    # ---- writes ----------------------------------------------------------------------------------------------------

    def accept(self, program: ProgramRow) -> Awaitable[None]:
        """Record an accepted program (raises ``sqlite3.IntegrityError`` when its id, or its tenant's idempotency key,
        is taken)."""
        row = (
            program.id,
            program.kind,
            program.tenant,
            program.idempotency_key,
            program.request_digest,
            program.name,
            encode_value(program.spec),
            program.created_at,
        )

        def insert(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO programs (id, kind, tenant, idempotency_key, request_digest, name, spec, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )

        return self._commit(insert)

    def record_outcome(self, program_id: str, outcome: OutcomeRow) -> Awaitable[None]:
        """Record a node's outcome; a second outcome for the same node is refused (``IntegrityError``): a node has
        at most one."""
        row = (
            program_id,
            outcome.node_id,
            outcome.position,
            outcome.signature,
            outcome.state,
            encode_value(outcome.value),
            outcome.error_kind,
            outcome.error,
            encode_value(outcome.details),
        )

        def insert(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO outcomes (program_id, node_id, position, signature, state, value, error_kind, error, "
                "details) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )

        return self._commit(insert)

    def add_nodes(self, program_id: str, seq: int, body: Any) -> Awaitable[None]:
        """Record nodes added to an open program (``seq``: 1, 2, ... in the order they were added)."""
        row = (program_id, seq, encode_value(body))

        def insert(db: sqlite3.Connection) -> None:
            db.execute("INSERT INTO additions (program_id, seq, body) VALUES (?, ?, ?)", row)

        return self._commit(insert)

    def finish(
        self,
        program_id: str,
        state: str,
        *,
        error: str | None = None,
        result: Any = None,
        final_event: EventRow | None = None,
    ) -> Awaitable[None]:
        """Record a program's terminal state (and its final event, in the same transaction). Only the first terminal
        state counts: a program ends once."""
        finished_at = time.time()
        encoded = encode_value(result)
        event = (
            None
            if final_event is None
            else (program_id, final_event.seq, final_event.kind, encode_value(final_event.data))
        )

        def update(db: sqlite3.Connection) -> None:
            cursor = db.execute(
                "UPDATE programs SET state = ?, error = ?, result = ?, finished_at = ? "
                "WHERE id = ? AND finished_at IS NULL",
                (state, error, encoded, finished_at, program_id),
            )
            if cursor.rowcount and event is not None:
                db.execute("INSERT OR REPLACE INTO events (program_id, seq, kind, data) VALUES (?, ?, ?, ?)", event)

        return self._commit(update)

    def write_event(self, program_id: str, event: EventRow) -> None:
        """Queue an event of a program's log (nothing waits for it; see the module's contract)."""
        row = (program_id, event.seq, event.kind, encode_value(event.data))

        def insert(db: sqlite3.Connection) -> None:
            db.execute("INSERT OR REPLACE INTO events (program_id, seq, kind, data) VALUES (?, ?, ?, ?)", row)

        self._write(insert)

    def _commit(self, operation: Operation) -> Awaitable[None]:
        return self._writer.commit(operation)

    def _write(self, operation: Operation) -> None:
        self._writer.write(operation)

    def flush(self, timeout_s: float = 30.0) -> None:
        """Block until everything queued so far is committed (from any thread but the event loop's, or in tests)."""
        self._writer.flush(timeout_s)

    @property
    def transactions(self) -> int:
        """Write transactions committed by this process (each one fsync)."""
        return self._writer.transactions

    @property
    def writes(self) -> int:
        """Writes those transactions held (writes / transactions: how well commits are grouped)."""
        return self._writer.writes

    # ---- retention (on the writer thread) ----------------------------------------------------------------------------

    def _maybe_sweep(self) -> None:
        if self.retain_finished_s is None or time.monotonic() - self._last_sweep < self.sweep_interval_s:
            return
        self._last_sweep = time.monotonic()
        try:
            self._delete_finished_before(time.time() - self.retain_finished_s)
        except Exception:  # retention is housekeeping: the next sweep tries again
            logger.exception("journal retention sweep failed")

    def _delete_finished_before(self, cutoff: float) -> int:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            ids = [row[0] for row in db.execute("SELECT id FROM programs WHERE finished_at < ?", (cutoff,))]
            for table in ("events", "outcomes", "additions"):
                db.executemany(f"DELETE FROM {table} WHERE program_id = ?", [(i,) for i in ids])
            db.executemany("DELETE FROM programs WHERE id = ?", [(i,) for i in ids])
            db.execute("COMMIT")
        except BaseException:
            db.rollback()
            raise
        if ids:
            db.execute("PRAGMA incremental_vacuum")
        return len(ids)

    def sweep(self, now: float | None = None) -> int:
        """Delete the programs that finished more than ``retain_finished_s`` before ``now`` (default: the current
        time); returns how many. Runs on the writer thread, after the writes queued before it."""
        if self.retain_finished_s is None:
            return 0
        cutoff = (time.time() if now is None else now) - self.retain_finished_s
        return self._writer.call(lambda: self._delete_finished_before(cutoff))

    # ---- reads -----------------------------------------------------------------------------------------------------

    def program(self, program_id: str) -> ProgramRow | None:
        rows = self._select(f"SELECT {PROGRAM_COLUMNS} FROM programs WHERE id = ?", (program_id,))
        return program_row(rows[0]) if rows else None

    def program_by_key(self, kind: str, tenant: str | None, idempotency_key: str) -> ProgramRow | None:
        """The program a tenant submitted with ``idempotency_key``."""
        rows = self._select(
            f"SELECT {PROGRAM_COLUMNS} FROM programs WHERE kind = ? AND tenant IS ? AND idempotency_key = ?",
            (kind, tenant, idempotency_key),
        )
        return program_row(rows[0]) if rows else None

    def unfinished(self, kind: str) -> list[ProgramRow]:
        """Accepted programs of ``kind`` without a terminal state, oldest first."""
        rows = self._select(
            f"SELECT {PROGRAM_COLUMNS} FROM programs WHERE kind = ? AND finished_at IS NULL ORDER BY created_at, id",
            (kind,),
        )
        return [program_row(row) for row in rows]

    def outcomes(self, program_id: str) -> list[OutcomeRow]:
        """The program's node outcomes in commit order."""
        rows = self._select(
            "SELECT node_id, position, signature, state, value, error_kind, error, details, rowid FROM outcomes "
            "WHERE program_id = ? ORDER BY rowid",
            (program_id,),
        )
        return [
            OutcomeRow(
                node_id=row[0],
                position=row[1],
                signature=row[2],
                state=row[3],
                value=decode_value(row[4]),
                error_kind=row[5],
                error=row[6],
                details=decode_value(row[7]) or {},
                order=row[8],
            )
            for row in rows
        ]

    def additions(self, program_id: str) -> list[Any]:
        """The node batches added to an open program, in order."""
        rows = self._select("SELECT body FROM additions WHERE program_id = ? ORDER BY seq", (program_id,))
        return [decode_value(row[0]) for row in rows]

    def events(self, program_id: str) -> list[EventRow]:
        rows = self._select("SELECT seq, kind, data FROM events WHERE program_id = ? ORDER BY seq", (program_id,))
        return [EventRow(row[0], row[1], decode_value(row[2])) for row in rows]

    def resume_seq(self) -> int:
        """The first event id for programs resumed by this process: above every id an earlier process gave."""
        return self.boot << BOOT_SEQ_SHIFT

    def counts(self) -> dict[str, int]:
        """Rows per table and the file sizes in bytes (the database and its write-ahead log)."""
        counts = {
            table: self._select(f"SELECT COUNT(*) FROM {table}", ())[0][0]
            for table in ("programs", "outcomes", "additions", "events")
        }
        for suffix, name in (("", "db_bytes"), ("-wal", "wal_bytes")):
            file = Path(f"{self.path}{suffix}")
            counts[name] = file.stat().st_size if file.exists() else 0
        return counts

    def _select(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with self._read_lock:
            return self._reader.execute(sql, params).fetchall()

    # ---- lifetime --------------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Commit what is queued, stop the writer and release the file. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._writer.close()
        with self._read_lock:
            self._reader.close()
        self._db.close()
        os.close(self._lock_fd)

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _init_schema(self) -> int:
        """Create the tables (a new file) or check the version (an existing one); count this process's boot."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            for statement in filter(str.strip, _SCHEMA.split(";")):
                db.execute(statement)
            version = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if version is None:
                db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(version[0]) != SCHEMA_VERSION:
                raise JournalError(
                    f"{self.path} has journal schema version {version[0]}; this plait reads version {SCHEMA_VERSION} "
                    "(use the plait that wrote it, or move the file away)"
                )
            row = db.execute("SELECT value FROM meta WHERE key = 'boot'").fetchone()
            boot = int(row[0]) + 1 if row is not None else 0
            db.execute("INSERT OR REPLACE INTO meta VALUES ('boot', ?)", (str(boot),))
            db.execute("COMMIT")
        except BaseException:
            db.rollback()
            raise
        return boot


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)
    db.execute("PRAGMA auto_vacuum = INCREMENTAL")  # takes effect on a new file only (before its first table)
    mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if mode != "wal":
        db.close()
        raise JournalError(f"{path}: SQLite refused WAL mode (got {mode!r}); put the journal on a local file system")
    db.execute("PRAGMA synchronous = FULL")
    db.execute(f"PRAGMA journal_size_limit = {_WAL_SIZE_LIMIT}")
    return db


def _lock(path: Path) -> int:
    """An exclusive lock on ``<path>.lock`` for this process (the OS releases it when the process ends)."""
    lock_path = Path(f"{path}.lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise JournalError(f"cannot open the journal's lock file {lock_path}: {error}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise JournalError(
            f"the journal {path} is in use by process {holder}; each server needs its own data directory "
            "(--data-dir) or stop the other one"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd
