"""Graph analysis on hand-drawn graphs (issue 7, acceptance 3): levels, critical path, steps-to-execution per node
and per shared prompt prefix. Every expected value below was worked out by hand from the drawing above its graph."""

from __future__ import annotations

import pytest

from plait.dag import (
    LLMCall,
    Node,
    ToolCall,
    ToolSpec,
    Workflow,
    calls_made_ready,
    critical_path,
    levels,
    prefix_groups,
    prefix_steps_to_execution,
    steps_to_execution,
    var_ref,
)
from plait.semantic_vars import ChatPrompt, GenConstraints, Template


def llm(node_id: str, prompt: str, output: str, **kwargs) -> LLMCall:
    return LLMCall(node_id, Template(prompt), output, **kwargs)


# ---- graph 1: a chain -----------------------------------------------------------------------------------------------
#
#   (topic) -> a -> b -> c -> d
#
# Each call's prompt starts with a slot (no static prefix) except a's.


@pytest.fixture
def chain() -> Workflow:
    return Workflow.build(
        [
            llm("a", "Outline {{topic}}", "outline"),
            llm("b", "{{outline}}\nDraft:", "draft"),
            llm("c", "{{draft}}\nEdit:", "edited"),
            llm("d", "{{edited}}\nTitle:", "title"),
        ],
        inputs={"topic": "graphs"},
    )


def test_chain_levels(chain: Workflow) -> None:
    assert levels(chain) == {"a": 0, "b": 1, "c": 2, "d": 3}


def test_chain_critical_path(chain: Workflow) -> None:
    assert critical_path(chain) == (["a", "b", "c", "d"], 4.0)
    assert critical_path(chain, {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0}) == (["a", "b", "c", "d"], 10.0)
    assert critical_path(chain, {"c": 0.5}) == (["a", "b", "c", "d"], 3.5)  # others default to 1


def test_chain_steps_to_execution(chain: Workflow) -> None:
    assert steps_to_execution(chain) == {"a": 0, "b": 1, "c": 2, "d": 3}
    assert steps_to_execution(chain, finished={"a"}) == {"b": 0, "c": 1, "d": 2}
    assert steps_to_execution(chain, finished={"a", "b", "c"}) == {"d": 0}
    assert steps_to_execution(chain, finished={"a", "b", "c", "d"}) == {}


def test_chain_prefixes(chain: Workflow) -> None:
    assert prefix_groups(chain) == {"Outline ": ["a"]}  # b, c, d start with a slot: nothing static to share
    assert prefix_steps_to_execution(chain) == {"Outline ": 0}
    assert prefix_steps_to_execution(chain, finished={"a"}) == {}


# ---- graph 2: a diamond (fan-out, fan-in) plus an independent node ------------------------------------------------
#
#                plan            side        plan, side: "Make a plan."           (same prompt, one group)
#              /  |   \                      w1..w3:     "You are a careful worker.\nPlan: {{plan}}..."
#            w1   w2   w3                    merge:      "Merge:\n{{results}}"   (fan-in: results = [r3, r1, r2])
#              \  |   /                      final:      "You are a careful worker.\nPlan: {{plan}}\nFinal: ..."
#               merge   |                                (shares the workers' prefix, two levels later)
#                 |     |  (plan -> final too)
#               final --+
#
# Levels: plan 0, side 0, w* 1, merge 2, final 3.

WORKER = "You are a careful worker.\nPlan: "


@pytest.fixture
def diamond() -> Workflow:
    workflow = Workflow()
    workflow.add_input("goal", "ship it")
    workflow.add_node(llm("plan", "Make a plan.", "the_plan"))
    workflow.add_node(llm("side", "Make a plan.", "other_plan"))
    for i in (1, 2, 3):
        workflow.add_node(llm(f"w{i}", WORKER + "{{plan}}\nDo part " + str(i), f"r{i}", bindings={"plan": "the_plan"}))
    # The fan-in lists r3 first: edges into merge are created in that order, yet ties follow insertion order (w1).
    workflow.add_node(llm("merge", "Merge:\n{{results}}", "merged", bindings={"results": ["r3", "r1", "r2"]}))
    workflow.add_node(llm("final", WORKER + "{{plan}}\nFinal: {{merged}}", "answer", bindings={"plan": "the_plan"}))
    return workflow


def test_diamond_edges(diamond: Workflow) -> None:
    assert set(diamond.graph.edges) == {
        ("plan", "w1"),
        ("plan", "w2"),
        ("plan", "w3"),
        ("w1", "merge"),
        ("w2", "merge"),
        ("w3", "merge"),
        ("merge", "final"),
        ("plan", "final"),
    }


def test_diamond_levels(diamond: Workflow) -> None:
    assert levels(diamond) == {"plan": 0, "side": 0, "w1": 1, "w2": 1, "w3": 1, "merge": 2, "final": 3}


def test_diamond_critical_path_unit_durations_ties_by_insertion_order(diamond: Workflow) -> None:
    # plan -> w? -> merge -> final: 4 nodes; w1, w2, w3 tie and w1 was inserted first.
    assert critical_path(diamond) == (["plan", "w1", "merge", "final"], 4.0)


def test_diamond_critical_path_with_mapping(diamond: Workflow) -> None:
    durations = {"plan": 1.0, "w1": 2.0, "w2": 5.0, "w3": 3.0, "merge": 1.0, "final": 1.0, "side": 1.0}
    # Through w2: 1 + 5 + 1 + 1 = 8 (w1: 5, w3: 6; side alone: 1).
    assert critical_path(diamond, durations) == (["plan", "w2", "merge", "final"], 8.0)
    # A long independent node beats the whole diamond: side alone takes 9 > 8.
    assert critical_path(diamond, {**durations, "side": 9.0}) == (["side"], 9.0)
    # A tie between two whole paths (side 8 vs the diamond's 8): the earliest-inserted end node wins (side).
    assert critical_path(diamond, {**durations, "side": 8.0}) == (["side"], 8.0)


def test_diamond_critical_path_with_callable(diamond: Workflow) -> None:
    def by_prompt_length(node: Node) -> float:
        assert isinstance(node, LLMCall)
        return {"w3": 10.0, "final": 0.25}.get(node.id, 0.5)

    # plan 0.5 + w3 10 + merge 0.5 + final 0.25 = 11.25
    assert critical_path(diamond, by_prompt_length) == (["plan", "w3", "merge", "final"], 11.25)


def test_diamond_steps_to_execution(diamond: Workflow) -> None:
    assert steps_to_execution(diamond) == {"plan": 0, "side": 0, "w1": 1, "w2": 1, "w3": 1, "merge": 2, "final": 3}
    # plan and w2 finished: w1, w3 can run; merge waits one round; final two (its plan input is already there).
    assert steps_to_execution(diamond, finished={"plan", "w2"}) == {
        "side": 0,
        "w1": 0,
        "w3": 0,
        "merge": 1,
        "final": 2,
    }
    assert steps_to_execution(diamond, finished={"plan", "side", "w1", "w2", "w3"}) == {"merge": 0, "final": 1}


def test_diamond_prefix_groups(diamond: Workflow) -> None:
    assert prefix_groups(diamond) == {
        "Make a plan.": ["plan", "side"],
        WORKER: ["w1", "w2", "w3", "final"],
        "Merge:\n": ["merge"],
    }


def test_diamond_prefix_steps(diamond: Workflow) -> None:
    assert prefix_steps_to_execution(diamond) == {"Make a plan.": 0, WORKER: 1, "Merge:\n": 2}
    # side still pending keeps "Make a plan." at 0; the workers can run now.
    assert prefix_steps_to_execution(diamond, finished={"plan"}) == {"Make a plan.": 0, WORKER: 0, "Merge:\n": 1}
    # Once every worker is done, the workers' prefix is next used by final, after merge: 1 step away.
    assert prefix_steps_to_execution(diamond, finished={"plan", "side", "w1", "w2", "w3"}) == {
        WORKER: 1,
        "Merge:\n": 0,
    }
    assert prefix_steps_to_execution(diamond, finished=set(diamond.nodes)) == {}


# ---- graph 3: text-to-SQL -------------------------------------------------------------------------------------------
#
#   (schema, question)
#          |
#        link                         "Schema:\n{{schema}}\nQuestion: {{question}}\nTables:"        -> tables
#     /   |    |    \
#  sql1  sql2  sql3  sql4             "You write SQLite.\nTables: {{tables}}\nQ: {{question}}\nSQL:" -> s1..s4 (T=0.8)
#    |    |    |    |
#  run1  run2  run3  run4             tool run_sql(db="shop", sql=$s_i)                              -> r1..r4
#     \   |    |    /
#        vote                         "Pick the best.\n{{rows}}" with rows = [r1, r2, r3, r4], choices -> best
#          |
#        answer                       "Answer {{question}} using {{best}}" (also reads the question input)
#
# Levels: link 0, sql* 1, run* 2, vote 3, answer 4.

SQL_PREFIX = "You write SQLite.\nTables: "
RUN_SQL = ToolSpec(
    "run_sql",
    {"type": "object", "properties": {"db": {"type": "string"}, "sql": {"type": "string"}}, "required": ["db", "sql"]},
    returns={"type": "array", "items": {"type": "object"}},
)


@pytest.fixture
def text_to_sql() -> Workflow:
    nodes: list[LLMCall | ToolCall] = [
        llm("link", "Schema:\n{{schema}}\nQuestion: {{question}}\nTables:", "tables"),
        llm(
            "vote",
            "Pick the best.\n{{rows}}",
            "best",
            bindings={"rows": ["r1", "r2", "r3", "r4"]},
            constraints=GenConstraints(choices=["1", "2", "3", "4"]),
        ),
        llm("answer", "Answer {{question}} using {{best}}", "final"),
    ]
    for i in (1, 2, 3, 4):
        nodes.append(
            llm(
                f"sql{i}",
                SQL_PREFIX + "{{tables}}\nQ: {{question}}\nSQL:",
                f"s{i}",
                constraints=GenConstraints(temperature=0.8, seed=i),
            )
        )
        nodes.append(ToolCall(f"run{i}", "run_sql", f"r{i}", {"db": "shop", "sql": var_ref(f"s{i}")}))
    return Workflow.build(
        nodes, inputs={"schema": "orders(id, total)", "question": "How many orders?"}, tools={"run_sql": RUN_SQL}
    )


def test_text_to_sql_levels(text_to_sql: Workflow) -> None:
    expected = {"link": 0, "vote": 3, "answer": 4}
    expected |= {f"sql{i}": 1 for i in (1, 2, 3, 4)} | {f"run{i}": 2 for i in (1, 2, 3, 4)}
    assert levels(text_to_sql) == expected
    assert text_to_sql.outputs == ["final"]


def test_text_to_sql_critical_path_with_mapping(text_to_sql: Workflow) -> None:
    durations = {
        "link": 2.0,
        "sql1": 1.5, "sql2": 3.0, "sql3": 2.0, "sql4": 2.5,
        "run1": 4.0, "run2": 0.5, "run3": 1.0, "run4": 0.5,
        "vote": 1.0,
        "answer": 0.5,
    }  # fmt: skip
    # link + sql_i + run_i: 7.5, 5.5, 5.0, 5.0 -> branch 1; then vote 1 and answer 0.5: 9.0.
    assert critical_path(text_to_sql, durations) == (["link", "sql1", "run1", "vote", "answer"], 9.0)


def test_text_to_sql_critical_path_with_callable(text_to_sql: Workflow) -> None:
    def slow_third_tool(node: Node) -> float:
        if isinstance(node, ToolCall):
            return 5.0 if node.id == "run3" else 2.0
        return 1.0

    # link 1 + sql3 1 + run3 5 + vote 1 + answer 1 = 9
    assert critical_path(text_to_sql, slow_third_tool) == (["link", "sql3", "run3", "vote", "answer"], 9.0)
    # Unit durations: five nodes deep; the four branches tie and the first inserted (sql1, run1) wins.
    assert critical_path(text_to_sql) == (["link", "sql1", "run1", "vote", "answer"], 5.0)


def test_text_to_sql_steps_to_execution(text_to_sql: Workflow) -> None:
    nothing_done = steps_to_execution(text_to_sql)
    assert nothing_done == levels(text_to_sql)  # with nothing finished, steps equal levels
    # link, sql1, sql2 and run1 done: sql3/sql4/run2 can run; run3/run4 wait one round; vote waits on them.
    assert steps_to_execution(text_to_sql, finished={"link", "sql1", "sql2", "run1"}) == {
        "sql3": 0,
        "sql4": 0,
        "run2": 0,
        "run3": 1,
        "run4": 1,
        "vote": 2,
        "answer": 3,
    }
    everything_but_vote = set(text_to_sql.nodes) - {"vote", "answer"}
    assert steps_to_execution(text_to_sql, finished=everything_but_vote) == {"vote": 0, "answer": 1}


def test_text_to_sql_prefix_groups_leave_out_tools(text_to_sql: Workflow) -> None:
    assert prefix_groups(text_to_sql) == {
        "Schema:\n": ["link"],
        "Pick the best.\n": ["vote"],
        "Answer ": ["answer"],
        SQL_PREFIX: ["sql1", "sql2", "sql3", "sql4"],
    }


def test_text_to_sql_prefix_steps(text_to_sql: Workflow) -> None:
    assert prefix_steps_to_execution(text_to_sql) == {
        "Schema:\n": 0,
        SQL_PREFIX: 1,
        "Pick the best.\n": 3,
        "Answer ": 4,
    }
    assert prefix_steps_to_execution(text_to_sql, finished={"link", "sql1", "sql2", "run1"}) == {
        SQL_PREFIX: 0,
        "Pick the best.\n": 2,
        "Answer ": 3,
    }


# ---- graph 4: chat prompts, samples and a map -----------------------------------------------------------------------
#
#   ideas (n=3, chat) -> rate (map over ideas, chat) -> pick (chat)
#   The three share a system message; their static prefixes differ after it.


def test_chat_prompt_prefix_groups_and_levels() -> None:
    system = {"role": "system", "content": "You are terse."}
    ideas = ChatPrompt.from_dicts([system, {"role": "user", "content": "Ideas for {{topic}}"}])
    rate = ChatPrompt.from_dicts([system, {"role": "user", "content": "Rate: {{idea}}"}])
    pick = ChatPrompt.from_dicts([system, {"role": "user", "content": "Ideas for {{topic}}, pick one of {{scores}}"}])
    workflow = Workflow.build(
        [
            LLMCall("ideas", ideas, "idea_list", n=3),
            LLMCall("rate", rate, "scores", bindings={"idea": "idea_list"}, map_over="idea"),
            LLMCall("pick", pick, "choice"),
        ],
        inputs={"topic": "a name"},
    )
    assert levels(workflow) == {"ideas": 0, "rate": 1, "pick": 2}
    assert prefix_groups(workflow) == {
        "<system>You are terse.<user>Ideas for ": ["ideas", "pick"],
        "<system>You are terse.<user>Rate: ": ["rate"],
    }
    assert prefix_steps_to_execution(workflow, finished={"ideas"}) == {
        "<system>You are terse.<user>Ideas for ": 1,
        "<system>You are terse.<user>Rate: ": 0,
    }


def test_empty_workflow() -> None:
    workflow = Workflow()
    assert levels(workflow) == {}
    assert critical_path(workflow) == ([], 0.0)
    assert steps_to_execution(workflow) == {}
    assert prefix_groups(workflow) == {}
    assert prefix_steps_to_execution(workflow) == {}


def test_calls_made_ready_are_the_calls_a_node_unblocks():
    """In a two-turn agent the first tool unblocks the second thought, not the final answer (which also reads the
    second turn); the second tool unblocks the answer once everything before it is finished."""
    nodes = [
        LLMCall("think_1", Template("Q: {{q}} T1:"), "t1"),
        ToolCall("act_1", "search", "o1", args={"query": var_ref("t1")}),
        LLMCall("think_2", Template("Q: {{q}} T1:{{t1}} O1:{{o1}} T2:"), "t2"),
        ToolCall("act_2", "search", "o2", args={"query": var_ref("t2")}),
        LLMCall("answer", Template("Q: {{q}} {{t1}} {{o1}} {{t2}} {{o2}} A:"), "a"),
    ]
    workflow = Workflow.build(nodes, inputs={"q": "why"}, outputs=["a"])
    assert [c.id for c in calls_made_ready(workflow, "act_1", {"think_1"})] == ["think_2"]
    assert calls_made_ready(workflow, "act_2", {"think_1", "act_1"}) == []  # think_2 not finished yet
    done = {"think_1", "act_1", "think_2"}
    assert [c.id for c in calls_made_ready(workflow, "act_2", done)] == ["answer"]
    assert calls_made_ready(workflow, "answer", done | {"act_2"}) == []
