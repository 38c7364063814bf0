"""``text2sql``: multi-stage text-to-SQL over Spider dev questions, with per-program deadlines and Poisson arrivals.

Per question: schema linking (prompt = full schema of its database + question) -> 4 SQL candidates in parallel
(prompt = shared instructions and few-shot examples + linked schema + question; they differ only in a final
"approach" line) -> ``execute_sql`` per candidate -> 0-2 revisions per candidate (decided up front, since workflows are
static: each continues the candidate's own prompt with the SQL and its result, then executes again) -> a vote over
the final candidates (fan-in). Each program has a deadline of ``SLO_SCALE`` times its estimated unloaded time.

The SQL runs for real: each question's database is built in SQLite from its Spider schema (``spider_db``). A
candidate's rounds are forced to broken variants of the gold query (``sql_variants``: SQLite refuses them, and the
revision that follows reads SQLite's own error), its last round to the gold query or to a variant that runs with
another result; the vote is forced to the candidate whose result most candidates share. ``Suite.check`` confirms
every program ran exactly those queries with those outcomes, and reports how often the vote picked the gold result.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from plait.bench.workflow_suites.common import (
    arrival_times,
    forced_length,
    forced_text,
    literal,
    pick,
    resolve_data_dir,
    rng_for,
    summary,
    totals,
)
from plait.bench.workflow_suites.estimates import PROFILE_COSTS, SizeEstimator
from plait.bench.workflow_suites.spider_data import (
    SpiderQuestion,
    SpiderSchema,
    load_questions,
    load_schemas,
    load_table_entries,
)
from plait.bench.workflow_suites.spider_db import SpiderDatabases
from plait.bench.workflow_suites.sql_executor import TOOL_NAME, PlannedQuery, SqlProgram, SqlWorld, outcome_text
from plait.bench.workflow_suites.sql_variants import broken_variant, result_key, wrong_variant
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
GOLD_SHARE = 0.6  # probability that a candidate's last round is the gold query (else a wrong variant, when one runs)
ROWS_PER_TABLE = 5
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
    exec_median_s: float
    live_programs: int  # programs whose private KV the pool holds beside the shared prompts


SIZES = {
    "cpu": Sizes(20, 0.3, 60, 3, 16, 0.3, 3),
    "gpu": Sizes(96, 2.0, 800, 24, 96, 0.3, 16),
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


@dataclass(frozen=True)
class Execution:
    """One execute_sql call of a program's plan: the forced SQL, the latency, what it returns."""

    sql: str
    seconds: float
    error: str | None
    rows: list | None

    @property
    def result_words(self) -> int:
        return len(outcome_text(self.error, self.rows).split())


def sql_workflow(
    index: int,
    item: SpiderQuestion,
    schema: SpiderSchema,
    prompts: Prompts,
    rounds: list[list[Execution]],
    winner: int,
    sizes: Sizes,
) -> Workflow:
    """``rounds[k]``: candidate ``k``'s executions, first round first; ``winner``: the candidate the vote names."""
    name = f"{NAME}-{index:03d}"
    link = Template(
        f"{prompts.link_head}\n\nDatabase {schema.db_id}:\n{literal(schema.text)}\n\n"
        "Question: {{question}}\nRelevant tables and columns:"
    )
    nodes: list[Node] = [LLMCall("link", link, "linked", constraints=forced_length(sizes.link_tokens))]
    finals, results = [], []
    for k, (style, executions) in enumerate(zip(STYLES, rounds, strict=True)):
        text = f"{prompts.sql_head}Relevant schema:{{{{linked}}}}\nQuestion: {{{{question}}}}\nApproach: {style}\nSQL:"
        for r, execution in enumerate(executions):
            node_id = f"candidate_{k}" if r == 0 else f"revise_{k}_{r}"
            sql, result = f"sql_{k}_{r}", f"result_{k}_{r}"
            nodes.append(LLMCall(node_id, Template(text), sql, constraints=forced_text(" " + execution.sql)))
            args = {
                "program": name,
                "call": f"{k}/{r}",
                "sql": var_ref(sql),
                "seconds": execution.seconds,
                "result_words": execution.result_words,
            }
            nodes.append(ToolCall(f"exec_{k}_{r}", TOOL_NAME, result, args=args))
            # A revision continues the candidate's conversation: same prompt, then its SQL and the execution result.
            text += f"{{{{{sql}}}}}\nExecution result: {{{{{result}}}}}\nThe query failed. Revised SQL:"
        finals.append(sql)
        results.append(result)
    vote = Template(
        f"{prompts.vote_head}Question: {{{{question}}}}\nCandidate queries:\n{{{{finals}}}}\n"
        "Their results:\n{{results}}\nThe best candidate is number:"
    )
    bindings: dict[str, str | list[str]] = {"finals": finals, "results": results}
    nodes.append(LLMCall("vote", vote, "answer", bindings=bindings, constraints=forced_text(f" {winner + 1}")))
    return Workflow.build(nodes, inputs={"question": item.question}, outputs=["answer"], name=name)


def plan_candidates(
    item: SpiderQuestion, entry: dict, world: SqlWorld, revisions: list[int], sizes: Sizes, rng: random.Random
) -> tuple[list[list[Execution]], int, bool]:
    """Each candidate's executions (``revisions[k]`` broken variants, then the gold query or a wrong variant), the
    candidate the vote picks (the first whose result most candidates share) and whether its result is the gold's."""

    def run(sql: str) -> list:
        return world.databases.query(item.db_id, sql)

    gold = run(item.gold_sql)
    tables = list(entry["table_names_original"])
    columns = [name for table, name in entry["column_names_original"] if table >= 0]

    def latency() -> float:
        return round(min(EXEC_MAX_S, rng.lognormvariate(math.log(sizes.exec_median_s), EXEC_SIGMA)), 3)

    rounds = []
    for count in revisions:
        executions = []
        for _ in range(count):
            text, error = broken_variant(item.gold_sql, tables, columns, run, rng)
            executions.append(Execution(text, latency(), error, None))
        wrong = wrong_variant(item.gold_sql, gold, run, rng) if rng.random() >= GOLD_SHARE else None
        text, rows = wrong if wrong is not None else (item.gold_sql, gold)
        executions.append(Execution(text, latency(), None, rows))
        rounds.append(executions)
    keys = [repr(result_key(executions[-1].rows or [])) for executions in rounds]
    winner = max(range(len(keys)), key=lambda k: (keys.count(keys[k]), -k))
    return rounds, winner, result_key(rounds[winner][-1].rows or []) == result_key(gold)


def build(options: SuiteOptions) -> Suite:
    sizes = SIZES[options.profile]
    count = pick(options.programs, sizes.programs)
    rate = pick(options.arrival_rate, sizes.arrival_rate)
    data_dir = resolve_data_dir(options)
    questions, schemas = load_questions(data_dir), load_schemas(data_dir)
    entries = load_table_entries(data_dir)
    pick_rng, plan_rng = rng_for(NAME, options, "questions"), rng_for(NAME, options, "plan")
    order = pick_rng.sample(range(len(questions)), len(questions))
    examples = [questions[i] for i in order[: sizes.few_shot]]
    pool = order[sizes.few_shot :]  # questions of the programs: never one of the few-shot examples
    chosen = [questions[pool[i % len(pool)]] for i in range(count)]
    prompts = suite_prompts(options, sizes, examples)
    arrivals = arrival_times(count, rate, rng_for(NAME, options, "arrivals"))
    costs, estimator = PROFILE_COSTS[options.profile], SizeEstimator()
    world = SqlWorld(SpiderDatabases(entries, ROWS_PER_TABLE))
    programs, revision_counts, exec_seconds, correct = [], [], [], 0
    for index, (arrival, item) in enumerate(zip(arrivals, chosen, strict=True)):
        revisions = plan_rng.choices(range(len(REVISION_WEIGHTS)), REVISION_WEIGHTS, k=len(STYLES))
        rounds, winner, voted_correct = plan_candidates(item, entries[item.db_id], world, revisions, sizes, plan_rng)
        workflow = sql_workflow(index, item, schemas[item.db_id], prompts, rounds, winner, sizes)
        world.programs[workflow.name] = SqlProgram(
            item.db_id,
            {
                f"{k}/{r}": PlannedQuery(" " + e.sql, e.error, None if e.rows is None else result_key(e.rows))
                for k, executions in enumerate(rounds)
                for r, e in enumerate(executions)
            },
            voted_correct,
        )
        deadline = round(SLO_SCALE * estimator.unloaded_seconds(workflow, costs), 3)
        programs.append(SuiteProgram(arrival, workflow, deadline_s=deadline, tag=item.db_id))
        revision_counts.extend(revisions)
        exec_seconds.extend(e.seconds for executions in rounds for e in executions)
        correct += voted_correct

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
        "output_tokens": {"link": sizes.link_tokens, "sql": "forced to the planned query", "vote": "forced"},
        "gold_share": GOLD_SHARE,
        "rows_per_table": ROWS_PER_TABLE,
        "planned_execution_accuracy": round(correct / count, 3),
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
            "examples) -> execute_sql each on a SQLite build of the database -> 0-2 revisions per candidate after "
            "real SQLite errors -> a vote over real results. Deadline per program = "
            f"{SLO_SCALE}x its estimated unloaded time. KV pool = {kv_slots} tokens: shared instructions plus "
            f"{sizes.live_programs} programs' private KV. Questions and schemas from Spider 1.0 (CC BY-SA 4.0)."
        ),
        programs=programs,
        tools=[world.tool()],
        kv_slots=kv_slots,
        parameters=parameters,
        check=world.check,
    )
