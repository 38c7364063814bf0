"""``starvation``: one huge program among a steady stream of small ones; every program must finish.

The huge program is a long chain of LLM calls over a long context (each step's prompt is the context plus every
earlier step's output). It arrives in the middle of the small programs' arrivals, so a policy that favours programs
by arrival order delays the small ones behind it, and one that favours programs with little attained service can
starve it. Small programs are one or two short calls. Tags: "huge" and "small"; the benchmark reports the longest
wait of each. The KV pool holds the huge program's whole context plus a batch of small programs (no overflow by
design: this suite is about ordering, not eviction).
"""

from __future__ import annotations

from dataclasses import dataclass

from plait.bench.workflow_suites.common import arrival_times, forced_length, pick, rng_for, totals
from plait.bench.workflow_suites.estimates import SizeEstimator
from plait.bench.workflow_suites.suite import Suite, SuiteOptions, SuiteProgram
from plait.bench.workflow_suites.synthetic_text import synthetic_text
from plait.dag import LLMCall, Workflow
from plait.semantic_vars import Template

NAME = "starvation"


@dataclass(frozen=True)
class Sizes:
    programs: int  # all of them: one huge, the rest small
    arrival_rate: float  # of the small programs
    huge_steps: int
    huge_context_words: int
    huge_step_tokens: int
    small_system_words: int
    small_question_words: tuple[int, int]
    small_tokens: int
    small_follow_up: float  # probability a small program makes a second call
    live_small: int  # small programs the KV pool holds beside the huge context


SIZES = {
    "cpu": Sizes(41, 1.0, 32, 1000, 24, 60, (30, 80), 16, 0.5, 8),
    "gpu": Sizes(321, 6.0, 40, 8000, 96, 500, (200, 600), 64, 0.5, 64),
}


def huge_workflow(context: str, sizes: Sizes) -> Workflow:
    """A chain: step ``k`` sees the context and the notes of steps ``1..k-1`` (its prompt extends step ``k-1``'s)."""
    head = f"You are working through a long analysis one step at a time.\n{context}\n\n"
    history = ""
    nodes = []
    for step in range(1, sizes.huge_steps + 1):
        prompt = Template(f"{head}{history}Step {step}:")
        nodes.append(LLMCall(f"step_{step}", prompt, f"note_{step}", constraints=forced_length(sizes.huge_step_tokens)))
        history += f"Step {step}:{{{{note_{step}}}}}\n"
    return Workflow.build(nodes, outputs=[f"note_{sizes.huge_steps}"], name=f"{NAME}-huge")


def small_workflow(index: int, system: str, question: str, follow_up: bool, sizes: Sizes) -> Workflow:
    first = f"{system}\n\nQuestion: {{{{question}}}}\nAnswer:"
    nodes = [LLMCall("answer", Template(first), "answer", constraints=forced_length(sizes.small_tokens))]
    if follow_up:
        second = Template(first + "{{answer}}\nCheck the answer and improve it:")
        nodes.append(LLMCall("improve", second, "improved", constraints=forced_length(sizes.small_tokens)))
    output = "improved" if follow_up else "answer"
    return Workflow.build(nodes, inputs={"question": question}, outputs=[output], name=f"{NAME}-small-{index:03d}")


def build(options: SuiteOptions) -> Suite:
    sizes = SIZES[options.profile]
    count = pick(options.programs, sizes.programs)
    rate = pick(options.arrival_rate, sizes.arrival_rate)
    seed = f"{NAME}:{options.seed}"
    text_rng = rng_for(NAME, options, "text")
    small_count = count - 1
    small_arrivals = arrival_times(small_count, rate, rng_for(NAME, options, "arrivals"))
    system = "Answer the question briefly.\n" + synthetic_text(sizes.small_system_words, f"{seed}:system")
    smalls = []
    for index, arrival in enumerate(small_arrivals):
        question = synthetic_text(text_rng.randint(*sizes.small_question_words), f"{seed}:question:{index}")
        follow_up = text_rng.random() < sizes.small_follow_up
        smalls.append(SuiteProgram(arrival, small_workflow(index, system, question, follow_up, sizes), tag="small"))
    # The huge program arrives with the middle small program (or at t=0 when there is none).
    middle = small_count // 2
    huge_arrival = small_arrivals[middle] if small_arrivals else 0.0
    huge_context = synthetic_text(sizes.huge_context_words, f"{seed}:huge")
    huge = SuiteProgram(huge_arrival, huge_workflow(huge_context, sizes), tag="huge")
    programs = [*smalls[:middle], huge, *smalls[middle:]]

    estimator = SizeEstimator()
    huge_tokens = estimator.footprint_tokens(huge.workflow, huge.workflow.nodes[f"step_{sizes.huge_steps}"])
    small_tokens = max(
        (estimator.distinct_kv_tokens([program.workflow]) for program in smalls),
        default=0,
    )
    kv_slots = huge_tokens + sizes.live_small * small_tokens
    parameters = {
        "profile": options.profile,
        "programs": count,
        "small_programs": small_count,
        "arrival_rate": rate,
        "seed": options.seed,
        "huge": {
            "steps": sizes.huge_steps,
            "context_words": sizes.huge_context_words,
            "step_tokens": sizes.huge_step_tokens,
            "arrival_s": huge_arrival,
            "arrives_after_small_programs": middle,
        },
        "small": {
            "system_words": sizes.small_system_words,
            "question_words_range": list(sizes.small_question_words),
            "tokens_per_call": sizes.small_tokens,
            "follow_up_probability": sizes.small_follow_up,
            "with_follow_up": sum(len(p.workflow.nodes) == 2 for p in smalls),
        },
        "kv_slots_arithmetic": {
            "huge_context_tokens_est": huge_tokens,
            "small_program_tokens_max": small_tokens,
            "live_small": sizes.live_small,
            "formula": "huge_context_tokens + live_small * small_program_tokens_max (fits by design)",
            "kv_slots": kv_slots,
        },
    }
    parameters["totals"] = totals(programs, options.profile, kv_slots, estimator)
    return Suite(
        name=NAME,
        description=(
            f"One huge program (a chain of {sizes.huge_steps} calls over a {sizes.huge_context_words}-word context, "
            f"{sizes.huge_step_tokens} tokens each, every step's prompt extending the last) arriving at "
            f"{huge_arrival:.1f} s, in the middle of {small_count} small programs (1-2 short calls) arriving at "
            f"{rate}/s. Tags 'huge'/'small': every program must finish; the report gives each group's longest wait. "
            f"KV pool = {kv_slots} tokens: the huge context plus {sizes.live_small} small programs (fits by design). "
            "Text is synthetic."
        ),
        programs=programs,
        tools=[],
        kv_slots=kv_slots,
        parameters=parameters,
    )
