"""``react``: ReAct tool agents, 3-6 turns each, with tool times sampled from real agent traces.

Each turn is an LLM call (a thought naming an action) followed by a tool call; its prompt is the shared system
prompt, the question and the whole history so far (earlier thoughts and observations), so every turn's prompt
extends the previous one and a program's KV is worth keeping across its tool call. A final call answers. Tool
durations are inter-call gaps of the LMCache agent traces (``search`` from tau-bench, ``run_code`` from mini-swe-agent)
times a profile scale. The KV pool holds the system prompt plus a few programs' contexts, fewer than are active.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from plait.bench.workflow_suites.agent_traces import MAX_GAP_S, trace_gaps
from plait.bench.workflow_suites.common import (
    arrival_times,
    forced_length,
    pick,
    resolve_data_dir,
    rng_for,
    summary,
    totals,
)
from plait.bench.workflow_suites.estimates import SizeEstimator
from plait.bench.workflow_suites.sim_tools import make_sim_tools, sim_tool_args
from plait.bench.workflow_suites.suite import Suite, SuiteOptions, SuiteProgram
from plait.bench.workflow_suites.synthetic_text import synthetic_text
from plait.dag import LLMCall, Node, ToolCall, Workflow, var_ref
from plait.semantic_vars import Template

NAME = "react"
# tool name -> (trace source its durations come from, probability a turn uses it)
TOOLS = {"search": ("taubench", 0.6), "run_code": ("miniswe", 0.4)}


@dataclass(frozen=True)
class Sizes:
    programs: int
    arrival_rate: float
    system_words: int
    question_words: tuple[int, int]
    turns: tuple[int, int]
    thought_tokens: int
    answer_tokens: int
    result_words: dict[str, tuple[int, int]]  # per tool
    tool_time_scale: float  # trace gap -> simulated tool seconds
    live_contexts: int  # program contexts the KV pool holds beside the system prompt


SIZES = {
    # The traces' gaps are already short (search p50 ~0.3 s, run_code p50 ~1.1 s, max ~4 s): unscaled, a CPU program
    # spends ~3 s in tools against ~10 s of LLM time, so tools do not stretch the run, and a tool call lasts about as
    # long as a turn's decode (keeping KV across it is a real decision). On GPU, calls are several times faster and
    # tools dominate, as they do for real agents. A scale below 1 is only needed for traces with long gaps.
    "cpu": Sizes(16, 0.25, 400, (30, 60), (3, 6), 24, 32, {"search": (40, 80), "run_code": (20, 60)}, 1.0, 3),
    "gpu": Sizes(96, 4.0, 3000, (200, 400), (3, 6), 96, 128, {"search": (300, 600), "run_code": (150, 450)}, 1.0, 12),
}


def react_workflow(
    index: int, system: str, question: str, tools: list[str], seconds: list[float], rng: random.Random, sizes: Sizes
) -> Workflow:
    """One agent: turn ``t`` thinks (prompt = system + question + history) then calls ``tools[t]``; then answers."""
    head = f"{system}\n\nQuestion: {{{{question}}}}\n"
    history = ""
    nodes: list[Node] = []
    for turn, (tool, tool_seconds) in enumerate(zip(tools, seconds, strict=True), start=1):
        prompt = Template(f"{head}{history}Thought {turn}:")
        nodes.append(
            LLMCall(f"think_{turn}", prompt, f"thought_{turn}", constraints=forced_length(sizes.thought_tokens))
        )
        words = rng.randint(*sizes.result_words[tool])
        args = sim_tool_args(tool_seconds, words, var_ref(f"thought_{turn}"))
        nodes.append(ToolCall(f"act_{turn}", tool, f"obs_{turn}", args=args))
        # The next prompt repeats this one verbatim, then this turn's thought and observation: a growing prefix.
        history += f"Thought {turn}:{{{{thought_{turn}}}}}\nObservation {turn} ({tool}):{{{{obs_{turn}}}}}\n"
    final = Template(f"{head}{history}Final answer:")
    nodes.append(LLMCall("answer", final, "answer", constraints=forced_length(sizes.answer_tokens)))
    return Workflow.build(nodes, inputs={"question": question}, outputs=["answer"], name=f"{NAME}-{index:03d}")


def build(options: SuiteOptions) -> Suite:
    sizes = SIZES[options.profile]
    count = pick(options.programs, sizes.programs)
    rate = pick(options.arrival_rate, sizes.arrival_rate)
    data_dir = resolve_data_dir(options)
    gaps = {tool: trace_gaps(data_dir, source) for tool, (source, _) in TOOLS.items()}
    system = "You are a helpful agent that thinks step by step and uses tools.\n" + synthetic_text(
        sizes.system_words, f"{NAME}:{options.seed}:system"
    )
    plan_rng, tool_rng, text_rng = (rng_for(NAME, options, purpose) for purpose in ("plan", "tools", "text"))
    arrivals = arrival_times(count, rate, rng_for(NAME, options, "arrivals"))
    programs, sampled, turn_counts = [], {tool: [] for tool in TOOLS}, []
    names, weights = list(TOOLS), [probability for _, probability in TOOLS.values()]
    for index, arrival in enumerate(arrivals):
        turns = plan_rng.randint(*sizes.turns)
        tools = plan_rng.choices(names, weights, k=turns)
        seconds = [round(tool_rng.choice(gaps[tool]) * sizes.tool_time_scale, 3) for tool in tools]
        for tool, value in zip(tools, seconds, strict=True):
            sampled[tool].append(value)
        question = synthetic_text(text_rng.randint(*sizes.question_words), f"{NAME}:{options.seed}:question:{index}")
        workflow = react_workflow(index, system, question, tools, seconds, text_rng, sizes)
        programs.append(SuiteProgram(arrival, workflow, tag=f"turns-{turns}"))
        turn_counts.append(turns)

    estimator = SizeEstimator()
    system_tokens = estimator.tokens(system)
    contexts = [
        estimator.footprint_tokens(program.workflow, program.workflow.nodes["answer"]) - system_tokens
        for program in programs
    ]
    largest = max(contexts) + system_tokens
    kv_slots = max(system_tokens + sizes.live_contexts * max(contexts), 2 * largest)
    parameters = {
        "profile": options.profile,
        "programs": count,
        "arrival_rate": rate,
        "seed": options.seed,
        "data_dir": str(data_dir),
        "system_words": sizes.system_words,
        "question_words_range": list(sizes.question_words),
        "turns_range": list(sizes.turns),
        "turns": summary(turn_counts, 2),
        "thought_tokens": sizes.thought_tokens,
        "answer_tokens": sizes.answer_tokens,
        "tools": {tool: {"trace": source, "probability": p} for tool, (source, p) in TOOLS.items()},
        "trace_gaps_s": {
            tool: {**summary(values), "clip_s": MAX_GAP_S, "source": f"traces/lmcache_agent/{TOOLS[tool][0]}"}
            for tool, values in gaps.items()
        },
        "tool_time_scale": sizes.tool_time_scale,
        "sampled_tool_seconds": {tool: summary(values) for tool, values in sampled.items()},
        "kv_slots_arithmetic": {
            "system_tokens_est": system_tokens,
            "program_context_tokens_max": max(contexts),
            "live_contexts": sizes.live_contexts,
            "formula": "max(system_tokens + live_contexts * program_context_tokens_max, 2 * largest_call_tokens)",
            "kv_slots": kv_slots,
        },
    }
    parameters["totals"] = totals(programs, options.profile, kv_slots, estimator)
    active = math.ceil(rate * parameters["totals"]["unloaded_program_seconds_est"]["mean"]) if rate else count
    parameters["kv_slots_arithmetic"]["active_programs_est"] = min(count, active)
    return Suite(
        name=NAME,
        description=(
            f"{count} ReAct agents arriving at {rate}/s: {sizes.turns[0]}-{sizes.turns[1]} turns of thought + tool "
            f"call, then an answer; each prompt = shared {sizes.system_words}-word system prompt + question + the "
            "whole history, so it extends the previous turn's. Tool times are inter-call gaps of the LMCache agent "
            f"traces (search: tau-bench, run_code: mini-swe-agent), clipped at {MAX_GAP_S:.0f} s and scaled by "
            f"{sizes.tool_time_scale}. KV pool = {kv_slots} tokens: the system prompt plus {sizes.live_contexts} "
            "program contexts, fewer than the programs active at once. Text is synthetic."
        ),
        programs=programs,
        tools=make_sim_tools(list(TOOLS)),
        kv_slots=kv_slots,
        parameters=parameters,
    )
