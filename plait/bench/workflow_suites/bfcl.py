"""``bfcl``: the Berkeley Function Calling Leaderboard's multi-turn tasks as agent programs, with real tools.

Each task is one program. Its system prompt lists the functions of the task's tool classes (BFCL's own schemas; the
cpu profile lists each as a one-line signature so the small model's context holds it). Every user turn is an
LLM-tool loop: a call that writes the turn's function calls, the execution of those calls on the task's own
instances of BFCL's tool classes (``bfcl_tools``: parsed, never ``eval``-ed), and a call that answers the user from
the results. Each prompt repeats the previous one and appends the turn, so a program's KV is worth keeping across
its tool calls, and programs with the same tool classes share the function list (up to the first function a task
leaves out).

The call-writing outputs are forced to the turn's ground-truth calls (a grammar that admits exactly that text), so
token counts and tool results are the real ones whatever the weights; answers have a fixed length. Tool latency is a
draw from the tau-bench agent traces' inter-call gaps. After a run, ``Suite.check`` confirms with BFCL's state and
response checkers that every program executed exactly its ground truth.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from plait.bench.workflow_suites.agent_traces import MAX_GAP_S, trace_gaps
from plait.bench.workflow_suites.bfcl_data import BfclTask, function_docs, load_tasks
from plait.bench.workflow_suites.bfcl_tools import TOOL_NAME, BfclWorld, new_instances, run_text
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
from plait.bench.workflow_suites.estimates import TOOL_TOKENS_PER_WORD, SizeEstimator, approx_tokens
from plait.bench.workflow_suites.suite import Suite, SuiteOptions, SuiteProgram
from plait.dag import LLMCall, Node, ToolCall, Workflow, var_ref
from plait.semantic_vars import Template

NAME = "bfcl"
CATEGORY = "base"
TRACE_SOURCE = "taubench"  # API-style tools: the tau-bench agent's lookups
INSTRUCTIONS = (
    "You carry out the user's requests by calling the functions listed below. When a request needs functions, "
    "reply with the calls as a Python list, for example [f(a=1), g(b='x')], and nothing else; reply [] when the "
    "functions cannot serve it. When the results come back, answer the user in a sentence.\n\nFunctions:\n"
)


@dataclass(frozen=True)
class Sizes:
    programs: int
    arrival_rate: float
    full_docs: bool  # BFCL's JSON schemas; else one-line signatures
    answer_tokens: int
    tool_time_scale: float
    live_contexts: int  # program contexts the KV pool holds at once


SIZES = {
    "cpu": Sizes(8, 0.1, False, 12, 1.0, 2),
    "gpu": Sizes(96, 2.0, True, 48, 1.0, 8),
}


def _signature(doc: dict[str, Any]) -> str:
    properties = doc.get("parameters", {}).get("properties", {})
    params = ", ".join(f"{name}: {spec.get('type', 'any')}" for name, spec in properties.items())
    description = doc.get("description", "").rsplit("Tool description:", 1)[-1].strip()
    return f"{doc['name']}({params}): {description.split('. ')[0].rstrip('.')}"


def function_list(task: BfclTask, full_docs: bool) -> str:
    """The prompt's list of the task's functions (its excluded functions left out), one per line."""
    docs = [doc for cls in task.classes for doc in function_docs(cls) if doc["name"] not in task.excluded_functions]
    return "\n".join(json.dumps(doc) if full_docs else _signature(doc) for doc in docs)


def call_text(calls: tuple[str, ...]) -> str:
    return "[" + ", ".join(calls) + "]"


def bfcl_workflow(key: str, task: BfclTask, seconds: list[float], sizes: Sizes, result_words: list[int]) -> Workflow:
    """One task's program: per turn, write the calls (forced to the ground truth), run them, answer."""
    head = literal(INSTRUCTIONS + function_list(task, sizes.full_docs)) + "\n\n"
    history = ""
    nodes: list[Node] = []
    for turn, (user, calls) in enumerate(zip(task.turns, task.ground_truth, strict=True)):
        history += f"User: {literal(user)}\nAssistant:"
        constraints = forced_text(call_text(calls))
        nodes.append(LLMCall(f"calls_{turn}", Template(head + history), f"calls_{turn}", constraints=constraints))
        args = {
            "program": key,
            "turn": turn,
            "calls": var_ref(f"calls_{turn}"),
            "seconds": seconds[turn],
            "result_words": result_words[turn],
        }
        nodes.append(ToolCall(f"run_{turn}", TOOL_NAME, f"results_{turn}", args=args))
        history += f"{{{{calls_{turn}}}}}\nResults: {{{{results_{turn}}}}}\nAssistant:"
        answer = LLMCall(
            f"answer_{turn}", Template(head + history), f"answer_{turn}", constraints=forced_length(sizes.answer_tokens)
        )
        nodes.append(answer)
        history += f"{{{{answer_{turn}}}}}\n"
    last = f"answer_{len(task.turns) - 1}"
    return Workflow.build(nodes, outputs=[last], name=key)


def _result_words(task: BfclTask) -> list[int]:
    """Each turn's tool results when its ground truth runs, in the estimator's words (``result_words`` is how the
    suites' size estimates read a tool's output)."""
    instances = new_instances(task)
    texts = [json.dumps(run_text(call_text(calls), instances)) for calls in task.ground_truth]
    return [max(1, math.ceil(approx_tokens(text) / TOOL_TOKENS_PER_WORD)) for text in texts]


def build(options: SuiteOptions) -> Suite:
    sizes = SIZES[options.profile]
    count = pick(options.programs, sizes.programs)
    rate = pick(options.arrival_rate, sizes.arrival_rate)
    data_dir = resolve_data_dir(options)
    gaps = trace_gaps(data_dir, TRACE_SOURCE)
    tasks = load_tasks(CATEGORY)
    plan_rng, tool_rng = rng_for(NAME, options, "plan"), rng_for(NAME, options, "tools")
    order = plan_rng.sample(range(len(tasks)), len(tasks))
    chosen = [tasks[order[i % len(tasks)]] for i in range(count)]
    arrivals = arrival_times(count, rate, rng_for(NAME, options, "arrivals"))
    programs, by_key, sampled = [], {}, []
    for index, (task, arrival) in enumerate(zip(chosen, arrivals, strict=True)):
        key = f"{NAME}-{index:03d}-{task.task_id}"
        seconds = [round(tool_rng.choice(gaps) * sizes.tool_time_scale, 3) for _ in task.turns]
        sampled += seconds
        workflow = bfcl_workflow(key, task, seconds, sizes, _result_words(task))
        programs.append(SuiteProgram(arrival, workflow, tag=f"turns-{len(task.turns)}"))
        by_key[key] = task
    world = BfclWorld(by_key)

    estimator = SizeEstimator()
    contexts = [estimator.footprint_tokens(p.workflow, p.workflow.nodes[p.workflow.outputs[0]]) for p in programs]
    kv_slots = max(sizes.live_contexts, 2) * max(contexts)
    parameters: dict[str, Any] = {
        "profile": options.profile,
        "programs": count,
        "arrival_rate": rate,
        "seed": options.seed,
        "data_dir": str(data_dir),
        "category": f"BFCL_v4_multi_turn_{CATEGORY}",
        "tasks": [task.task_id for task in chosen],
        "function_docs": "BFCL JSON schemas" if sizes.full_docs else "one-line signatures",
        "turns": summary([len(task.turns) for task in chosen], 2),
        "ground_truth_calls_per_turn": summary([len(c) for task in chosen for c in task.ground_truth], 2),
        "answer_tokens": sizes.answer_tokens,
        "tool_time_scale": sizes.tool_time_scale,
        "trace_gaps_s": {**summary(gaps), "clip_s": MAX_GAP_S, "source": f"traces/lmcache_agent/{TRACE_SOURCE}"},
        "sampled_tool_seconds": summary(sampled),
        "kv_slots_arithmetic": {
            "program_context_tokens_max": max(contexts),
            "live_contexts": sizes.live_contexts,
            "formula": "max(live_contexts, 2) * program_context_tokens_max",
            "kv_slots": kv_slots,
        },
    }
    parameters["totals"] = totals(programs, options.profile, kv_slots, estimator)
    return Suite(
        name=NAME,
        description=(
            f"{count} BFCL multi-turn tasks ({CATEGORY}) arriving at {rate}/s, each one program: per user turn a call "
            "writing the turn's function calls (forced to the ground truth), their execution on the task's own "
            "instances of BFCL's tool classes, and an answer; the prompt lists the task's functions "
            f"({parameters['function_docs']}) and grows by each turn. Tool latency: tau-bench trace gaps. KV pool = "
            f"{kv_slots} tokens ({sizes.live_contexts} program contexts). After the run BFCL's state and response "
            "checkers compare every program with its ground truth."
        ),
        programs=programs,
        tools=[world.tool()],
        kv_slots=kv_slots,
        parameters=parameters,
        check=lambda: world.check().to_dict(),
    )
