"""Workflow validation (issue 7, acceptance 2): every problem is found before anything runs, naming node and field."""

from __future__ import annotations

import pytest

from plait.dag import ChoiceMode, LLMCall, Problem, ToolCall, ToolSpec, Workflow, WorkflowError, var_ref
from plait.semantic_vars import ChatPrompt, GenConstraints, Template

TOOLS = {
    "run_sql": ToolSpec(
        "run_sql",
        {
            "type": "object",
            "properties": {"db": {"type": "string"}, "sql": {"type": "string"}, "limit": {"type": "integer"}},
            "required": ["db", "sql"],
        },
        returns={"type": "array", "items": {"type": "object"}},
    ),
    "count": ToolSpec("count", {"properties": {"text": {"type": "string"}}, "required": ["text"]}, {"type": "integer"}),
    "echo": ToolSpec("echo", {"properties": {"text": {"type": "string"}}}, returns={"type": "string"}),
    "scale": ToolSpec("scale", {"properties": {"factor": {"type": "number"}, "values": {"type": "array"}}}),
    "paint": ToolSpec(  # the shape msgspec gives a parameter of an enum type: a $ref into the top-level $defs
        "paint",
        {
            "type": "object",
            "properties": {
                "color": {"$ref": "#/$defs/Color"},
                "note": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            },
            "$defs": {"Color": {"enum": ["red", "blue"]}},
        },
    ),
}


def llm(node_id: str, prompt: str, output: str, **kwargs) -> LLMCall:
    return LLMCall(node_id, Template(prompt), output, **kwargs)


def problems_of(nodes, **kwargs) -> list[Problem]:
    kwargs.setdefault("tools", TOOLS)
    with pytest.raises(WorkflowError) as caught:
        Workflow.build(nodes, **kwargs)
    assert caught.value.problems, "a WorkflowError must list its problems"
    for problem in caught.value.problems:  # every problem is also in the message the REST layer shows
        assert problem.message in str(caught.value)
    return caught.value.problems


def only(problems: list[Problem]) -> Problem:
    assert len(problems) == 1, problems
    return problems[0]


# ---- a valid workflow -----------------------------------------------------------------------------------------------


def test_valid_workflow_builds_graph_from_data_flow() -> None:
    # Nodes in any order: the consumer comes before its producer here.
    workflow = Workflow.build(
        [
            ToolCall("exec", "run_sql", "rows", {"db": "shop", "sql": var_ref("sql"), "limit": 10}),
            llm("gen", "Schema: {{schema}}\nQ: {{question}}\nSQL:", "sql"),
            llm("explain", "{{q}} -> {{rows}}", "answer", bindings={"q": "question"}),
        ],
        inputs={"schema": "t(a int)", "question": "how many?"},
        tools=TOOLS,
    )
    assert set(workflow.graph.edges) == {("gen", "exec"), ("exec", "explain")}
    assert workflow.graph.edges["gen", "exec"]["variable"] == "sql"
    assert workflow.outputs == ["answer"]  # the only variable nobody consumes
    assert workflow.variables["sql"].producer == "gen"
    assert workflow.variables["sql"].consumers == ["exec"]
    assert workflow.variables["question"].consumers == ["gen", "explain"]
    assert workflow.variables["rows"].schema == {"type": "array", "items": {"type": "object"}}
    assert workflow.variables["sql"].schema == {"type": "string"}
    assert workflow.is_ready("gen") and not workflow.is_ready("exec")


def test_tools_unchecked_when_workflow_has_no_registry() -> None:
    workflow = Workflow.build([ToolCall("t", "anything", "out", {"x": 1})], tools=None)
    assert workflow.outputs == ["out"]


# ---- cycles ---------------------------------------------------------------------------------------------------------


def test_cycle_between_two_llm_calls() -> None:
    problem = only(problems_of([llm("a", "{{y}}", "x"), llm("b", "{{x}}", "y")]))
    assert problem.node == "a"
    assert problem.field == "prompt"  # a consumes y (which closes the cycle) through its prompt
    assert "dependency cycle a -> b -> a" in problem.message
    assert "x" in problem.message and "y" in problem.message


def test_cycle_through_tool_args_names_the_argument() -> None:
    problem = only(
        problems_of(
            [
                ToolCall("t", "echo", "x", {"text": var_ref("y")}),
                llm("u", "{{x}}", "z"),
                llm("v", "{{z}}", "y"),
            ]
        )
    )
    assert (problem.node, problem.field) == ("t", "args.text")
    assert "dependency cycle t -> u -> v -> t" in problem.message


def test_cycle_through_binding_names_the_binding() -> None:
    problem = only(problems_of([llm("a", "{{slot}}", "x", bindings={"slot": "y"}), llm("b", "{{x}}", "y")]))
    assert (problem.node, problem.field) == ("a", "bindings.slot")


def test_self_loop() -> None:
    problem = only(problems_of([llm("a", "again: {{x}}", "x")]))
    assert (problem.node, problem.field) == ("a", "prompt")
    assert "cycle a -> a" in problem.message


def test_add_node_cannot_close_a_cycle() -> None:
    workflow = Workflow()
    workflow.add_node(llm("a", "start", "x"))
    with pytest.raises(WorkflowError) as caught:
        workflow.add_node(llm("a2", "{{later}}", "x2"))
    assert (caught.value.problems[0].node, caught.value.problems[0].field) == ("a2", "prompt")


# ---- unbound variables and templates naming undefined variables ------------------------------------------------------


def test_template_naming_undefined_variable() -> None:
    problem = only(problems_of([llm("ask", "Q: {{question}}\nA:", "answer")]))
    assert (problem.node, problem.field) == ("ask", "prompt")
    assert "'question'" in problem.message and "unbound variable" in problem.message


def test_chat_template_naming_undefined_variable() -> None:
    chat = ChatPrompt.from_dicts([{"role": "system", "content": "hi"}, {"role": "user", "content": "{{ctx}}"}])
    problem = only(problems_of([LLMCall("c", chat, "out")]))
    assert (problem.node, problem.field) == ("c", "messages")
    assert "'ctx'" in problem.message


def test_binding_to_undefined_variable_names_binding() -> None:
    problem = only(problems_of([llm("n", "{{a}}", "out", bindings={"a": "missing"})], inputs={"a": "x"}))
    assert (problem.node, problem.field) == ("n", "bindings.a")
    assert "'missing'" in problem.message


def test_fan_in_with_one_undefined_variable() -> None:
    problem = only(
        problems_of(
            [llm("vote", "{{cands}}", "best", bindings={"cands": ["c1", "c2", "c3"]})], inputs={"c1": 1, "c3": 3}
        )
    )
    assert (problem.node, problem.field) == ("vote", "bindings.cands")
    assert "'c2'" in problem.message


def test_tool_arg_naming_undefined_variable() -> None:
    problem = only(problems_of([ToolCall("exec", "run_sql", "rows", {"db": "d", "sql": var_ref("nosql")})]))
    assert (problem.node, problem.field) == ("exec", "args.sql")
    assert "'nosql'" in problem.message and "unbound" in problem.message


def test_tool_arg_nested_reference_to_undefined_variable() -> None:
    node = ToolCall("s", "scale", "out", {"values": [1, {"k": var_ref("ghost")}]})
    problem = only(problems_of([node]))
    assert (problem.node, problem.field) == ("s", "args.values")


def test_add_node_requires_inputs_to_exist_already() -> None:
    workflow = Workflow(tools=TOOLS)
    with pytest.raises(WorkflowError) as caught:
        workflow.add_node(llm("first", "{{q}}", "a"))
    problem = only(caught.value.problems)
    assert (problem.node, problem.field) == ("first", "prompt")
    workflow.add_input("q", "hello")
    assert workflow.add_node(llm("first", "{{q}}", "a")).producer == "first"


# ---- two producers --------------------------------------------------------------------------------------------------


def test_two_producers_for_one_variable() -> None:
    problems = problems_of([llm("a", "one", "x"), llm("b", "two", "x")])
    assert {(p.node, p.field) for p in problems} == {("a", "output"), ("b", "output")}
    assert all("two producers" in p.message and "'x'" in p.message for p in problems)


def test_two_producers_incrementally() -> None:
    workflow = Workflow()
    workflow.add_node(llm("a", "one", "x"))
    with pytest.raises(WorkflowError) as caught:
        workflow.add_node(llm("b", "two", "x"))
    problem = only(caught.value.problems)
    assert (problem.node, problem.field) == ("b", "output")
    assert "already has a producer: 'a'" in problem.message


def test_input_cannot_be_produced() -> None:
    problem = only(problems_of([llm("a", "text", "question")], inputs={"question": "q?"}))
    assert (problem.node, problem.field) == ("a", "output")
    assert "workflow input" in problem.message
    workflow = Workflow()
    workflow.add_input("question", "q?")
    with pytest.raises(WorkflowError, match="workflow input"):
        workflow.add_node(llm("a", "text", "question"))


def test_add_input_twice_or_over_a_node_output() -> None:
    workflow = Workflow()
    workflow.add_input("q", 1)
    workflow.add_node(llm("a", "x", "out"))
    for name in ("q", "out"):
        with pytest.raises(WorkflowError) as caught:
            workflow.add_input(name, 2)
        assert (caught.value.problems[0].node, caught.value.problems[0].field) == (None, f"inputs.{name}")
    assert workflow.variables["q"].value == 1


# ---- tools ----------------------------------------------------------------------------------------------------------


def test_unknown_tool() -> None:
    problem = only(problems_of([ToolCall("t", "drop_tables", "out", {})]))
    assert (problem.node, problem.field) == ("t", "tool")
    assert "'drop_tables'" in problem.message
    assert "count, echo, paint, run_sql, scale" in problem.message  # what is known, to fix the typo


def test_unknown_tool_with_empty_registry() -> None:
    problem = only(problems_of([ToolCall("t", "x", "out", {})], tools={}))
    assert "none registered" in problem.message


def test_required_argument_missing() -> None:
    problem = only(problems_of([ToolCall("exec", "run_sql", "rows", {"db": "shop"})]))
    assert (problem.node, problem.field) == ("exec", "args.sql")
    assert "required by tool 'run_sql'" in problem.message


def test_unknown_parameter() -> None:
    problem = only(problems_of([ToolCall("exec", "run_sql", "rows", {"db": "d", "sql": "s", "dbname": "d"})]))
    assert (problem.node, problem.field) == ("exec", "args.dbname")
    assert "no such parameter" in problem.message and "db, sql, limit" in problem.message


@pytest.mark.parametrize(
    ("tool", "args", "field", "fragment"),
    [
        ("run_sql", {"db": "d", "sql": "s", "limit": "ten"}, "args.limit", "expects integer, got string"),
        ("run_sql", {"db": "d", "sql": "s", "limit": 2.5}, "args.limit", "expects integer, got number"),
        ("run_sql", {"db": "d", "sql": "s", "limit": True}, "args.limit", "expects integer, got boolean"),
        ("run_sql", {"db": ["d"], "sql": "s"}, "args.db", "expects string, got array"),
        ("echo", {"text": None}, "args.text", "expects string, got null"),
        ("scale", {"factor": "2"}, "args.factor", "expects number, got string"),
        ("scale", {"values": {"a": 1}}, "args.values", "expects array, got object"),
        ("paint", {"color": 3}, "args.color", "expects string, got integer"),  # resolved through $defs
        ("paint", {"color": "red", "note": 1}, "args.note", "expects null or string, got integer"),
    ],
)
def test_literal_argument_of_wrong_type(tool: str, args: dict, field: str, fragment: str) -> None:
    problem = only(problems_of([ToolCall("t", tool, "out", args)]))
    assert (problem.node, problem.field) == ("t", field)
    assert fragment in problem.message


@pytest.mark.parametrize(
    ("tool", "args"),
    [
        ("scale", {"factor": 2}),  # an integer is a number
        ("scale", {"factor": 0.5, "values": [1, "a"]}),
        ("paint", {"color": "blue", "note": None}),
        ("run_sql", {"db": "d", "sql": "s", "limit": 3}),
    ],
)
def test_literal_arguments_of_right_type(tool: str, args: dict) -> None:
    Workflow.build([ToolCall("t", tool, "out", args)], tools=TOOLS)


def test_llm_text_into_integer_parameter() -> None:
    problem = only(
        problems_of(
            [
                llm("n", "how many rows?", "n_text"),
                ToolCall("exec", "run_sql", "rows", {"db": "d", "sql": "s", "limit": var_ref("n_text")}),
            ]
        )
    )
    assert (problem.node, problem.field) == ("exec", "args.limit")
    assert "expects integer, but variable 'n_text' holds string" in problem.message


def test_llm_text_into_integer_parameter_incrementally() -> None:
    workflow = Workflow(tools=TOOLS)
    workflow.add_node(llm("n", "how many rows?", "n_text"))
    with pytest.raises(WorkflowError) as caught:
        workflow.add_node(ToolCall("exec", "run_sql", "rows", {"db": "d", "sql": "s", "limit": var_ref("n_text")}))
    assert only(caught.value.problems).field == "args.limit"


def test_tool_returning_int_into_string_parameter() -> None:
    # Producer listed after the consumer: its schema is still known.
    problem = only(
        problems_of(
            [
                ToolCall("say", "echo", "said", {"text": var_ref("n")}),
                ToolCall("cnt", "count", "n", {"text": "abc"}),
            ]
        )
    )
    assert (problem.node, problem.field) == ("say", "args.text")
    assert "variable 'n' holds integer" in problem.message


def test_input_of_wrong_type_into_parameter() -> None:
    problem = only(problems_of([ToolCall("say", "echo", "said", {"text": var_ref("q")})], inputs={"q": 5}))
    assert (problem.node, problem.field) == ("say", "args.text")
    assert "holds integer" in problem.message


def test_container_holding_references_is_type_checked() -> None:
    # A list stays a list after its references are substituted: a string parameter cannot take it.
    problem = only(problems_of([ToolCall("say", "echo", "said", {"text": [var_ref("q")]})], inputs={"q": "x"}))
    assert (problem.node, problem.field) == ("say", "args.text")
    assert "expects string, got array" in problem.message
    Workflow.build([ToolCall("s", "scale", "out", {"values": [var_ref("q"), 2]})], inputs={"q": 1}, tools=TOOLS)


@pytest.mark.parametrize(
    ("producer", "param", "ok"),
    [
        (llm("p", "x", "v", constraints=GenConstraints(json_schema={"type": "integer"})), "limit", True),
        (llm("p", "x", "v", constraints=GenConstraints(json_schema={"type": "number"})), "limit", True),
        (llm("p", "x", "v", constraints=GenConstraints(json_object=True)), "limit", False),
        (llm("p", "x", "v", constraints=GenConstraints(choices=["1", "2"])), "limit", False),
        (llm("p", "x", "v", constraints=GenConstraints(choices=["a"])), "sql", True),
        (llm("p", "x", "v", n=3), "sql", False),  # n samples: a list
        (ToolCall("p", "run_sql", "v", {"db": "d", "sql": "s"}), "sql", False),  # returns an array
        (ToolCall("p", "scale", "v", {}), "limit", True),  # returns unknown: anything goes
    ],
)
def test_variable_schema_against_parameter(producer, param: str, ok: bool) -> None:
    args = {"db": "d", "sql": "s", param: var_ref("v")}
    nodes = [producer, ToolCall("use", "run_sql", "rows", args)]
    if ok:
        Workflow.build(nodes, tools=TOOLS)
    else:
        problem = only(problems_of(nodes))
        assert (problem.node, problem.field) == ("use", f"args.{param}")


# ---- LLM call fields ------------------------------------------------------------------------------------------------


def test_binding_to_nonexistent_slot() -> None:
    problem = only(problems_of([llm("a", "{{x}}", "out", bindings={"x": "q", "y": "q"})], inputs={"q": 1}))
    assert (problem.node, problem.field) == ("a", "bindings.y")
    assert "no {{y}} slot" in problem.message


def test_binding_of_wrong_shape() -> None:
    problem = only(problems_of([llm("a", "{{x}}", "out", bindings={"x": 3})]))
    assert (problem.node, problem.field) == ("a", "bindings.x")


@pytest.mark.parametrize(
    ("kwargs", "field", "fragment"),
    [
        ({"constraints": GenConstraints(top_p=0)}, "top_p", "(0, 1]"),
        ({"constraints": GenConstraints(regex="a", choices=["a"])}, "choices", "only one output constraint"),
        ({"n": 0}, "n", "[1, 128]"),
        ({"n": 129}, "n", "[1, 128]"),
        ({"choice_mode": ChoiceMode.SCORE}, "choice_mode", "needs 'choices'"),
    ],
)
def test_llm_call_fields(kwargs: dict, field: str, fragment: str) -> None:
    problem = only(problems_of([llm("a", "text", "out", **kwargs)]))
    assert (problem.node, problem.field) == ("a", field)
    assert fragment in problem.message


def test_every_bad_decoding_field_of_a_call_is_reported() -> None:
    constraints = GenConstraints(max_tokens=0, temperature=-1.0, top_p=1.5, stop=[""], regex="a", choices=["a"])
    problems = problems_of([llm("a", "text", "out", constraints=constraints, n=0)])
    assert [(p.node, p.field) for p in problems] == [
        ("a", "max_tokens"),
        ("a", "temperature"),
        ("a", "top_p"),
        ("a", "stop"),
        ("a", "choices"),
        ("a", "n"),
    ]


def test_bad_node_id_and_output_name() -> None:
    problems = problems_of([llm("bad id!", "x", "o1"), llm("ok", "x", "not-a-name")])
    assert [(p.node, p.field) for p in problems] == [("bad id!", "id"), ("ok", "output")]


def test_duplicate_node_ids() -> None:
    problems = problems_of([llm("a", "x", "o1"), llm("a", "y", "o2")])
    assert [(p.node, p.field) for p in problems] == [("a", "id"), ("a", "id")]
    assert "same id" in problems[0].message
    workflow = Workflow()
    workflow.add_node(llm("a", "x", "o1"))
    with pytest.raises(WorkflowError) as caught:
        workflow.add_node(llm("a", "y", "o2"))
    assert only(caught.value.problems).field == "id"


# ---- map_over -------------------------------------------------------------------------------------------------------


def test_map_over_a_list_input_and_a_list_producer() -> None:
    workflow = Workflow.build(
        [
            llm("each", "Summarise {{doc}}", "summaries", map_over="doc", bindings={"doc": "docs"}),
            llm("samples", "idea", "ideas", n=3),
            llm("each_idea", "Rate {{idea}}", "ratings", map_over="idea", bindings={"idea": "ideas"}),
        ],
        inputs={"docs": ["a", "b"]},
        tools=TOOLS,
    )
    assert workflow.variables["summaries"].schema == {"type": "array", "items": {"type": "string"}}


@pytest.mark.parametrize(
    ("node", "field", "fragment"),
    [
        (llm("m", "{{docs}}", "o", map_over="nope"), "map_over", "no {{nope}} slot"),
        (llm("m", "{{d}}", "o", map_over="d", bindings={"d": ["docs", "docs2"]}), "map_over", "one variable"),
        (llm("m", "{{docs}}", "o", map_over="docs", n=2), "n", "n must be 1"),
        (llm("m", "{{title}}", "o", map_over="title"), "map_over", "holds string, not a list"),
    ],
)
def test_map_over_checks(node: LLMCall, field: str, fragment: str) -> None:
    problem = only(problems_of([node], inputs={"docs": ["a"], "docs2": ["b"], "title": "t"}))
    assert (problem.node, problem.field) == ("m", field)
    assert fragment in problem.message


def test_map_over_text_output_of_llm() -> None:
    problem = only(problems_of([llm("p", "x", "text"), llm("m", "{{text}}", "o", map_over="text")]))
    assert (problem.node, problem.field) == ("m", "map_over")


# ---- outputs and many problems at once ------------------------------------------------------------------------------


def test_outputs_naming_unknown_variables() -> None:
    problems = problems_of([llm("a", "x", "out")], outputs=["out", "nope", "also_nope"])
    assert [(p.node, p.field) for p in problems] == [(None, "outputs[1]"), (None, "outputs[2]")]
    assert "'nope'" in problems[0].message


def test_outputs_may_name_inputs_and_intermediates() -> None:
    workflow = Workflow.build(
        [llm("a", "{{q}}", "mid"), llm("b", "{{mid}}", "end")], inputs={"q": 1}, outputs=["q", "mid", "end"]
    )
    assert workflow.outputs == ["q", "mid", "end"]


def test_every_problem_reported_at_once() -> None:
    problems = problems_of(
        [
            llm("gen", "Q: {{question}}", "sql"),  # question unbound
            ToolCall("exec", "run_sql", "rows", {"db": 1, "sql": var_ref("sql")}),  # db wrong type
            ToolCall("other", "rm_rf", "gone", {}),  # unknown tool
            llm("dup1", "x", "same"),
            llm("dup2", "y", "same"),  # two producers
            llm("loop1", "{{l2}}", "l1"),
            llm("loop2", "{{l1}}", "l2"),  # a cycle, among nodes that are otherwise fine
        ],
        outputs=["rows", "missing"],
    )
    assert {(p.node, p.field) for p in problems} == {
        ("gen", "prompt"),
        ("exec", "args.db"),
        ("other", "tool"),
        ("dup1", "output"),
        ("dup2", "output"),
        ("loop1", "prompt"),
        (None, "outputs[1]"),
    }
    assert len(problems) == 7
    assert "7 problems" in str(WorkflowError(problems))


def test_problem_text_names_node_and_field() -> None:
    assert str(Problem("n1", "args.sql", "bad")) == "node 'n1', field 'args.sql': bad"
    assert str(Problem(None, "outputs", "bad")) == "field 'outputs': bad"
    assert str(WorkflowError([Problem("n", "f", "m")])).startswith("invalid workflow (1 problem):")


# ---- nothing half-applied -------------------------------------------------------------------------------------------


def _snapshot(workflow: Workflow):
    return (
        dict(workflow.nodes),
        {name: (var.producer, list(var.consumers), var.state) for name, var in workflow.variables.items()},
        sorted(workflow.graph.nodes),
        sorted(workflow.graph.edges(data=True)),
    )


@pytest.mark.parametrize(
    "bad",
    [
        ToolCall("t", "run_sql", "rows", {"db": "d", "sql": var_ref("sql"), "limit": var_ref("sql")}),  # wrong type
        ToolCall("t", "no_such_tool", "rows", {"x": var_ref("sql")}),
        llm("u", "{{sql}} {{ghost}}", "summary"),  # consumes an existing variable and an unbound one
        llm("u", "{{sql}}", "sql"),  # redefines an existing variable
        llm("gen", "{{sql}}", "fresh"),  # duplicate id
        llm("u", "{{sql}}", "fresh", constraints=GenConstraints(temperature=-1)),
    ],
)
def test_add_node_error_leaves_workflow_unchanged(bad) -> None:
    workflow = Workflow(tools=TOOLS)
    workflow.add_input("q", "question")
    workflow.add_node(llm("gen", "{{q}}", "sql"))
    workflow.add_node(ToolCall("exec", "run_sql", "rows0", {"db": "d", "sql": var_ref("sql")}))
    before = _snapshot(workflow)
    with pytest.raises(WorkflowError):
        workflow.add_node(bad)
    assert _snapshot(workflow) == before
    # And the workflow still grows normally afterwards.
    workflow.add_node(llm("after", "{{sql}} {{rows0}}", "final"))
    assert set(workflow.graph.predecessors("after")) == {"gen", "exec"}


@pytest.mark.parametrize("name", ["bad name", "1st", "a-b", ""])
def test_input_names_must_be_variable_names(name: str) -> None:
    with pytest.raises(WorkflowError) as caught:
        Workflow.build([], inputs={name: 1})
    problem = only(caught.value.problems)
    assert (problem.node, problem.field) == (None, f"inputs.{name}")
    assert "not a valid variable name" in problem.message
