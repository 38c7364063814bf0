"""The executor: starts programs on the engine and the tool executor, and keeps a table of them.

One executor serves many programs concurrently in one event loop; programs never affect each other's outcome
(a failure or cancellation stays inside its program).
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from plait.dag import Workflow
from plait.engine import Engine
from plait.runtime.planning import PlanConfig, Planner
from plait.runtime.program_execution import ExecutionServices, ProgramExecution
from plait.runtime.program_journal import ProgramJournal
from plait.runtime.request_options import RequestOptions
from plait.runtime.tool_executor import ToolExecutor
from plait.runtime.tools import Tool, ToolRegistry

_program_counter = itertools.count(1)
FINISHED_HISTORY = 10_000  # finished programs kept for status queries; the oldest are forgotten first


def new_program_id() -> str:
    return f"prog-{next(_program_counter)}"


class Executor:
    """Runs programs. ``engine`` is shared; ``tools`` may grow while running (``register_tool``)."""

    def __init__(
        self,
        engine: Engine,
        tools: Iterable[Tool | Callable[..., Any]] = (),
        *,
        plan: PlanConfig | Planner | None = None,
    ) -> None:
        """``plan``: the program-level planning features (default ``PlanConfig()``; ``PlanConfig.baseline()`` for a
        request-level engine), or a ``Planner`` to share. The engine is switched to the plan's policy
        (``PlanConfig.engine``), so one engine serves one plan at a time."""
        planner = plan if isinstance(plan, Planner) else Planner(engine, plan or PlanConfig())
        # What runs is what the plan says: the engine schedules and evicts under the plan's policy from now on.
        engine.set_policy(planner.config.engine)
        self.services = ExecutionServices(engine, ToolRegistry(tools), ToolExecutor(), planner)
        self.programs: OrderedDict[str, ProgramExecution] = OrderedDict()

    @property
    def planner(self) -> Planner:
        assert self.services.planner is not None
        return self.services.planner

    @property
    def engine(self) -> Engine:
        return self.services.engine

    @property
    def tools(self) -> ToolRegistry:
        return self.services.tools

    def register_tool(self, tool: Tool | Callable[..., Any]) -> Tool:
        return self.services.tools.register(tool)

    def new_workflow(self, name: str = "workflow") -> Workflow:
        """An empty workflow that checks tool calls against this executor's tools."""
        return Workflow(name, tools=_LiveToolSpecs(self.services.tools))

    def start(
        self,
        workflow: Workflow,
        *,
        program_id: str | None = None,
        fail_fast: bool = True,
        priority: int = 0,
        services: ExecutionServices | None = None,
        journal: ProgramJournal | None = None,
    ) -> ProgramExecution:
        """Start a whole workflow (every node whose inputs are bound starts now). Must be called in the loop.

        ``services``: this program's own tools and tool executor (the server's client-side tools), on the same
        engine; None: the executor's shared ones. ``priority``: lower runs first. ``journal``: the program's
        durable record (recorded nodes are replayed, the others' outcomes committed; see ``ProgramExecution``)."""
        program = self.prepare(
            workflow, program_id=program_id, fail_fast=fail_fast, priority=priority, services=services, journal=journal
        )
        program.start()
        return program

    def prepare(
        self,
        workflow: Workflow,
        *,
        program_id: str | None = None,
        fail_fast: bool = True,
        priority: int = 0,
        services: ExecutionServices | None = None,
        journal: ProgramJournal | None = None,
    ) -> ProgramExecution:
        """A whole workflow registered but not started: ``program.start()`` starts it (a server commits the
        workflow's acceptance to its journal in between)."""
        return self._register(workflow, program_id, fail_fast, priority, services, journal)

    def open(
        self,
        name: str,
        *,
        program_id: str | None = None,
        fail_fast: bool = False,
        priority: int = 0,
        services: ExecutionServices | None = None,
        journal: ProgramJournal | None = None,
    ) -> ProgramExecution:
        """A program that starts empty and grows (a Python program); drive its body with ``program.drive``.

        With ``services``, the program's workflow checks tool calls against ``services.tools``."""
        workflow = self.new_workflow(name) if services is None else Workflow(name, tools=_LiveToolSpecs(services.tools))
        return self._register(workflow, program_id, fail_fast, priority, services, journal)

    def _register(
        self,
        workflow: Workflow,
        program_id: str | None,
        fail_fast: bool,
        priority: int,
        services: ExecutionServices | None = None,
        journal: ProgramJournal | None = None,
    ) -> ProgramExecution:
        program_id = program_id or new_program_id()
        if program_id in self.programs:
            raise ValueError(f"program id {program_id!r} is already in use")
        options = RequestOptions(program_id=program_id, priority=priority)
        program = ProgramExecution(
            services or self.services, workflow, program_id, fail_fast=fail_fast, options=options, journal=journal
        )
        self.programs[program_id] = program
        self._forget_old()
        return program

    def _forget_old(self) -> None:
        finished = [pid for pid, program in self.programs.items() if program.state.finished]
        for program_id in finished[: max(0, len(finished) - FINISHED_HISTORY)]:
            self.forget(program_id)

    def forget(self, program_id: str) -> None:
        """Forget a finished program: its status, records and timeline events (a running one is kept)."""
        program = self.programs.get(program_id)
        if program is None or not program.state.finished:
            return
        del self.programs[program_id]
        self.planner.timeline.forget(program_id)

    def cancel(self, program_id: str) -> bool:
        program = self.programs.get(program_id)
        if program is None or program.state.finished:
            return False
        program.cancel()
        return True

    def running(self) -> list[ProgramExecution]:
        return [program for program in self.programs.values() if not program.state.finished]


class _LiveToolSpecs:
    """A read-only mapping view of the registry's tool specs (tools registered later are seen too)."""

    def __init__(self, registry: ToolRegistry) -> None:
        self._registry = registry

    def get(self, name: str, default: Any = None) -> Any:
        tool = self._registry.get(name)
        return tool.spec if tool is not None else default

    def __contains__(self, name: object) -> bool:
        return name in self._registry

    def __iter__(self):
        return (tool.name for tool in self._registry)
