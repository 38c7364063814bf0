"""One program's durable record, as its ``ProgramExecution`` uses it: the outcomes an earlier run committed (replayed
instead of run again) and the commits of this run. What is committed before what is ``journal.py``'s contract.

A node finds its recorded outcome in one of two ways:

- by node id (JSON workflows): their nodes and ids are fixed by the spec the journal holds;
- by position (Python programs, Temporal's replay model): the body runs again from the start after a crash, and the
  N-th call it makes gets the outcome of the N-th call of the recorded run. Every recorded call carries its
  signature (the call's kind, node id, template or tool and arguments, and the literal values it was given); a body
  that asks for a different call at a recorded position raises ``NonDeterminismError`` naming both calls, before the
  call is added. A body must therefore make the same calls in the same order when it runs again: branch only on
  values that came from calls (they are replayed), never on the clock, randomness or outside state.

Which failures are outcomes: a node failure that belongs to the step (a tool raised, timed out, was given bad
arguments or returned bad data; an output that does not parse) is recorded and replayed like a value. A failure of
the machinery (an engine error, the journal itself) is not: the step runs again on resume (at least once). Nor is a
skipped node (an input failed): skipping is derived again from its inputs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgspec

from plait.dag import LLMCall, Node, Workflow, node_spec
from plait.runtime.journal import Journal
from plait.runtime.journal_rows import OutcomeRow
from plait.semantic_vars import VarState

# Failure kinds (``NodeError.kind``) that are the step's own outcome, recorded and replayed.
RECORDED_FAILURES = frozenset({"tool_raised", "tool_timeout", "tool_arguments", "tool_result", "output"})
_SIGNATURE_DIGITS = 16


class NonDeterminismError(RuntimeError):
    """A replayed program asked for a call other than the one its journal recorded at that position.

    The program's journal is left as it was (the run is not recorded as failed): run the original body to finish it,
    or start a new run under another ``program_id``."""

    def __init__(self, program_id: str, position: int, call: str, recorded: str, journal_path: Path | None) -> None:
        where = f" in {journal_path}" if journal_path is not None else ""
        super().__init__(
            f"program {program_id!r} is not deterministic: its call #{position + 1} is {call}, but the journal"
            f"{where} recorded {recorded} at that position. A replayed body must make the same calls in the same "
            "order (branch only on values returned by calls); run the body that made the recorded calls, or use "
            "another program_id to start afresh"
        )
        self.program_id = program_id
        self.position = position
        self.call = call
        self.recorded = recorded


class ProgramJournal:
    """The journal of one program. ``by_position``: match nodes with recorded outcomes by the order in which the
    program added them (Python programs) instead of by node id (JSON workflows)."""

    def __init__(
        self, journal: Journal, program_id: str, outcomes: Iterable[OutcomeRow] = (), *, by_position: bool = False
    ) -> None:
        self.journal = journal
        self.program_id = program_id
        self.by_position = by_position
        recorded = list(outcomes)
        self._by_key: dict[str | int, OutcomeRow] = {
            (row.position if by_position else row.node_id): row for row in recorded
        }
        # Commit order of the recorded outcomes (their positions): a Python program's replay releases them in it.
        self.commit_order: list[int] = [row.position for row in sorted(recorded, key=lambda row: row.order)]

    @property
    def path(self) -> Path:
        return self.journal.path

    def recorded(self, node_id: str, position: int) -> OutcomeRow | None:
        """The outcome recorded for this node in an earlier run, if any."""
        return self._by_key.get(position if self.by_position else node_id)

    def check_call(self, node: Node, position: int, workflow: Workflow) -> str | None:
        """The call's signature (Python programs); raises ``NonDeterminismError`` when another call was recorded at
        ``position``. JSON workflows: None (their nodes are fixed by the recorded spec)."""
        if not self.by_position:
            return None
        signature = call_signature(node, workflow)
        row = self._by_key.get(position)
        if row is not None and row.signature != signature:
            recorded = (row.signature or "").partition(" ")[2] or f"node {row.node_id!r}"
            call = signature.partition(" ")[2]
            if recorded == call:
                call += " with other arguments or literal values"
            raise NonDeterminismError(self.program_id, position, call, recorded, self.path)
        return signature

    async def commit(self, outcome: OutcomeRow) -> None:
        """Record ``outcome``; returns once it is durable."""
        await self.journal.record_outcome(self.program_id, outcome)


def call_signature(node: Node, workflow: Workflow) -> str:
    """``"<digest> <description>"``: the digest covers the node's spec and the literal values of its inputs (those no
    call produced); the description names the call for error messages."""
    literals = {}
    for name in node.input_variables():
        variable = workflow.variables.get(name)
        if variable is not None and variable.producer is None and variable.state is VarState.BOUND:
            literals[name] = variable.value
    payload = [msgspec.to_builtins(node_spec(node)), literals]
    encoded = msgspec.json.encode(payload, enc_hook=_opaque, order="sorted")
    return f"{hashlib.sha256(encoded).hexdigest()[:_SIGNATURE_DIGITS]} {describe_call(node)}"


def describe_call(node: Node) -> str:
    """How the program made the call: ``p.gen(name='summary', prompt='Summarise: ...')``, ``p.tool('search', ...)``."""
    if isinstance(node, LLMCall):
        verb = "select" if node.constraints.choices is not None else "gen"
        prompt = getattr(node.prompt, "text", None)
        if prompt is None:  # a chat prompt: its last message
            prompt = node.prompt.messages[-1].content.text  # type: ignore[union-attr]
        excerpt = prompt if len(prompt) <= 40 else prompt[:37] + "..."
        return f"p.{verb}(name={node.id!r}, prompt={excerpt!r})"
    return f"p.tool({node.tool!r}, name={node.id!r})"


def _opaque(value: Any) -> Any:
    """A value JSON cannot hold, for the signature: its type's name (never its repr, which may hold an address)."""
    return f"<{type(value).__module__}.{type(value).__qualname__}>"
