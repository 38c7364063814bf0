"""``plait.Runtime``: runs Python programs and JSON workflows in-process, on an embedded engine.

```python
async with plait.Runtime() as rt:              # the default model; or Runtime(EngineConfig(...)) / Runtime(engine)
    answer = await rt.run(my_program, question="...")
    answers = await rt.run_batch(my_program, [{"question": q} for q in questions])
```

Durable programs: ``plait.Runtime(journal="runs.sqlite3")`` records every call a Python program makes (its result,
committed before the program sees it). Running the same program again (same ``program_id``; by default the program's
name and arguments) after a crash re-runs its body, and each call the journal recorded returns its recorded result by
its position instead of running again; the calls after the crash point run. A body that asks for a different call at
a recorded position raises ``NonDeterminismError`` naming the call (Temporal's replay model; see
``plait/runtime/program_journal.py``). A program that finished replays entirely, without a call to the engine.
JSON workflows run by a ``Runtime`` are not journaled (``plait serve`` makes them durable).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import msgspec

from plait.dag import Workflow, WorkflowSpec, decode_workflow, to_workflow
from plait.runtime import (
    Executor,
    Journal,
    NonDeterminismError,
    ProgramEvent,
    ProgramExecution,
    ProgramJournal,
    Tool,
    open_engine,
)
from plait.runtime.journal_rows import ProgramRow
from plait.runtime.planning import PlanConfig
from plait.sdk.program import Program, ProgramDef, resolve

PYTHON_PROGRAM_KIND = "python"  # the journal's kind of plait.Runtime programs


class Runtime:
    """Programs in-process. ``engine``: an ``Engine``, an ``EngineConfig``, a model path, or None for the default
    model (created on first use). ``tools``: functions or ``Tool``s available to JSON workflows by name (Python
    programs may also pass functions to ``p.tool`` directly). ``plan``: the planner's features and the engine policy
    they run with (default ``PlanConfig()``; ``PlanConfig.baseline()`` serves as a request-level engine).
    ``journal``: a file (or an open ``Journal``) that makes Python programs durable (see the module doc); None: not
    durable."""

    def __init__(
        self,
        engine: Any = None,
        *,
        tools: Iterable[Tool | Callable[..., Any]] = (),
        plan: PlanConfig | None = None,
        journal: str | Path | Journal | None = None,
    ) -> None:
        self._engine_arg = engine
        self._plan = plan
        self._tools = list(tools)
        self._executor: Executor | None = None
        self._owns_engine = False
        self._journal_arg = journal
        self._journal: Journal | None = journal if isinstance(journal, Journal) else None
        self._owns_journal = False

    @property
    def executor(self) -> Executor:
        if self._executor is None:
            engine, self._owns_engine = open_engine(self._engine_arg)
            self._executor = Executor(engine, self._tools, plan=self._plan)
        return self._executor

    @property
    def engine(self) -> Any:
        return self.executor.engine

    @property
    def journal(self) -> Journal | None:
        """The journal of durable programs (opened on first use; raises ``JournalError`` saying what to fix)."""
        if self._journal is None and self._journal_arg is not None:
            self._journal = Journal(self._journal_arg)  # type: ignore[arg-type]
            self._owns_journal = True
        return self._journal

    def register_tool(self, tool: Tool | Callable[..., Any]) -> Tool:
        return self.executor.register_tool(tool)

    # ---- Python programs -------------------------------------------------------------------------------------------

    def submit(
        self,
        program: ProgramDef | Callable[..., Any],
        /,
        *args: Any,
        program_id: str | None = None,
        priority: int = 0,
        **kwargs: Any,
    ) -> ProgramExecution:
        """Start a program and return its handle at once (``await handle.wait()``, ``handle.cancel()``,
        ``handle.status()``). Call from inside the event loop.

        With a journal, ``program_id`` names the durable run (default: the program's name and a digest of its
        arguments, which must then be JSON data): a run the journal holds is replayed and continued; a run of it
        already going in this runtime is returned."""
        definition = (
            program if isinstance(program, ProgramDef) else ProgramDef(program, getattr(program, "__name__", "program"))
        )
        journal = self.journal
        if journal is not None:
            return self._submit_durable(journal, definition, args, kwargs, program_id, priority)
        execution = self.executor.open(definition.name, program_id=program_id, priority=priority)
        handle = Program(execution, self.executor)

        async def body() -> Any:
            return await resolve(await definition.fn(handle, *args, **kwargs))

        execution.drive(body())
        return execution

    def _submit_durable(
        self,
        journal: Journal,
        definition: ProgramDef,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        program_id: str | None,
        priority: int,
    ) -> ProgramExecution:
        program_id = program_id or durable_program_id(definition.name, args, kwargs)
        running = self.executor.programs.get(program_id)
        if running is not None:
            if not running.state.finished:
                return running
            del self.executor.programs[program_id]  # finished here: it runs again as a replay of its journal
        row = journal.program(program_id)
        recorded = journal.outcomes(program_id) if row is not None else []
        program_journal = ProgramJournal(journal, program_id, recorded, by_position=True)
        execution = self.executor.open(
            definition.name, program_id=program_id, priority=priority, journal=program_journal
        )
        handle = Program(execution, self.executor)

        async def body() -> Any:
            if row is None:  # the run's acceptance is durable before its first call runs
                await journal.accept(ProgramRow(id=program_id, kind=PYTHON_PROGRAM_KIND, name=definition.name, spec={}))
            return await resolve(await definition.fn(handle, *args, **kwargs))

        def ended(event: ProgramEvent) -> None:
            # Done and failed runs are marked finished (for retention); a cancelled run, or one whose body no longer
            # matches its journal, stays resumable.
            if event.kind != "program_finished" or event.state not in ("done", "failed") or row is not None:
                return
            if isinstance(execution.error, NonDeterminismError):
                return
            finished = journal.finish(program_id, event.state, error=execution.record.error)
            finished.add_done_callback(_ignore_result)  # type: ignore[attr-defined]

        execution.subscribe(ended)
        execution.drive(body())
        return execution

    async def run(self, program: ProgramDef | Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run a program to the end and return its value (variables in it resolved to their values).

        Raises ``ProgramFailedError`` (with ``.cause``) if it fails; cancelling the caller cancels the program."""
        return await self.submit(program, *args, **kwargs).wait()

    async def run_batch(
        self,
        program: ProgramDef | Callable[..., Any],
        inputs: Iterable[Mapping[str, Any] | tuple[Any, ...]],
        *,
        return_exceptions: bool = False,
    ) -> list[Any]:
        """Run one program per input concurrently (a mapping is keyword arguments, a tuple positional).

        Results come back in input order. With ``return_exceptions``, a failed program's error takes its place;
        otherwise the first failure is raised after every program has ended (none is left running)."""
        handles = [
            self.submit(program, **item) if isinstance(item, Mapping) else self.submit(program, *item)
            for item in inputs
        ]
        results = await asyncio.gather(*(handle.wait() for handle in handles), return_exceptions=True)
        if not return_exceptions:
            for result in results:
                if isinstance(result, BaseException):
                    raise result
        return list(results)

    # ---- JSON workflows --------------------------------------------------------------------------------------------

    def start_workflow(
        self,
        workflow: Workflow | WorkflowSpec | Mapping[str, Any] | str | bytes | Path,
        *,
        inputs: Mapping[str, Any] | None = None,
        program_id: str | None = None,
        priority: int = 0,
        fail_fast: bool = True,
    ) -> ProgramExecution:
        """Validate and start a workflow (a ``Workflow``, a spec, its JSON text or a path to a JSON file).
        ``inputs`` override or add to the workflow's own. Raises ``WorkflowError`` before anything runs.
        ``fail_fast``: a node failing without a fallback fails the workflow at once (False: only its consumers are
        skipped, and the workflow fails at the end if an output has no value)."""
        if not isinstance(workflow, Workflow):
            spec = _load_spec(workflow)
            if inputs:
                spec.inputs = {**spec.inputs, **inputs}
            workflow = to_workflow(spec, self.executor.tools.specs())
        elif inputs:
            raise ValueError("pass inputs inside the Workflow object (add_input), not separately")
        return self.executor.start(workflow, program_id=program_id, priority=priority, fail_fast=fail_fast)

    async def run_workflow(self, workflow: Any, *, inputs: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Run a workflow to the end; returns its output variables by name."""
        return await self.start_workflow(workflow, inputs=inputs).wait()

    # ---- lifetime --------------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Cancel programs still running, stop the engine if this runtime created it, close the journal it opened
        (cancelled durable programs stay resumable)."""
        if self._executor is not None:
            for execution in self._executor.running():
                execution.cancel()
            if self._owns_engine:
                self._executor.engine.close()
        if self._journal is not None and self._owns_journal:
            self._journal.close()
            self._journal = None

    async def __aenter__(self) -> Runtime:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._executor is not None:
            running = self._executor.running()
            for execution in running:
                execution.cancel()
            await asyncio.gather(*(execution.wait() for execution in running), return_exceptions=True)
        self.close()


def durable_program_id(name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
    """``"<name>-<digest of the arguments>"``: the same for the same program run with the same arguments."""
    try:
        encoded = msgspec.json.encode([list(args), dict(kwargs)], order="sorted")
    except (TypeError, msgspec.EncodeError) as error:
        raise ValueError(
            f"program {name!r}: its arguments are not JSON data ({error}), so they cannot name a durable run; "
            "pass program_id=... to name it"
        ) from None
    return f"{name}-{hashlib.sha256(encoded).hexdigest()[:16]}"


def _ignore_result(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()  # a failed bookkeeping write: the run simply stays resumable


def _load_spec(source: WorkflowSpec | Mapping[str, Any] | str | bytes | Path) -> WorkflowSpec:
    if isinstance(source, WorkflowSpec):
        return source
    if isinstance(source, Path) or (isinstance(source, str) and not source.lstrip().startswith("{")):
        return decode_workflow(Path(source).read_bytes())
    return decode_workflow(source)
