"""Splicing generated ids into later prompts: a prompt that embeds an earlier call's output carries the ids that call
generated, so the prefix cache matches the KV computed while generating them (``PlanConfig.splice_outputs``)."""

from __future__ import annotations

import asyncio

import pytest

from plait.dag import LLMCall, Workflow
from plait.engine import GenerateRequest, InvalidRequestError
from plait.engine.tokenizer import ByteTokenizer
from plait.runtime import Executor
from plait.runtime.llm_runner import build_request
from plait.runtime.output_splicing import generation_of, prompt_pieces, spliceable_slots
from plait.runtime.planning import PlanConfig
from plait.runtime.request_options import RequestOptions
from plait.semantic_vars import ChatPrompt, GenConstraints, Generation, Template
from tests.conftest import tiny_core
from tests.runtime.conftest import wait_kv_free

# Random weights emit special tokens the text skips (such ids are never spliced); a grammar keeps the output to text.
GREEDY = GenConstraints(max_tokens=16, temperature=0.0, regex="[a-z]{16}")
HEAD = "You are an agent. Question: how many? Thought 1:"


def _two_turns(constraints: GenConstraints) -> Workflow:
    second = Template(HEAD + "{{thought_1}}\nObservation 1: 42\nThought 2:")
    nodes = [
        LLMCall("think_1", Template(HEAD), "thought_1", constraints=constraints),
        LLMCall("think_2", second, "thought_2", constraints=constraints),
    ]
    return Workflow.build(nodes, inputs={}, outputs=["thought_2"], name="two-turns")


def _run(engine, plan: PlanConfig, constraints: GenConstraints = GREEDY) -> tuple[Workflow, dict]:
    async def main():
        workflow = _two_turns(constraints)
        executor = Executor(engine, plan=plan)
        program = executor.start(workflow)
        await program.wait()
        await wait_kv_free(engine)
        await engine.flush_prefix_cache()
        records = {node_id: record for node_id, record in program.nodes.items()}
        stats = executor.planner.stats()
        assert (stats["spliced_calls"], stats["spliced_tokens"]) == (
            (1, records["think_2"].spliced_tokens) if records["think_2"].spliced_tokens else (0, 0)
        )
        return workflow, records

    return asyncio.run(main())


def test_a_prompt_that_embeds_an_earlier_output_matches_its_generated_kv(tiny_engine):
    spliced_workflow, spliced = _run(tiny_engine, PlanConfig())
    thought = spliced_workflow.variables["thought_1"]
    assert thought.generation is not None and len(thought.generation.token_ids) == 16
    assert thought.generation.prompt == [HEAD]
    assert tiny_engine.tokenizer.decode(thought.generation.token_ids) == thought.value
    first_prompt = spliced["think_1"].prompt_tokens
    # Everything the first call computed is reused: its prompt and its output but the last token (never fed back).
    assert spliced["think_2"].cached_tokens == first_prompt + 15
    suffix = tiny_engine.tokenizer.encode("\nObservation 1: 42\nThought 2:", add_special_tokens=False)
    assert spliced["think_2"].prompt_tokens == first_prompt + 16 + len(suffix)
    assert (spliced["think_1"].spliced_tokens, spliced["think_2"].spliced_tokens) == (0, 16)

    # Off: the output goes back as text, and is tokenized again (bytes: the same ids, so the same reuse).
    text_workflow, text = _run(tiny_engine, PlanConfig(splice_outputs=False))
    assert text_workflow.variables["thought_1"].generation is None
    rendered = HEAD + text_workflow.variables["thought_1"].value + "\nObservation 1: 42\nThought 2:"
    assert text["think_2"].prompt_tokens == len(tiny_engine.tokenizer.encode(rendered))
    assert text["think_2"].spliced_tokens == 0


def test_with_a_merging_tokenizer_only_splicing_reuses_the_output(shared_data):
    """Llama-3's BPE merges the repeated output token on re-tokenizing: the text's ids miss the generated KV."""
    from plait.engine import Engine, EngineConfig

    tokenizer = shared_data / "tokenizers" / "ggml-vocab-llama-bpe.gguf"
    engine = Engine(
        EngineConfig(model="llama-3.1-8b", weights="dummy", tokenizer=str(tokenizer), simulate="h200", kv_slots=4096)
    )
    forced = GenConstraints(max_tokens=16, ignore_eos=True, temperature=0.0)  # the simulator emits "x" every step
    try:
        _, spliced = _run(engine, PlanConfig(), forced)
        _, text = _run(engine, PlanConfig(splice_outputs=False), forced)
    finally:
        engine.close()
    first_prompt = spliced["think_1"].prompt_tokens
    assert spliced["think_2"].cached_tokens == first_prompt + 15
    assert text["think_2"].cached_tokens <= first_prompt  # the match ends where the generated text begins
    assert text["think_2"].prompt_tokens < spliced["think_2"].prompt_tokens  # "xxxx..." re-tokenized is shorter


def test_the_baseline_splices_too():
    """Splicing is not a planning feature: a request-level engine on a real model's output matches it as well."""
    assert PlanConfig.baseline().splice_outputs and PlanConfig.only("tool_pins").splice_outputs


def test_pieces_of_a_growing_prompt_start_with_the_previous_prompts_pieces():
    head = "System.\n\nQuestion: {{question}}\n"
    turn_1 = Template(head + "Thought 1:")
    turn_2 = Template(head + "Thought 1:{{thought_1}}\nObservation 1:{{obs_1}}\nThought 2:")
    turn_3 = Template(
        head + "Thought 1:{{thought_1}}\nObservation 1:{{obs_1}}\nThought 2:{{thought_2}}\nObservation 2:{{obs_2}}\n"
    )
    values = {"question": "why?", "thought_1": "a", "obs_1": "sunny", "thought_2": "b", "obs_2": "rain"}
    first = prompt_pieces(turn_1, values, {})
    assert first == ["System.\n\nQuestion: why?\nThought 1:"]  # nothing generated: one text piece
    generated = {"thought_1": Generation(first, [7, 8])}
    second = prompt_pieces(turn_2, values, generated)
    assert second == [*first, [7, 8], "\nObservation 1:sunny\nThought 2:"]
    generated["thought_2"] = Generation(second, [9])
    third = prompt_pieces(turn_3, values, generated)
    assert third == [*second, [9], "\nObservation 2:rain\n"]


def test_a_value_is_spliced_only_where_its_producers_prompt_precedes_it():
    """Elsewhere its ids could match no cached KV, and the prompt keeps the tokenization of its text."""
    generation = Generation(["Draft:"], [1, 2])
    assert prompt_pieces(Template("Draft:{{d}} Revise:"), {"d": "xy"}, {"d": generation}) == [
        "Draft:",
        [1, 2],
        " Revise:",
    ]
    assert prompt_pieces(Template("Review:{{d}}"), {"d": "xy"}, {"d": generation}) == ["Review:xy"]
    # Never at the start: no producer's prompt is empty, so a spliced prompt always begins with text (and BOS).
    assert prompt_pieces(Template("{{d}} ok"), {"d": "xy"}, {"d": Generation([""], [1])}) == ["xy ok"]
    # The earlier slot went as text, so the later one's producer prompt (with ids) is not what precedes it.
    chained = {"a": Generation(["Q:"], [5]), "b": Generation(["Q:", [5], " then"], [6])}
    assert prompt_pieces(Template("Q:{{a}} then{{b}}"), {"a": "x", "b": "y"}, chained) == ["Q:", [5], " then", [6]]
    assert prompt_pieces(Template("R:{{a}} then{{b}}"), {"a": "x", "b": "y"}, chained) == ["R:x theny"]


def test_only_text_slots_bound_to_one_generated_variable_splice():
    generation = Generation(["p"], [5, 6])
    generated = {"g": generation, "h": Generation(["q"], [7])}
    plain = LLMCall("n", Template("{{x}} {{y}} {{z}}"), "out", bindings={"x": "g", "y": ["g", "h"], "z": "other"})
    assert spliceable_slots(plain, generated) == {"x": generation}  # a fan-in renders a list: no single id run
    mapped = LLMCall("m", Template("{{item}} then {{x}}"), "out", bindings={"item": "g", "x": "h"}, map_over="item")
    assert spliceable_slots(mapped, generated) == {"x": generated["h"]}  # one item of the list, not its ids
    # A slot bound to a variable named like the mapped slot is not confused with the item.
    named = LLMCall(
        "k", Template("{{item}} {{other}}"), "out", bindings={"item": "h", "other": "item"}, map_over="item"
    )
    assert spliceable_slots(named, {**generated, "item": generation}) == {}
    chat = LLMCall("c", ChatPrompt.from_dicts([{"role": "user", "content": "{{g}}"}]), "out")
    assert spliceable_slots(chat, generated) == {}  # the chat template re-renders messages
    assert spliceable_slots(plain, {}) == {}


def test_a_generation_keeps_the_ids_that_decode_to_the_value():
    tokenizer = ByteTokenizer()
    ids = tokenizer.encode("hello", add_special_tokens=False)
    prompt = ["Say:"]
    assert generation_of(tokenizer, prompt, "hello", ids) == Generation(prompt, ids)
    # A stop trims the tail: an end-of-sequence token the text skips, a stop string cut from the text.
    assert generation_of(tokenizer, prompt, "hello", [*ids, 257]) == Generation(prompt, ids)
    assert generation_of(tokenizer, prompt, "hell", ids) == Generation(prompt, ids[:4])
    assert generation_of(tokenizer, prompt, "help", ids) is None  # no run of the ids decodes to it
    assert generation_of(tokenizer, prompt, "hello", [257, *ids]) is None  # a special token inside
    assert generation_of(tokenizer, prompt, {"a": 1}, ids) is None  # a JSON output decoded to an object
    assert generation_of(tokenizer, None, "hello", ids) is None  # a chat prompt
    assert generation_of(tokenizer, prompt, "", []) is None


def test_build_request_sends_pieces_only_when_something_is_spliced():
    node = LLMCall("n", Template("Q: {{g}} A:"), "out")
    options = RequestOptions("prog-test")
    spliced = build_request(node, {"g": "hi"}, options, generated={"g": Generation(["Q: "], [104, 105])})
    assert spliced.prompt is None and spliced.prompt_pieces == ["Q: ", [104, 105], " A:"]
    plain = build_request(node, {"g": "hi"}, options)
    assert plain.prompt == "Q: hi A:" and plain.prompt_pieces is None


def test_the_engine_assembles_pieces_with_special_tokens_only_at_the_start():
    core = tiny_core()
    core.tokenizer = ByteTokenizer(core.model_config.vocab_size, add_bos=True)
    ids = core.prompt_ids(GenerateRequest(prompt_pieces=["ab", [1, 2], "c"]))
    assert ids == [256, 97, 98, 1, 2, 99]  # BOS once, before the first text
    assert core.prompt_ids(GenerateRequest(prompt_pieces=[[5], "c"])) == [5, 99]  # ids first: given as they are


@pytest.mark.parametrize(
    ("request_fields", "field", "fragment"),
    [
        ({"prompt_pieces": []}, "prompt_pieces", "not all empty"),
        ({"prompt_pieces": ["", []]}, "prompt_pieces", "not all empty"),
        ({"prompt_pieces": ["a", []]}, "prompt_pieces[1]", "an empty list"),
        ({"prompt_pieces": ["a", 3.5]}, "prompt_pieces[1]", "non-empty list of token ids"),
        ({"prompt_pieces": ["a", [10**9]]}, "prompt_pieces[1]", "outside the vocabulary"),
        ({"prompt_pieces": [[True]]}, "prompt_pieces[0]", "outside the vocabulary"),
        ({"prompt_pieces": ["a"], "prompt": "a"}, "prompt", "exactly one of"),
    ],
)
def test_bad_pieces_are_named(request_fields, field, fragment):
    core = tiny_core()
    with pytest.raises(InvalidRequestError) as raised:
        core.prompt_ids(GenerateRequest(**request_fields))
    assert raised.value.field == field and fragment in str(raised.value)
