"""The JSON wire format: round trips, versions, unknown fields with their JSON path, prompt/messages, JSON Schema."""

from __future__ import annotations

import json

import msgspec
import pytest

from plait.dag import (
    WIRE_VERSION,
    ChoiceMode,
    LLMCall,
    LLMCallSpec,
    MessageSpec,
    OnError,
    ToolCall,
    ToolCallSpec,
    ToolSpec,
    Workflow,
    WorkflowError,
    WorkflowSpec,
    decode_workflow,
    encode_workflow,
    from_workflow,
    load_workflow,
    to_workflow,
    var_ref,
    workflow_json_schema,
)
from plait.semantic_vars import ChatPrompt, Template

TOOLS = {
    "run_sql": ToolSpec(
        "run_sql",
        {"type": "object", "properties": {"db": {"type": "string"}, "sql": {"type": "string"}}, "required": ["sql"]},
        returns={"type": "array"},
    )
}

DOCUMENT = {
    "version": 1,
    "name": "text_to_sql",
    "inputs": {"question": "How many orders?", "schema": {"orders": ["id", "total"]}},
    "nodes": [
        {
            "kind": "llm",
            "id": "link",
            "prompt": "Schema: {{schema}}\nQ: {{question}}\nTables:",
            "output": "tables",
            "max_tokens": 32,
            "json_schema": {"type": "array", "items": {"type": "string"}},
        },
        {
            "kind": "llm",
            "id": "gen",
            "messages": [
                {"role": "system", "content": "You write SQLite. Literal \\{{braces}} stay."},
                {"role": "user", "content": "Tables: {{t}}\nQ: {{question}}"},
            ],
            "bindings": {"t": "tables"},
            "output": "sqls",
            "n": 3,
            "temperature": 0.8,
            "seed": 1,
            "stop": [";"],
        },
        {"kind": "llm", "id": "each", "prompt": "Fix: {{s}}", "output": "fixed", "map_over": "s",
         "bindings": {"s": "sqls"}, "regex": "SELECT .*"},
        {"kind": "tool", "id": "exec", "tool": "run_sql", "output": "rows",
         "args": {"db": "shop", "sql": {"$var": "question"}}, "on_error": "fallback", "fallback": []},
        {"kind": "llm", "id": "vote", "prompt": "Best of {{fixed}} given {{rows}}", "output": "best",
         "choices": ["1", "2", "3"], "choice_mode": "score"},
    ],
    "outputs": ["best", "rows"],
}  # fmt: skip


def test_decode_document_into_spec() -> None:
    spec = decode_workflow(json.dumps(DOCUMENT))
    assert spec.version == WIRE_VERSION == 1
    assert spec.name == "text_to_sql"
    assert [type(node) for node in spec.nodes] == [LLMCallSpec, LLMCallSpec, LLMCallSpec, ToolCallSpec, LLMCallSpec]
    gen = spec.nodes[1]
    assert isinstance(gen, LLMCallSpec)
    assert gen.messages == [MessageSpec("system", "You write SQLite. Literal \\{{braces}} stay."),
                            MessageSpec("user", "Tables: {{t}}\nQ: {{question}}")]  # fmt: skip
    assert gen.temperature == 0.8 and gen.n == 3 and gen.max_tokens == 256
    # The same document given as bytes, str or an already-decoded object decodes alike.
    assert decode_workflow(json.dumps(DOCUMENT).encode()) == spec == decode_workflow(DOCUMENT)


def test_spec_to_workflow_builds_nodes() -> None:
    workflow = to_workflow(decode_workflow(DOCUMENT), tools=TOOLS)
    gen = workflow.nodes["gen"]
    assert isinstance(gen, LLMCall) and isinstance(gen.prompt, ChatPrompt)
    assert gen.prompt.slots == ("t", "question")
    assert (
        gen.prompt.render({"t": "orders", "question": "q"})[0]["content"]
        == "You write SQLite. Literal {{braces}} stay."
    )
    assert gen.constraints.temperature == 0.8 and gen.constraints.stop == [";"] and gen.n == 3
    link = workflow.nodes["link"]
    assert isinstance(link, LLMCall) and link.constraints.parses_json and link.constraints.max_tokens == 32
    each = workflow.nodes["each"]
    assert isinstance(each, LLMCall) and each.map_over == "s" and each.constraints.regex == "SELECT .*"
    vote = workflow.nodes["vote"]
    assert isinstance(vote, LLMCall) and vote.choice_mode is ChoiceMode.SCORE
    exec_node = workflow.nodes["exec"]
    assert isinstance(exec_node, ToolCall)
    assert exec_node.on_error is OnError.FALLBACK and exec_node.fallback == []
    assert exec_node.args == {"db": "shop", "sql": {"$var": "question"}}
    assert workflow.outputs == ["best", "rows"]
    assert workflow.variables["schema"].value == {"orders": ["id", "total"]}
    assert set(workflow.graph.edges) == {("link", "gen"), ("gen", "each"), ("each", "vote"), ("exec", "vote")}


def test_round_trip_spec_workflow_spec_json_spec() -> None:
    spec = decode_workflow(DOCUMENT)
    again = from_workflow(to_workflow(spec, tools=TOOLS))
    assert again == spec
    encoded = encode_workflow(again)
    assert decode_workflow(encoded) == spec
    # Defaults are left out of the JSON; what is there is what the document said.
    as_json = json.loads(encoded)
    assert "top_p" not in as_json["nodes"][0] and as_json["nodes"][0]["max_tokens"] == 32
    assert as_json["nodes"][3] == DOCUMENT["nodes"][3]
    # encode_workflow takes a Workflow as well as a spec.
    assert decode_workflow(encode_workflow(to_workflow(spec, tools=TOOLS))) == spec


def test_python_built_workflow_round_trips() -> None:
    workflow = Workflow(name="py", tools=TOOLS)
    workflow.add_input("q", "question?")
    workflow.add_node(LLMCall("a", Template("Q: {{q}} \\{{not_a_slot}}"), "sql"))
    workflow.add_node(ToolCall("b", "run_sql", "rows", {"sql": var_ref("sql"), "db": "x"}))
    workflow.add_node(
        LLMCall("c", Template("{{many}}"), "summary", bindings={"many": ["sql", "rows"]}, on_error=OnError.FALLBACK,
                fallback="n/a")
    )  # fmt: skip
    spec = from_workflow(workflow)
    assert spec.inputs == {"q": "question?"}
    assert spec.outputs == []  # a growing workflow has no declared outputs; building defaults them to the sinks
    rebuilt = to_workflow(decode_workflow(encode_workflow(spec)), tools=TOOLS)
    assert rebuilt.outputs == ["summary"]
    assert list(rebuilt.nodes) == ["a", "b", "c"]
    assert set(rebuilt.graph.edges) == set(workflow.graph.edges)
    first = rebuilt.nodes["a"]
    assert isinstance(first, LLMCall) and first.prompt.slots == ("q",)
    assert first.prompt.render({"q": "x"}) == "Q: x {{not_a_slot}}"
    last = rebuilt.nodes["c"]
    assert isinstance(last, LLMCall) and last.bindings == {"many": ["sql", "rows"]} and last.fallback == "n/a"


# ---- errors ---------------------------------------------------------------------------------------------------------


def problem_of(data) -> tuple[str | None, str, str]:
    with pytest.raises(WorkflowError) as caught:
        decode_workflow(data)
    (problem,) = caught.value.problems
    return problem.node, problem.field, problem.message


def with_node(**changes) -> dict:
    node = {"kind": "llm", "id": "a", "prompt": "hi", "output": "x"} | changes
    return {"nodes": [{"kind": "llm", "id": "z", "prompt": "z", "output": "zz"}, node]}


@pytest.mark.parametrize("version", [0, 2, 99])
def test_unsupported_version(version: int) -> None:
    node, field, message = problem_of({"version": version, "nodes": []})
    assert (node, field) == (None, "version")
    assert f"unsupported version {version}" in message


def test_newer_version_with_new_fields_fails_on_version() -> None:
    document = {"version": 2, "nodes": [{"kind": "llm", "id": "a", "prompt": "p", "output": "o", "new": 1}]}
    assert problem_of(json.dumps(document))[1] == "version"


def test_version_of_wrong_type() -> None:
    assert problem_of('{"version": "1", "nodes": []}')[1] == "version"


def test_unknown_fields_rejected_with_json_path() -> None:
    node, field, message = problem_of(with_node(temprature=0.5))
    assert (node, field) == (None, "nodes[1].temprature")
    assert "unknown field `temprature`" in message
    assert problem_of({"nodes": [], "extra": 1})[1] == "extra"
    tool = {"kind": "tool", "id": "t", "tool": "x", "output": "o", "timeout": 3}
    assert problem_of({"nodes": [tool]})[1] == "nodes[0].timeout"
    message_extra = with_node(prompt=None, messages=[{"role": "user", "content": "x", "name": "bob"}])
    assert problem_of(message_extra)[1] == "nodes[1].messages[0].name"


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({}, "nodes"),
        ({"nodes": [{"kind": "llm", "prompt": "p", "output": "o"}]}, "nodes[0].id"),
        (with_node(max_tokens="many"), "nodes[1].max_tokens"),
        (with_node(kind="python"), "nodes[1].kind"),
        (with_node(choice_mode="vibes"), "nodes[1].choice_mode"),
        (with_node(bindings={"a": 3}), "nodes[1].bindings[...]"),  # msgspec does not name dict keys
        ({"nodes": {}}, "nodes"),
        ("[]", "body"),
    ],
)
def test_bad_values_name_their_path(data, field: str) -> None:
    assert problem_of(data)[1] == field


def test_not_json() -> None:
    node, field, message = problem_of(b"{nodes: oops")
    assert (node, field) == (None, "body") and "not valid JSON" in message


def test_every_bad_field_is_reported_not_only_the_first() -> None:
    document = {
        "name": 7,
        "nodes": [
            {"kind": "llm", "id": "a", "prompt": "hi", "output": "x", "max_tokens": "ten", "stop": ["ok", 3]},
            {"kind": "tool", "id": "t", "tool": "run_sql", "output": "rows", "args": [], "colour": "red"},
            {"kind": "llm", "id": "b", "prompt": "{{x}}", "output": "y"},
            "not a node",
            {"kind": "python", "id": "p", "output": "z"},
        ],
    }
    with pytest.raises(WorkflowError) as caught:
        decode_workflow(json.dumps(document))
    found = [(p.node, p.field) for p in caught.value.problems]
    assert found == [
        (None, "name"),
        (None, "nodes[0].max_tokens"),
        (None, "nodes[0].stop[1]"),
        (None, "nodes[1].args"),
        (None, "nodes[1].colour"),
        (None, "nodes[3]"),
        (None, "nodes[4].kind"),
    ]
    messages = [p.message for p in caught.value.problems]
    assert messages[1] == "Expected `int`, got `str`" and "unknown field `colour`" in messages[4]
    assert "'python'" in messages[6]
    with pytest.raises(WorkflowError) as as_object:  # an already-decoded object: the same problems
        decode_workflow(document)
    assert as_object.value.problems == caught.value.problems


def test_load_workflow_reports_bad_fields_and_graph_problems_together() -> None:
    document = {
        "inputs": {"q": "x"},
        "nodes": [
            {"kind": "llm", "id": "a", "prompt": "{{q}}", "output": "x", "max_tokens": "ten", "top_p": "high"},
            {"kind": "llm", "id": "b", "prompt": "{{x}} {{ghost}}", "output": "y"},  # x comes from the broken a
            {"kind": "tool", "id": "t", "tool": "no_such_tool", "output": "rows", "args": {"sql": {"$var": "y"}}},
            {"kind": "tool", "id": "c", "tool": "run_sql", "output": 5},
            {"kind": "tool", "id": "d", "tool": "run_sql", "output": "x", "args": {"sql": "SELECT 1"}},
            {"kind": "tool", "id": "e", "tool": "run_sql", "args": {"sql": "SELECT 1"}, "output": "y", "db": 1},
        ],
        "outputs": ["rows", "missing"],
    }
    with pytest.raises(WorkflowError) as caught:
        load_workflow(json.dumps(document), tools=TOOLS)
    found = {(p.node, p.field) for p in caught.value.problems}
    assert found == {
        (None, "nodes[0].max_tokens"),
        (None, "nodes[0].top_p"),
        (None, "nodes[3].output"),
        (None, "nodes[5].db"),
        ("b", "prompt"),  # {{ghost}}; not {{x}}: the broken node still produces x
        ("d", "output"),  # x has two producers, d and the broken node
        ("b", "output"),  # y has two producers, b and the broken node
        ("t", "tool"),
        (None, "outputs[1]"),
    }
    assert "'ghost'" in next(p.message for p in caught.value.problems if p.field == "prompt")
    assert "'d' and 'nodes[0]'" in next(p.message for p in caught.value.problems if p.node == "d")


def test_load_workflow_builds_a_valid_document_with_inputs() -> None:
    workflow = load_workflow(DOCUMENT, tools=TOOLS, inputs={"question": "Which orders?"})
    assert workflow.variables["question"].value == "Which orders?"
    assert list(workflow.nodes) == [node["id"] for node in DOCUMENT["nodes"]]


@pytest.mark.parametrize("both", [True, False])
def test_prompt_and_messages_are_exclusive(both: bool) -> None:
    node = {"kind": "llm", "id": "a", "output": "x"}
    if both:
        node |= {"prompt": "p", "messages": [{"role": "user", "content": "m"}]}
    with pytest.raises(WorkflowError) as caught:
        to_workflow(decode_workflow({"nodes": [node]}))
    (problem,) = caught.value.problems
    assert (problem.node, problem.field) == ("a", "prompt")
    assert "exactly one of 'prompt'" in problem.message


def test_template_errors_name_node_and_field() -> None:
    document = {
        "nodes": [
            {"kind": "llm", "id": "a", "prompt": "ok\n{{bad slot}}", "output": "x"},
            {"kind": "llm", "id": "b", "messages": [{"role": "user", "content": "u"}, {"role": "bot", "content": "c"}],
             "output": "y"},
            {"kind": "llm", "id": "c", "messages": [], "output": "z"},
            {"kind": "llm", "id": "d", "messages": [{"role": "user", "content": "{{1x}}"}], "output": "w"},
        ]
    }  # fmt: skip
    with pytest.raises(WorkflowError) as caught:
        to_workflow(decode_workflow(document))
    found = [(p.node, p.field) for p in caught.value.problems]
    assert found == [("a", "prompt"), ("b", "messages[1].role"), ("c", "messages"), ("d", "messages[0].content")]
    assert "line 2" in caught.value.problems[0].message


def test_validation_problems_come_through_to_workflow() -> None:
    document = {
        "inputs": {"q": "x"},
        "nodes": [
            {"kind": "llm", "id": "a", "prompt": "{{q}} {{ghost}}", "output": "x", "top_p": 0},
            {"kind": "tool", "id": "t", "tool": "run_sql", "output": "rows", "args": {"sql": 5}},
        ],
    }
    with pytest.raises(WorkflowError) as caught:
        to_workflow(decode_workflow(document), tools=TOOLS)
    assert {(p.node, p.field) for p in caught.value.problems} == {("a", "prompt"), ("a", "top_p"), ("t", "args.sql")}


def test_chat_messages_round_trip() -> None:
    document = {
        "nodes": [
            {"kind": "llm", "id": "chat", "output": "reply",
             "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "{{q}}"},
                          {"role": "assistant", "content": "Sure:"}, {"role": "tool", "content": "{\"ok\": true}"}]},
        ],
        "inputs": {"q": "Hi"},
    }  # fmt: skip
    workflow = to_workflow(decode_workflow(document))
    chat = workflow.nodes["chat"]
    assert isinstance(chat, LLMCall) and chat.is_chat
    assert chat.prompt.render({"q": "Hi"}) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Sure:"},
        {"role": "tool", "content": '{"ok": true}'},
    ]
    encoded = json.loads(encode_workflow(workflow))
    assert encoded["nodes"][0]["messages"] == document["nodes"][0]["messages"]
    assert "prompt" not in encoded["nodes"][0]


# ---- JSON Schema export ---------------------------------------------------------------------------------------------


def test_json_schema_is_valid_and_accepts_documents() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = workflow_json_schema()
    json.dumps(schema)  # plain JSON
    validator_class = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    validator_class.check_schema(schema)
    validator = validator_class(schema)
    validator.validate(DOCUMENT)
    validator.validate(json.loads(encode_workflow(decode_workflow(DOCUMENT))))
    validator.validate({"nodes": []})


@pytest.mark.parametrize(
    "bad",
    [
        {"nodes": [{"kind": "llm", "id": "a", "prompt": "p", "output": "o", "unknown": 1}]},
        {"nodes": [{"kind": "shell", "id": "a", "output": "o"}]},
        {"nodes": [{"kind": "tool", "id": "a", "output": "o"}]},  # no tool
        {"nodes": [{"kind": "llm", "id": "a", "prompt": "p", "output": "o", "max_tokens": "8"}]},
        {"nodes": [], "name": 3},
        {"name": "no nodes"},
    ],
)
def test_json_schema_rejects_what_the_decoder_rejects(bad: dict) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = workflow_json_schema()
    assert list(jsonschema.Draft202012Validator(schema).iter_errors(bad)), "the schema should reject this"
    with pytest.raises(WorkflowError):
        decode_workflow(bad)


def test_spec_structs_reject_unknown_fields_directly() -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"role": "user", "content": "x", "extra": 1}, MessageSpec)
    assert WorkflowSpec(nodes=[]).version == WIRE_VERSION
