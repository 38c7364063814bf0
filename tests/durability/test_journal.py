"""The journal on its own: what it keeps and reads back, one outcome per node, idempotency keys, retention (bounded
size), a new process's event ids, group commit from many writers, and the errors a damaged or busy file gives."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from plait.runtime.journal import BOOT_SEQ_SHIFT, Journal, JournalError
from plait.runtime.journal_rows import EventRow, OutcomeRow, ProgramRow


def _row(program_id: str, **fields: object) -> ProgramRow:
    return ProgramRow(id=program_id, kind="workflow", name="w", spec={"nodes": []}, **fields)  # type: ignore[arg-type]


def test_rows_read_back_as_written_and_a_node_has_one_outcome(tmp_path: Path) -> None:
    async def main(journal: Journal) -> None:
        await journal.accept(_row("wf-1", tenant="a", idempotency_key="k1", request_digest="d1"))
        outcome = OutcomeRow("n1", 0, "done", value={"text": "hi"}, details={"stats": {"completion_tokens": 2}})
        await journal.record_outcome("wf-1", outcome)
        await journal.record_outcome("wf-1", OutcomeRow("n2", 1, "failed", error_kind="tool_raised", error="boom"))
        with pytest.raises(sqlite3.IntegrityError):  # a second outcome for n1 is refused, the first one stays
            await journal.record_outcome("wf-1", OutcomeRow("n1", 0, "done", value="other"))
        await journal.add_nodes("wf-1", 1, {"nodes": ["x"]})
        journal.write_event("wf-1", EventRow(1, "node_started", {"node": "n1"}))
        await journal.finish("wf-1", "done", result={"out": 1}, final_event=EventRow(2, "done", {"state": "done"}))
        await journal.finish("wf-1", "failed")  # a program ends once: the first terminal state stays

    with Journal(tmp_path / "j.sqlite3") as journal:
        asyncio.run(main(journal))
        row = journal.program("wf-1")
        assert row is not None and row.state == "done" and row.result == {"out": 1} and row.finished
        assert (row.tenant, row.idempotency_key, row.request_digest) == ("a", "k1", "d1")
        assert journal.program_by_key("workflow", "a", "k1") == row
        assert journal.program_by_key("workflow", "b", "k1") is None  # keys are per tenant
        outcomes = journal.outcomes("wf-1")
        assert [(o.node_id, o.state, o.value, o.error) for o in outcomes] == [
            ("n1", "done", {"text": "hi"}, None),
            ("n2", "failed", None, "boom"),
        ]
        assert outcomes[0].details == {"stats": {"completion_tokens": 2}} and outcomes[0].order < outcomes[1].order
        assert journal.additions("wf-1") == [{"nodes": ["x"]}]
        assert [(e.seq, e.kind) for e in journal.events("wf-1")] == [(1, "node_started"), (2, "done")]
        assert journal.unfinished("workflow") == []


def test_an_idempotency_key_names_one_program_per_tenant(tmp_path: Path) -> None:
    async def main(journal: Journal) -> None:
        await journal.accept(_row("wf-1", tenant="a", idempotency_key="k"))
        await journal.accept(_row("wf-2", tenant="b", idempotency_key="k"))  # another tenant's key
        with pytest.raises(sqlite3.IntegrityError):
            await journal.accept(_row("wf-3", tenant="a", idempotency_key="k"))

    with Journal(tmp_path / "j.sqlite3") as journal:
        asyncio.run(main(journal))
        assert [row.id for row in journal.unfinished("workflow")] == ["wf-1", "wf-2"]


def test_each_process_gets_event_ids_above_the_earlier_ones(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    boots = []
    for _ in range(3):
        with Journal(path) as journal:
            boots.append(journal.resume_seq())
    assert boots == [0, 1 << BOOT_SEQ_SHIFT, 2 << BOOT_SEQ_SHIFT]


def test_retention_deletes_finished_programs_and_keeps_the_file_bounded(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"

    async def run_batch(journal: Journal, start: int) -> None:
        for index in range(start, start + 200):
            program_id = f"wf-{index}"
            await journal.accept(_row(program_id))
            writes = [
                journal.record_outcome(program_id, OutcomeRow(f"n{n}", n, "done", value="x" * 500)) for n in range(5)
            ]
            await asyncio.gather(*writes)  # type: ignore[arg-type]
            for seq in range(10):
                journal.write_event(program_id, EventRow(seq, "token", {"text": "y" * 100}))
            await journal.finish(program_id, "done")

    async def accept_one(journal: Journal) -> None:
        await journal.accept(_row("wf-running"))

    with Journal(path, retain_finished_s=60.0) as journal:
        asyncio.run(accept_one(journal))
        sizes = []
        for batch in range(4):
            asyncio.run(run_batch(journal, batch * 200))
            journal.flush()
            deleted = journal.sweep(now=time.time() + 120.0)  # everything finished is past its retention
            assert deleted == 200
            sizes.append(journal.counts()["db_bytes"])
        counts = journal.counts()
        assert (counts["programs"], counts["outcomes"], counts["events"]) == (1, 0, 0)  # the running one stays
        assert journal.program("wf-running") is not None
        assert journal.sweep(now=time.time()) == 0  # nothing finished long enough ago
        assert max(sizes) <= 2 * sizes[0], sizes  # freed pages are reused and returned: no growth with the load


def test_concurrent_commits_are_grouped_and_all_durable(tmp_path: Path) -> None:
    async def main(journal: Journal) -> None:
        await journal.accept(_row("wf-1"))
        await asyncio.gather(
            *(journal.record_outcome("wf-1", OutcomeRow(f"n{i}", i, "done", value=i)) for i in range(500))
        )  # type: ignore[misc]

    with Journal(tmp_path / "j.sqlite3") as journal:
        asyncio.run(main(journal))
    with Journal(tmp_path / "j.sqlite3") as journal:  # read back by the next process
        assert [o.value for o in journal.outcomes("wf-1")] == list(range(500))


def test_a_damaged_file_says_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    path.write_bytes(b"this is not a database, just bytes " * 200)
    with pytest.raises(JournalError, match=r"not a usable plait journal.*move it away.*--no-journal"):
        Journal(path)


def test_a_journal_in_use_by_another_process_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    with Journal(path), pytest.raises(JournalError, match=r"in use by process .*--data-dir"):
        Journal(path)
    Journal(path).close()  # free again once the first one closed


def test_a_journal_of_another_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    Journal(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    with pytest.raises(JournalError, match="schema version 99"):
        Journal(path)
