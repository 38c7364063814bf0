"""``map-reduce``: summarise long documents: one map call per chunk, then a reduce call over all map outputs.

Every map call (of every document) starts with the same fixed instruction, so that instruction is a prefix shared by
all of them, and a document's map calls are a fan-out whose shared prefix should be computed once before its
branches run. The reduce call binds one slot to the list of the document's map outputs (a fan-in). The KV pool holds
the instruction plus a couple of documents in flight, fewer than arrive while others are still running.
"""

from __future__ import annotations

from dataclasses import dataclass

from plait.bench.workflow_suites.common import arrival_times, forced_length, pick, rng_for, summary, totals
from plait.bench.workflow_suites.estimates import SizeEstimator
from plait.bench.workflow_suites.suite import Suite, SuiteOptions, SuiteProgram
from plait.bench.workflow_suites.synthetic_text import synthetic_text
from plait.dag import LLMCall, Workflow
from plait.semantic_vars import Template

NAME = "map-reduce"


@dataclass(frozen=True)
class Sizes:
    programs: int
    arrival_rate: float
    chunks: tuple[int, int]  # K per document
    chunk_words: tuple[int, int]
    instruction_words: int  # the fixed map instruction (shared prefix)
    map_tokens: int
    reduce_tokens: int
    live_documents: int  # documents whose KV the pool holds beside the instructions


SIZES = {
    "cpu": Sizes(10, 0.15, (6, 8), (150, 250), 120, 24, 32, 2),
    "gpu": Sizes(48, 1.5, (8, 12), (800, 1200), 1000, 128, 256, 8),
}


def instructions(options: SuiteOptions, sizes: Sizes) -> tuple[Template, Template]:
    """The map template (one ``{{chunk}}`` slot after the fixed instruction) and the reduce template."""
    seed = f"{NAME}:{options.seed}"
    map_text = (
        "Summarise the following section of a long document in a few sentences.\n"
        + synthetic_text(sizes.instruction_words, f"{seed}:map")
        + "\n\nSection:\n{{chunk}}\n\nSummary of the section:"
    )
    reduce_text = (
        "Combine the section summaries below into one summary of the whole document.\n"
        + synthetic_text(sizes.instruction_words // 2, f"{seed}:reduce")
        + "\n\nSection summaries:\n{{summaries}}\n\nSummary of the document:"
    )
    return Template(map_text), Template(reduce_text)


def document_workflow(index: int, chunks: list[str], map_prompt: Template, reduce_prompt: Template, sizes: Sizes):
    """K map calls, each binding ``{{chunk}}`` to its own input, and one reduce call over all their outputs."""
    inputs = {f"chunk_{k}": text for k, text in enumerate(chunks)}
    nodes = [
        LLMCall(
            f"map_{k}",
            map_prompt,
            f"summary_{k}",
            bindings={"chunk": f"chunk_{k}"},
            constraints=forced_length(sizes.map_tokens),
        )
        for k in range(len(chunks))
    ]
    summaries: list[str] = [f"summary_{k}" for k in range(len(chunks))]
    nodes.append(
        LLMCall(
            "reduce",
            reduce_prompt,
            "summary",
            bindings={"summaries": summaries},
            constraints=forced_length(sizes.reduce_tokens),
        )
    )
    return Workflow.build(nodes, inputs=inputs, outputs=["summary"], name=f"{NAME}-{index:03d}")


def build(options: SuiteOptions) -> Suite:
    sizes = SIZES[options.profile]
    count = pick(options.programs, sizes.programs)
    rate = pick(options.arrival_rate, sizes.arrival_rate)
    map_prompt, reduce_prompt = instructions(options, sizes)
    doc_rng = rng_for(NAME, options, "documents")
    arrivals = arrival_times(count, rate, rng_for(NAME, options, "arrivals"))
    programs, chunk_counts, words = [], [], []
    for index, arrival in enumerate(arrivals):
        k = doc_rng.randint(*sizes.chunks)
        lengths = [doc_rng.randint(*sizes.chunk_words) for _ in range(k)]
        chunks = [synthetic_text(n, f"{NAME}:{options.seed}:doc:{index}:{c}") for c, n in enumerate(lengths)]
        workflow = document_workflow(index, chunks, map_prompt, reduce_prompt, sizes)
        programs.append(SuiteProgram(arrival, workflow, tag=f"chunks-{k}"))
        chunk_counts.append(k)
        words.extend(lengths)

    estimator = SizeEstimator()
    shared = estimator.tokens(map_prompt.static_prefix) + estimator.tokens(reduce_prompt.static_prefix)
    private = [estimator.distinct_kv_tokens([program.workflow]) - shared for program in programs]
    largest = max(estimator.footprint_tokens(p.workflow, node) for p in programs for node in p.workflow.llm_calls())
    kv_slots = max(shared + sizes.live_documents * max(private), 2 * largest)
    parameters = {
        "profile": options.profile,
        "programs": count,
        "arrival_rate": rate,
        "seed": options.seed,
        "chunks_range": list(sizes.chunks),
        "chunks": summary(chunk_counts, 2),
        "chunk_words_range": list(sizes.chunk_words),
        "chunk_words": summary(words, 1),
        "instruction_words": sizes.instruction_words,
        "output_tokens": {"map": sizes.map_tokens, "reduce": sizes.reduce_tokens},
        "kv_slots_arithmetic": {
            "shared_instruction_tokens_est": shared,
            "document_private_tokens_max": max(private),
            "live_documents": sizes.live_documents,
            "largest_call_tokens": largest,
            "formula": "max(shared_instruction_tokens + live_documents * document_private_tokens_max, "
            "2 * largest_call_tokens)",
            "kv_slots": kv_slots,
        },
    }
    parameters["totals"] = totals(programs, options.profile, kv_slots, estimator)
    return Suite(
        name=NAME,
        description=(
            f"{count} documents arriving at {rate}/s, each split into {sizes.chunks[0]}-{sizes.chunks[1]} chunks of "
            f"{sizes.chunk_words[0]}-{sizes.chunk_words[1]} words: a map call per chunk (all share a fixed "
            f"{sizes.instruction_words}-word instruction prefix), then a reduce call whose slot binds the list of map "
            f"outputs. KV pool = {kv_slots} tokens: the instructions plus {sizes.live_documents} documents in flight. "
            "Text is synthetic (deterministic, seeded)."
        ),
        programs=programs,
        tools=[],
        kv_slots=kv_slots,
        parameters=parameters,
    )
