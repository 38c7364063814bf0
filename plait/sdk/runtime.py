"""``plait.Runtime``: runs Python programs and JSON workflows in-process, on an embedded engine.

```python
async with plait.Runtime() as rt:              # the default model; or Runtime(EngineConfig(...)) / Runtime(engine)
    answer = await rt.run(my_program, question="...")
    answers = await rt.run_batch(my_program, [{"question": q} for q in questions])
```
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from plait.dag import Workflow, WorkflowSpec, decode_workflow, to_workflow
from plait.runtime import Executor, ProgramExecution, Tool, open_engine
from plait.runtime.planning import PlanConfig
from plait.sdk.program import Program, ProgramDef, resolve


class Runtime:
    """Programs in-process. ``engine``: an ``Engine``, an ``EngineConfig``, a model path, or None for the default
    model (created on first use). ``tools``: functions or ``Tool``s available to JSON workflows by name (Python
    programs may also pass functions to ``p.tool`` directly). ``plan``: the planner's features and the engine policy
    they run with (default ``PlanConfig()``; ``PlanConfig.baseline()`` serves as a request-level engine)."""

    def __init__(
        self, engine: Any = None, *, tools: Iterable[Tool | Callable[..., Any]] = (), plan: PlanConfig | None = None
    ) -> None:
        self._engine_arg = engine
        self._plan = plan
        self._tools = list(tools)
        self._executor: Executor | None = None
        self._owns_engine = False

    @property
    def executor(self) -> Executor:
        if self._executor is None:
            engine, self._owns_engine = open_engine(self._engine_arg)
            self._executor = Executor(engine, self._tools, plan=self._plan)
        return self._executor

    @property
    def engine(self) -> Any:
        return self.executor.engine

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
        ``handle.status()``). Call from inside the event loop."""
        definition = (
            program if isinstance(program, ProgramDef) else ProgramDef(program, getattr(program, "__name__", "program"))
        )
        execution = self.executor.open(definition.name, program_id=program_id, priority=priority)
        handle = Program(execution, self.executor)

        async def body() -> Any:
            return await resolve(await definition.fn(handle, *args, **kwargs))

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
        """Cancel programs still running and stop the engine if this runtime created it."""
        if self._executor is None:
            return
        for execution in self._executor.running():
            execution.cancel()
        if self._owns_engine:
            self._executor.engine.close()

    async def __aenter__(self) -> Runtime:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._executor is not None:
            running = self._executor.running()
            for execution in running:
                execution.cancel()
            await asyncio.gather(*(execution.wait() for execution in running), return_exceptions=True)
        self.close()


def _load_spec(source: WorkflowSpec | Mapping[str, Any] | str | bytes | Path) -> WorkflowSpec:
    if isinstance(source, WorkflowSpec):
        return source
    if isinstance(source, Path) or (isinstance(source, str) and not source.lstrip().startswith("{")):
        return decode_workflow(Path(source).read_bytes())
    return decode_workflow(source)
