"""``multi-agent``: a software team of six agents with large fixed prompts, many teams working at once.

Each program is one task passed along a known order of agents: planner -> architect -> coder -> (reviewer in parallel
with run_code -> tester) -> integrator. Every call's prompt is its agent's fixed prompt, then the task, then the
outputs of the agents before it, so an agent's prompt is a prefix shared by every program, and the order in which
prefixes are needed next is known from the graphs (what next-use eviction and prefetch exploit). The KV pool holds
only ~60% of the agents' prompts plus a few running contexts, so the prompts cannot all stay resident.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from plait.bench.workflow_suites.common import arrival_times, forced_length, pick, rng_for, totals
from plait.bench.workflow_suites.estimates import SizeEstimator
from plait.bench.workflow_suites.sim_tools import make_sim_tools, sim_tool_args
from plait.bench.workflow_suites.suite import Suite, SuiteOptions, SuiteProgram
from plait.bench.workflow_suites.synthetic_text import synthetic_text
from plait.dag import LLMCall, Node, ToolCall, Workflow, var_ref
from plait.semantic_vars import Template

NAME = "multi-agent"
AGENT_PROMPT_FRACTION = 0.6  # of the sum of the agents' prompts that the KV pool is sized to hold


@dataclass(frozen=True)
class Agent:
    """One role: what it does, which variables it reads (label, variable) after the task, and what it produces."""

    role: str
    duty: str
    reads: tuple[tuple[str, str], ...]
    output: str


AGENTS: tuple[Agent, ...] = (
    Agent("planner", "Break the task into a short numbered plan.", (), "plan"),
    Agent("architect", "Design the modules and interfaces that carry out the plan.", (("Plan", "plan"),), "design"),
    Agent("coder", "Write the code for the design.", (("Plan", "plan"), ("Design", "design")), "code"),
    Agent("reviewer", "Review the code against the design.", (("Design", "design"), ("Code", "code")), "review"),
    Agent("tester", "Judge the test run and list failures.", (("Code", "code"), ("Test run", "run_log")), "tests"),
    Agent(
        "integrator",
        "Merge the review and test findings into a final change.",
        (("Plan", "plan"), ("Code", "code"), ("Review", "review"), ("Tests", "tests")),
        "final",
    ),
)


@dataclass(frozen=True)
class Sizes:
    programs: int
    arrival_rate: float
    agent_words: tuple[int, int]  # fixed prompt length per agent, drawn once per suite
    task_words: tuple[int, int]
    output_tokens: dict[str, int]  # per role
    run_seconds_median: float  # run_code duration: lognormal around this median
    run_output_words: int
    running_contexts: int  # private contexts (task + outputs) the KV pool holds beside the agents' prompts


SIZES = {
    "cpu": Sizes(
        programs=24,
        arrival_rate=8.0,
        agent_words=(600, 900),
        task_words=(40, 80),
        output_tokens={"planner": 16, "architect": 16, "coder": 24, "reviewer": 16, "tester": 16, "integrator": 16},
        run_seconds_median=0.8,
        run_output_words=30,
        running_contexts=4,
    ),
    # Teams arrive over ~16 s (not at once): they are at different agents at any time, so the six prompts compete
    # for the pool, and more teams are active than the pool can hold contexts for (queueing is real).
    "gpu": Sizes(
        programs=64,
        arrival_rate=4.0,
        agent_words=(3000, 4000),
        task_words=(300, 600),
        output_tokens={"planner": 96, "architect": 96, "coder": 128, "reviewer": 64, "tester": 64, "integrator": 96},
        run_seconds_median=1.5,
        run_output_words=200,
        running_contexts=8,
    ),
}
RUN_SECONDS_SIGMA = 0.5
RUN_SECONDS_MAX = 6.0


def agent_templates(options: SuiteOptions, sizes: Sizes) -> dict[str, Template]:
    """Each agent's prompt: fixed text (seeded per role), then the task and the outputs it reads."""
    templates = {}
    for agent in AGENTS:
        words = rng_for(NAME, options, f"agent:{agent.role}").randint(*sizes.agent_words)
        body = synthetic_text(words, f"{NAME}:{options.seed}:agent:{agent.role}")
        reads = "".join(f"{label}:\n{{{{{variable}}}}}\n\n" for label, variable in agent.reads)
        text = (
            f"You are the {agent.role} agent of a software team. {agent.duty}\n\n{body}\n\n"
            f"Task:\n{{{{task}}}}\n\n{reads}{agent.role.capitalize()} response:"
        )
        templates[agent.role] = Template(text)
    return templates


def team_workflow(index: int, task: str, run_seconds: float, templates: dict[str, Template], sizes: Sizes) -> Workflow:
    nodes: list[Node] = [
        LLMCall(
            agent.role, templates[agent.role], agent.output, constraints=forced_length(sizes.output_tokens[agent.role])
        )
        for agent in AGENTS
    ]
    nodes.append(
        ToolCall(
            "run_tests", "run_code", "run_log", args=sim_tool_args(run_seconds, sizes.run_output_words, var_ref("code"))
        )
    )
    return Workflow.build(nodes, inputs={"task": task}, outputs=["final"], name=f"{NAME}-{index:03d}")


def build(options: SuiteOptions) -> Suite:
    sizes = SIZES[options.profile]
    count = pick(options.programs, sizes.programs)
    rate = pick(options.arrival_rate, sizes.arrival_rate)
    templates = agent_templates(options, sizes)
    task_rng, tool_rng = rng_for(NAME, options, "tasks"), rng_for(NAME, options, "tools")
    arrivals = arrival_times(count, rate, rng_for(NAME, options, "arrivals"))
    programs = []
    for index, arrival in enumerate(arrivals):
        task = synthetic_text(task_rng.randint(*sizes.task_words), f"{NAME}:{options.seed}:task:{index}")
        run_seconds = min(
            RUN_SECONDS_MAX, tool_rng.lognormvariate(math.log(sizes.run_seconds_median), RUN_SECONDS_SIGMA)
        )
        workflow = team_workflow(index, task, run_seconds, templates, sizes)
        programs.append(SuiteProgram(arrival, workflow, tag="team"))

    # KV sizing: the agents' fixed prompts are shared by every program; the rest of each call (task, upstream outputs,
    # its own output) is private to its program.
    estimator = SizeEstimator()
    agent_tokens = {role: estimator.tokens(template.static_prefix) for role, template in templates.items()}
    footprints = [
        (node.id, estimator.footprint_tokens(p.workflow, node)) for p in programs for node in p.workflow.llm_calls()
    ]
    private = [tokens - agent_tokens[role] for role, tokens in footprints]
    largest = max(tokens for _, tokens in footprints)
    prompts_total = sum(agent_tokens.values())
    formula_slots = math.ceil(AGENT_PROMPT_FRACTION * prompts_total) + sizes.running_contexts * max(private)
    kv_slots = max(formula_slots, 2 * largest)  # never below two of the largest calls: the engine must run
    parameters = {
        "profile": options.profile,
        "programs": count,
        "arrival_rate": rate,
        "seed": options.seed,
        "agents": [agent.role for agent in AGENTS],
        "order": "planner -> architect -> coder -> (reviewer || run_code -> tester) -> integrator",
        "agent_words_range": list(sizes.agent_words),
        "task_words_range": list(sizes.task_words),
        "output_tokens": sizes.output_tokens,
        "run_code_seconds": {"median": sizes.run_seconds_median, "sigma": RUN_SECONDS_SIGMA, "max": RUN_SECONDS_MAX},
        "kv_slots_arithmetic": {
            "agent_prompt_tokens_est": agent_tokens,
            "sum_agent_prompt_tokens": prompts_total,
            "agent_prompt_fraction": AGENT_PROMPT_FRACTION,
            "running_contexts": sizes.running_contexts,
            "private_tokens_per_call_max": max(private),
            "largest_call_tokens": largest,
            "formula": "max(ceil(agent_prompt_fraction * sum_agent_prompt_tokens) + running_contexts * "
            "private_tokens_per_call_max, 2 * largest_call_tokens)",
            "kv_slots": kv_slots,
        },
    }
    parameters["totals"] = totals(programs, options.profile, kv_slots, estimator)
    return Suite(
        name=NAME,
        description=(
            f"{count} software-team programs ({len(AGENTS)} agents each with a fixed ~{sizes.agent_words[0]}-"
            f"{sizes.agent_words[1]}-word synthetic prompt, called in a known order with one parallel pair and a "
            f"run_code tool call), arriving at {rate}/s. Prompts = agent prompt + task + upstream outputs, so agent "
            f"prompts are prefixes shared across programs. KV pool = {kv_slots} tokens: ~{AGENT_PROMPT_FRACTION:.0%} "
            f"of the {prompts_total} tokens of agent prompts plus {sizes.running_contexts} private contexts, so the "
            "working set does not fit. All text is synthetic (deterministic, seeded)."
        ),
        programs=programs,
        tools=make_sim_tools(["run_code"]),
        kv_slots=kv_slots,
        parameters=parameters,
    )
