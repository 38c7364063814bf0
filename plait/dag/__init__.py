"""Workflow graphs: LLM and tool call nodes, edges from variable data flow, validation, wire format, analysis.

Owns: the program as data (networkx graph, msgspec wire format), levels, critical path, steps-to-execution.
May import: ``plait.semantic_vars``.
"""

from __future__ import annotations

from plait.dag.analysis import (
    calls_made_ready,
    critical_path,
    levels,
    prefix_groups,
    prefix_steps_to_execution,
    steps_to_execution,
)
from plait.dag.errors import Problem, WorkflowError
from plait.dag.json_types import accepts_schema, accepts_value, schema_types
from plait.dag.nodes import ChoiceMode, LLMCall, Node, OnError, ToolCall, is_var_ref, substitute, var_ref, var_refs
from plait.dag.tool_spec import ToolSpec
from plait.dag.wire import (
    WIRE_VERSION,
    LLMCallSpec,
    MessageSpec,
    ToolCallSpec,
    WorkflowSpec,
    decode_workflow,
    encode_workflow,
    from_workflow,
    load_workflow,
    node_from_spec,
    node_spec,
    to_workflow,
    workflow_json_schema,
)
from plait.dag.workflow import Workflow

__all__ = [
    "WIRE_VERSION",
    "ChoiceMode",
    "LLMCall",
    "LLMCallSpec",
    "MessageSpec",
    "Node",
    "OnError",
    "Problem",
    "ToolCall",
    "ToolCallSpec",
    "ToolSpec",
    "Workflow",
    "WorkflowError",
    "WorkflowSpec",
    "accepts_schema",
    "accepts_value",
    "calls_made_ready",
    "critical_path",
    "decode_workflow",
    "encode_workflow",
    "from_workflow",
    "is_var_ref",
    "levels",
    "load_workflow",
    "node_from_spec",
    "node_spec",
    "prefix_groups",
    "prefix_steps_to_execution",
    "schema_types",
    "steps_to_execution",
    "substitute",
    "to_workflow",
    "var_ref",
    "var_refs",
    "workflow_json_schema",
]
