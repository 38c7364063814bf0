"""``text2sql``: multi-stage text-to-SQL over Spider dev questions, with per-program deadlines and Poisson arrivals.

Per question: schema linking (prompt = full schema of its database + question) -> 4 SQL candidates in parallel
(prompt = shared instructions and few-shot examples + linked schema + question; they differ only in a final
"approach" line) -> ``execute_sql`` per candidate -> 0-2 revisions per candidate (decided up front, since workflows are
static: each continues the candidate's own prompt with the SQL and its result, then executes again) -> a vote over
the final candidates (fan-in). Each program has a deadline of ``SLO_SCALE`` times its estimated unloaded time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from plait.bench.workflow_suites.common import (
    arrival_times,
    forced_length,
    literal,
    pick,
    resolve_data_dir,
    rng_for,
    summary,
    totals,
)
from plait.bench.workflow_suites.estimates import PROFILE_COSTS, SizeEstimator
from plait.bench.workflow_suites.sim_tools import make_sim_tools, sim_tool_args
from plait.bench.workflow_suites.spider_data import SpiderQuestion, SpiderSchema, load_questions, load_schemas
from plait.bench.workflow_suites.suite import Suite, SuiteOptions, SuiteProgram
from plait.bench.workflow_suites.synthetic_text import synthetic_text
from plait.dag import LLMCall, Node, ToolCall, Workflow, var_ref
from plait.semantic_vars import Template

NAME = "text2sql"
STYLES = (
    "use explicit JOIN clauses.",
    "prefer nested subqueries.",
    "use GROUP BY and aggregates where they fit.",
    "write the shortest query that answers the question.",
)
REVISION_WEIGHTS = (0.5, 0.3, 0.2)  # probability that a candidate gets 0, 1 or 2 revisions
SLO_SCALE = 3.0
EXEC_SIGMA = 0.7  # lognormal spread of execute_sql durations
EXEC_MAX_S = 3.0


@dataclass(frozen=True)
class Sizes:
    programs: int
    arrival_rate: float
    guideline_words: int  # synthetic instructions heading each stage's prompt
    few_shot: int  # Spider (question, gold SQL) examples shared by every candidate prompt
    link_tokens: int
    sql_tokens: int
    vote_tokens: int
    exec_median_s: float
    exec_result_words: tuple[int, int]
    live_programs: int  # programs whose private KV the pool holds beside the shared prompts


SIZES = {
    "cpu": Sizes(20, 0.3, 60, 3, 16, 24, 8, 0.3, (10, 30), 3),
    "gpu": Sizes(96, 2.0, 800, 24, 96, 128, 16, 0.3, (40, 160), 16),
}


@dataclass(frozen=True)
class Prompts:
    link_head: str  # before the schema
    sql_head: str  # guidelines + few-shot, shared by every candidate and revision
    vote_head: str


def suite_prompts(options: SuiteOptions, sizes: Sizes, examples: list[SpiderQuestion]) -> Prompts:
    seed = f"{NAME}:{options.seed}"
    shots = "\n\n".join(f"Question: {ex.question}\nSQL: {ex.gold_sql}" for ex in examples)
    return Prompts(
        link_head="Find the tables and columns needed to answer the question.\n"
        + synthetic_text(sizes.guideline_words, f"{seed}:link"),
        sql_head="Write one SQLite query that answers the question.\n"
        + synthetic_text(sizes.guideline_words, f"{seed}:sql")
        + f"\n\nExamples:\n{literal(shots)}\n\n",
        vote_head="Pick the candidate query whose result answers the question.\n"
        + synthetic_text(sizes.guideline_words // 2, f"{seed}:vote")
        + "\n\n",
    )


def sql_workflow(
    index: int,
    item: SpiderQuestion,
    schema: SpiderSchema,
    prompts: Prompts,
    revisions: list[int],
    exec_plan: list[tuple[float, int]],
    sizes: Sizes,
) -> Workflow:
    """``exec_plan``: (seconds, result words) of each execute_sql call, candidates in order, rounds within each."""
    link = Template(
        f"{prompts.link_head}\n\nDatabase {schema.db_id}:\n{literal(schema.text)}\n\n"
        "Question: {{question}}\nRelevant tables and columns:"
    )
    nodes: list[Node] = [LLMCall("link", link, "linked", constraints=forced_length(sizes.link_tokens))]
    executions = iter(exec_plan)
    finals, results = [], []
    for k, (style, rounds) in enumerate(zip(STYLES, revisions, strict=True)):
        text = f"{prompts.sql_head}Relevant schema:{{{{linked}}}}\nQuestion: {{{{question}}}}\nApproach: {style}\nSQL:"
        for r in range(rounds + 1):
            node_id = f"candidate_{k}" if r == 0 else f"revise_{k}_{r}"
            sql, result = f"sql_{k}_{r}", f"result_{k}_{r}"
            nodes.append(LLMCall(node_id, Template(text), sql, constraints=forced_length(sizes.sql_tokens)))
            seconds, words = next(executions)
            nodes.append(
                ToolCall(f"exec_{k}_{r}", "execute_sql", result, args=sim_tool_args(seconds, words, var_ref(sql)))
            )
            # A revision continues the candidate's conversation: same prompt, then its SQL and the execution result.
            text += f"{{{{{sql}}}}}\nExecution result:{{{{{result}}}}}\nThe result looks wrong. Revised SQL:"
        finals.append(sql)
        results.append(result)
    vote = Template(
        f"{prompts.vote_head}Question: {{{{question}}}}\nCandidate queries:\n{{{{finals}}}}\n"
        "Their results:\n{{results}}\nThe best candidate is number:"
    )
    bindings: dict[str, str | list[str]] = {"finals": finals, "results": results}
    nodes.append(LLMCall("vote", vote, "answer", bindings=bindings, constraints=forced_length(sizes.vote_tokens)))
    return Workflow.build(nodes, inputs={"question": item.question}, outputs=["answer"], name=f"{NAME}-{index:03d}")


def build(options: SuiteOptions) -> Suite:
    sizes = SIZES[options.profile]
    count = pick(options.programs, sizes.programs)
    rate = pick(options.arrival_rate, sizes.arrival_rate)
    data_dir = resolve_data_dir(options)
    questions, schemas = load_questions(data_dir), load_schemas(data_dir)
    pick_rng, plan_rng = rng_for(NAME, options, "questions"), rng_for(NAME, options, "plan")
    order = pick_rng.sample(range(len(questions)), len(questions))
    examples = [questions[i] for i in order[: sizes.few_shot]]
    pool = order[sizes.few_shot :]  # questions of the programs: never one of the few-shot examples
    chosen = [questions[pool[i % len(pool)]] for i in range(count)]
    prompts = suite_prompts(options, sizes, examples)
    arrivals = arrival_times(count, rate, rng_for(NAME, options, "arrivals"))
    costs, estimator = PROFILE_COSTS[options.profile], SizeEstimator()
    programs, revision_counts, exec_seconds = [], [], []
    for index, (arrival, item) in enumerate(zip(arrivals, chosen, strict=True)):
        revisions = plan_rng.choices(range(len(REVISION_WEIGHTS)), REVISION_WEIGHTS, k=len(STYLES))
        exec_plan = [
            (
                round(min(EXEC_MAX_S, plan_rng.lognormvariate(math.log(sizes.exec_median_s), EXEC_SIGMA)), 3),
                plan_rng.randint(*sizes.exec_result_words),
            )
            for _ in range(sum(revisions) + len(STYLES))
        ]
        workflow = sql_workflow(index, item, schemas[item.db_id], prompts, revisions, exec_plan, sizes)
        deadline = round(SLO_SCALE * estimator.unloaded_seconds(workflow, costs), 3)
        programs.append(SuiteProgram(arrival, workflow, deadline_s=deadline, tag=item.db_id))
        revision_counts.extend(revisions)
        exec_seconds.extend(seconds for seconds, _ in exec_plan)

    # KV sizing: the candidate and vote instructions are shared by every program; the rest (schema linking over the
    # database's schema, candidates' private tails, revisions, vote) is counted per program by the prefix trie.
    shared = estimator.tokens(prompts.sql_head + "Relevant schema:") + estimator.tokens(
        prompts.vote_head + "Question: "
    )
    private = [estimator.distinct_kv_tokens([program.workflow]) - shared for program in programs]
    largest = max(estimator.footprint_tokens(p.workflow, node) for p in programs for node in p.workflow.llm_calls())
    kv_slots = max(shared + sizes.live_programs * max(private), 2 * largest)
    databases = sorted({item.db_id for item in chosen})
    parameters = {
        "profile": options.profile,
        "programs": count,
        "arrival_rate": rate,
        "seed": options.seed,
        "data_dir": str(data_dir),
        "data": "text2sql/spider_dev (dev.json questions, tables.json schemas)",
        "databases": databases,
        "few_shot_examples": sizes.few_shot,
        "guideline_words": sizes.guideline_words,
        "candidates": len(STYLES),
        "revision_weights": list(REVISION_WEIGHTS),
        "revisions_per_candidate": summary(revision_counts, 2),
        "output_tokens": {"link": sizes.link_tokens, "sql": sizes.sql_tokens, "vote": sizes.vote_tokens},
        "execute_sql_seconds": {
            "median": sizes.exec_median_s,
            "sigma": EXEC_SIGMA,
            "max": EXEC_MAX_S,
            **{f"sampled_{k}": v for k, v in summary(exec_seconds).items()},
        },
        "slo_scale": SLO_SCALE,
        "deadline_s": summary([p.deadline_s or 0.0 for p in programs]),
        "kv_slots_arithmetic": {
            "shared_prompt_tokens_est": shared,
            "program_private_tokens_max": max(private),
            "live_programs": sizes.live_programs,
            "largest_call_tokens": largest,
            "formula": "max(shared_prompt_tokens + live_programs * program_private_tokens_max, "
            "2 * largest_call_tokens)",
            "kv_slots": kv_slots,
        },
    }
    parameters["totals"] = totals(programs, options.profile, kv_slots, estimator)
    return Suite(
        name=NAME,
        description=(
            f"{count} Spider dev questions ({len(databases)} databases) arriving at {rate}/s: schema linking over the "
            f"real schema -> {len(STYLES)} parallel SQL candidates sharing a prefix ({sizes.few_shot} Spider few-shot "
            "examples) -> simulated execute_sql each -> 0-2 revisions per candidate -> a vote. Deadline per program = "
            f"{SLO_SCALE}x its estimated unloaded time. KV pool = {kv_slots} tokens: shared instructions plus "
            f"{sizes.live_programs} programs' private KV. Questions and schemas from Spider 1.0 (CC BY-SA 4.0)."
        ),
        programs=programs,
        tools=make_sim_tools(["execute_sql"]),
        kv_slots=kv_slots,
        parameters=parameters,
    )
