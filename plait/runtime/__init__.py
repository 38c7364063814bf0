"""Runtime: the executor and planner that turn ready nodes into engine requests and tool runs, policies, tools.

Owns: program execution, ordering policies, the planner, tool executor, the journal (durable programs).
May import: ``plait.dag``, ``plait.semantic_vars``, ``plait.engine`` (through its public API and plain-data hints).
"""

from __future__ import annotations

from plait.engine import EngineConfig, EnginePolicy
from plait.runtime.engine_source import open_engine
from plait.runtime.errors import NodeError, ProgramCancelledError, ProgramFailedError, ToolDefinitionError
from plait.runtime.executor import Executor, new_program_id
from plait.runtime.journal import Journal, JournalError
from plait.runtime.llm_runner import RequestOptions, sampling_params
from plait.runtime.planning import PlanConfig
from plait.runtime.program_execution import ExecutionServices, ProgramEvent, ProgramExecution, idempotency_key
from plait.runtime.program_journal import NonDeterminismError, ProgramJournal
from plait.runtime.states import NodeRecord, NodeState, ProgramRecord, ProgramState
from plait.runtime.tool_executor import ToolExecutor
from plait.runtime.tools import Tool, ToolRegistry

__all__ = [
    "EngineConfig",
    "EnginePolicy",
    "ExecutionServices",
    "Executor",
    "Journal",
    "JournalError",
    "NodeError",
    "NodeRecord",
    "NodeState",
    "NonDeterminismError",
    "PlanConfig",
    "ProgramCancelledError",
    "ProgramEvent",
    "ProgramExecution",
    "ProgramFailedError",
    "ProgramJournal",
    "ProgramRecord",
    "ProgramState",
    "RequestOptions",
    "Tool",
    "ToolDefinitionError",
    "ToolExecutor",
    "ToolRegistry",
    "idempotency_key",
    "new_program_id",
    "open_engine",
    "sampling_params",
]
