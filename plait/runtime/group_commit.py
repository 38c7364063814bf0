"""Group commit: one writer thread applies queued SQLite writes in the order they were queued and commits everything
queued since its last commit as one transaction (one fsync for the group), so durability costs per batch, not per
write, and no caller waits on the disk.

Rules:
- each write is a function of the connection; ``commit`` returns an awaitable that resolves once the write is durable
  (on the caller's event loop, each loop woken once per batch); ``write`` queues one nobody waits for (its failure is
  logged); ``flush`` blocks a thread until everything queued so far is durable;
- a failed write is rolled back alone and only its waiter gets the error: the batch runs without savepoints first and,
  when a write fails, again with one savepoint per write;
- ``call`` runs a function on the writer thread outside any transaction, after the writes queued before it;
- ``close`` commits what is queued, then stops the thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger("plait.runtime.journal")

Operation = Callable[[sqlite3.Connection], None]


class GroupCommitWriter:
    """The writer thread over ``db`` (a connection only it uses). ``on_idle`` runs on the thread after every batch
    and after ``idle_s`` without writes (housekeeping); errors are raised as ``error_type`` with ``label`` (what is
    written to) in their message."""

    def __init__(
        self,
        db: sqlite3.Connection,
        *,
        label: str,
        error_type: type[Exception] = RuntimeError,
        on_idle: Callable[[], None] = lambda: None,
        idle_s: float = 60.0,
        thread_name: str = "plait-group-commit",
    ) -> None:
        self._db = db
        self._label = label
        self._error_type = error_type
        self._on_idle = on_idle
        self._idle_s = idle_s
        self._queue: queue.SimpleQueue[tuple[Operation | _WriterCall | None, _Waiter | None]] = queue.SimpleQueue()
        self._closed = False
        self.transactions = 0  # write transactions committed (each one fsync)
        self.writes = 0  # writes they held (writes / transactions: how well commits are grouped)
        self._thread = threading.Thread(target=self._write_loop, name=thread_name, daemon=True)
        self._thread.start()

    # ---- callers -----------------------------------------------------------------------------------------------

    def commit(self, operation: Operation) -> Awaitable[None]:
        """Queue ``operation``; the awaitable (of the running loop) resolves once it is durable, or raises its error."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._put(operation, _Waiter(loop, future))
        return future

    def write(self, operation: Operation) -> None:
        """Queue ``operation``; nobody waits for it."""
        self._put(operation, None)

    def flush(self, timeout_s: float = 30.0) -> None:
        """Block until everything queued so far is committed (from any thread but the event loop's, or in tests)."""
        done = threading.Event()
        self._put(lambda _db: None, _Waiter(None, None, done))
        if not done.wait(timeout_s):
            raise self._error_type(f"{self._label} did not commit within {timeout_s:g} s")

    def call(self, function: Callable[[], Any]) -> Any:
        """``function()`` run on the writer thread after the writes queued before it; its result (or error)."""
        call = _WriterCall(function)
        self._queue.put((call, None))
        call.done.wait()
        if isinstance(call.result, BaseException):
            raise call.result
        return call.result

    def close(self, timeout_s: float = 30.0) -> None:
        """Commit what is queued and stop the thread. Idempotent."""
        if self._closed:
            return
        done = threading.Event()
        self._queue.put((None, _Waiter(None, None, done)))
        self._closed = True
        done.wait(timeout_s)
        self._thread.join(timeout_s)

    def _put(self, operation: Operation, waiter: _Waiter | None) -> None:
        if self._closed:
            raise self._error_type(f"{self._label} is closed")
        self._queue.put((operation, waiter))

    # ---- the writer thread ---------------------------------------------------------------------------------------

    def _write_loop(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=self._idle_s)
            except queue.Empty:
                self._on_idle()
                continue
            batch = [first]
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            writes: list[tuple[Operation, _Waiter | None]] = []
            for operation, waiter in batch:
                if isinstance(operation, _WriterCall) or operation is None:
                    self._commit_batch(writes)  # what was queued before it is committed first
                    writes = []
                    if operation is None:  # close(): everything queued before it is committed
                        if waiter is not None:
                            waiter.settle(None)
                        return
                    operation.run()
                else:
                    writes.append((operation, waiter))
            self._commit_batch(writes)
            self._on_idle()

    def _commit_batch(self, batch: list[tuple[Operation, _Waiter | None]]) -> None:
        """Commit ``batch`` as one transaction and tell its waiters. Writes rarely fail, so the batch runs without
        savepoints first; when one fails, the batch is rolled back and run again with a savepoint per write, so the
        failed write alone is left out (and its waiter alone gets the error)."""
        if not batch:
            return
        self.transactions += 1
        self.writes += len(batch)
        try:
            results = self._run_batch(batch, isolated=False)
        except _WriteFailed:
            results = self._run_batch(batch, isolated=True)
        except Exception as error:  # the transaction itself failed (disk full, I/O error): nothing is durable
            results = [self._error_type(f"{self._label} could not commit: {error}")] * len(batch)
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[None], BaseException | None]]] = {}
        for (_, waiter), result in zip(batch, results, strict=True):
            if waiter is None:
                if result is not None:
                    logger.error("journal write failed: %s", result)
            elif waiter.loop is None:
                waiter.settle(result)
            else:
                by_loop.setdefault(waiter.loop, []).append((waiter.future, result))  # type: ignore[arg-type]
        for loop, settled in by_loop.items():  # one wake-up of each waiting event loop per batch
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting any more
                loop.call_soon_threadsafe(_resolve_all, settled)

    def _run_batch(
        self, batch: list[tuple[Operation, _Waiter | None]], *, isolated: bool
    ) -> list[BaseException | None]:
        """Run and commit the writes; each one's error (``isolated``) or ``_WriteFailed`` at the first error."""
        db = self._db
        results: list[BaseException | None] = []
        try:
            db.execute("BEGIN IMMEDIATE")
            for operation, _ in batch:
                if not isolated:
                    try:
                        operation(db)
                    except Exception as error:  # find out which write, and keep the others: run it isolated
                        raise _WriteFailed from error
                    results.append(None)
                    continue
                db.execute("SAVEPOINT write")
                try:
                    operation(db)
                except Exception as error:  # this write's failure: roll back this write only
                    db.execute("ROLLBACK TO write")
                    results.append(error)
                else:
                    results.append(None)
                db.execute("RELEASE write")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.rollback()
            raise
        return results


@dataclass
class _Waiter:
    """Who waits for a write: an asyncio future on its loop, or a thread on an event."""

    loop: asyncio.AbstractEventLoop | None
    future: asyncio.Future[None] | None
    event: threading.Event | None = None

    def settle(self, error: BaseException | None) -> None:
        if self.event is not None:
            self.event.set()
            return
        assert self.loop is not None and self.future is not None
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting any more
            self.loop.call_soon_threadsafe(_resolve, self.future, error)


@dataclass
class _WriterCall:
    """A function run on the writer thread outside any write transaction (a retention sweep)."""

    function: Callable[[], Any]
    result: Any = None
    done: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        try:
            self.result = self.function()
        except Exception as error:
            self.result = error
        self.done.set()


class _WriteFailed(Exception):
    """A write of a batch run without savepoints failed: the batch runs again, one savepoint per write."""


def _resolve_all(settled: list[tuple[asyncio.Future[None], BaseException | None]]) -> None:
    for future, error in settled:
        _resolve(future, error)


def _resolve(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
