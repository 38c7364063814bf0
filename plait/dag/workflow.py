"""``Workflow``: the program as a graph. Nodes are calls; an edge runs from a variable's producer to each consumer.

A workflow can be built whole (``Workflow.build``: every problem is reported at once, before anything runs) or grow
node by node (``add_node``: how Python programs that loop and branch extend their graph while running). Either way
a node is checked before it is inserted, so a workflow is never half-valid.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import networkx as nx

from plait.dag.errors import Problem, WorkflowError
from plait.dag.nodes import LLMCall, Node, ToolCall
from plait.dag.tool_spec import ToolSpec
from plait.dag.validation import VARIABLE_NAME, check_node, check_outputs, input_field
from plait.semantic_vars import SemanticVariable


class Workflow:
    """Nodes, variables and the dependency graph (``graph``: a networkx ``DiGraph`` over node ids)."""

    def __init__(self, name: str = "workflow", tools: Mapping[str, ToolSpec] | None = None) -> None:
        self.name = name
        self.tools: Mapping[str, ToolSpec] | None = tools  # None: tool names are not checked
        self.nodes: dict[str, Node] = {}
        self.variables: dict[str, SemanticVariable] = {}
        self.outputs: list[str] = []
        self.graph = nx.DiGraph()

    # ---- building --------------------------------------------------------------------------------------------------

    def add_input(self, name: str, value: Any) -> SemanticVariable:
        """A variable bound by the caller before the workflow runs."""
        if not isinstance(name, str) or not VARIABLE_NAME.match(name):
            raise WorkflowError([Problem(None, f"inputs.{name}", "not a valid variable name (letters, digits, _)")])
        if name in self.variables:
            raise WorkflowError([Problem(None, f"inputs.{name}", "a variable with this name already exists")])
        variable = SemanticVariable(name, value=value)
        self.variables[name] = variable
        return variable

    def add_node(self, node: Node) -> SemanticVariable:
        """Check ``node`` against the graph so far, insert it and return its output variable.

        Every input variable must already exist (a growing program can only consume what it has created).
        """
        problems = check_node(self, node, known_variables=set(self.variables))
        if problems:
            raise WorkflowError(problems)
        return self._insert(node)

    def check_new_nodes(self, nodes: Sequence[Node]) -> list[Problem]:
        """Every problem that adding ``nodes`` in order (``add_node`` one by one) would raise; changes nothing.

        Lets a caller add a batch all-or-nothing: a node may consume the outputs of nodes before it in the batch."""
        known = set(self.variables)
        problems: list[Problem] = []
        for node in nodes:
            problems.extend(check_node(self, node, known_variables=known, pending=nodes))
            if isinstance(node.output, str):
                known.add(node.output)
        return problems

    @classmethod
    def build(
        cls,
        nodes: Iterable[Node],
        *,
        inputs: Mapping[str, Any] | None = None,
        outputs: Iterable[str] = (),
        name: str = "workflow",
        tools: Mapping[str, ToolSpec] | None = None,
    ) -> Workflow:
        """A whole workflow, nodes in any order. Raises ``WorkflowError`` listing every problem found."""
        workflow = cls(name, tools)
        nodes = list(nodes)
        for key, value in (inputs or {}).items():
            workflow.add_input(key, value)
        produced = set(workflow.variables) | {node.output for node in nodes}
        problems: list[Problem] = []
        for node in nodes:
            found = check_node(workflow, node, known_variables=produced, pending=nodes)
            problems.extend(found)
            if not found:
                workflow._insert(node)
        # Outputs and cycles are checked even when some nodes were rejected, so one call reports everything: a cycle
        # among the nodes that were inserted is a real cycle.
        workflow.outputs = list(outputs) or workflow.sink_variables()
        problems.extend(check_outputs(workflow, set(workflow.variables) | produced))
        problems.extend(_cycle_problems(workflow))
        if problems:
            raise WorkflowError(problems)
        return workflow

    def _insert(self, node: Node) -> SemanticVariable:
        self.nodes[node.id] = node
        self.graph.add_node(node.id)
        output = self.variables.get(node.output)
        if output is None:
            output = SemanticVariable(node.output, producer=node.id, schema=self.output_schema(node))
            self.variables[node.output] = output
        else:  # declared earlier by a consumer of a whole workflow
            output.producer, output.schema = node.id, self.output_schema(node)
        for consumer in output.consumers:
            self.graph.add_edge(node.id, consumer, variable=node.output)
        for name in node.input_variables():
            variable = self.variables.get(name)
            if variable is None:  # produced by a node not inserted yet (whole workflows only)
                variable = self.variables[name] = SemanticVariable(name)
            variable.consumers.append(node.id)
            if variable.producer is not None:
                self.graph.add_edge(variable.producer, node.id, variable=name)
        return output

    def output_schema(self, node: Node) -> dict[str, Any] | None:
        if isinstance(node, LLMCall):
            return node.output_schema()
        spec = self.tools.get(node.tool) if self.tools is not None else None
        return spec.returns if spec else None

    # ---- queries ---------------------------------------------------------------------------------------------------

    def sink_variables(self) -> list[str]:
        """Variables produced by a node and consumed by none: a workflow's default outputs."""
        return [node.output for node in self.nodes.values() if not self.variables[node.output].consumers]

    def inputs_of(self, node_id: str) -> list[SemanticVariable]:
        return [self.variables[name] for name in self.nodes[node_id].input_variables()]

    def is_ready(self, node_id: str) -> bool:
        """All inputs settled (bound, or failed: then the node fails without running)."""
        return all(variable.is_settled for variable in self.inputs_of(node_id))

    def llm_calls(self) -> list[LLMCall]:
        return [node for node in self.nodes.values() if isinstance(node, LLMCall)]

    def tool_calls(self) -> list[ToolCall]:
        return [node for node in self.nodes.values() if isinstance(node, ToolCall)]


def _cycle_problems(workflow: Workflow) -> list[Problem]:
    """A problem for the first cycle found (there is at most one report: fixing it may fix the others), naming a node
    on the cycle and the input field through which that node closes it."""
    try:
        cycle = nx.find_cycle(workflow.graph)
    except nx.NetworkXNoCycle:
        return []
    path = " -> ".join([edge[0] for edge in cycle] + [cycle[0][0]])
    variables = ", ".join(workflow.graph.edges[edge]["variable"] for edge in cycle)
    # The last edge runs into the first node: the variable that node consumes to close the cycle.
    first, closing = cycle[0][0], workflow.graph.edges[cycle[-1]]["variable"]
    field = input_field(workflow.nodes[first], closing)
    return [Problem(first, field, f"dependency cycle {path} (through variables {variables})")]
