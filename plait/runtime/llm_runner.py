"""Runs one LLM node on the engine: render the prompt, submit, stream the text into the output variable, decode.

The engine sees plain data only: rendered prompts (or chat messages), sampling settings, ``program_id``, priority.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Coroutine, Mapping
from typing import Any

from plait.dag import ChoiceMode, LLMCall
from plait.engine import Engine, GenerateRequest, SamplingParams
from plait.runtime.errors import NodeError
from plait.runtime.output_splicing import (
    generation_of,
    prompt_pieces,
    request_pieces,
    spliceable_slots,
    spliced_token_count,
)
from plait.runtime.planning.call_dedup import CallDeduplicator
from plait.runtime.request_options import RequestOptions
from plait.runtime.states import NodeRecord
from plait.semantic_vars import GenConstraints, Generation, SemanticVariable

_NO_ITEM = object()  # _run_one of an unmapped call


def sampling_params(constraints: GenConstraints, n: int = 1) -> SamplingParams:
    """The engine's sampling settings for a call (output constraints passed on only when set)."""
    extra = {name: getattr(constraints, name) for name in constraints.output_constraints()}
    return SamplingParams(
        max_tokens=constraints.max_tokens,
        temperature=constraints.temperature,
        top_p=constraints.top_p,
        top_k=constraints.top_k,
        min_p=constraints.min_p,
        seed=constraints.seed,
        stop=list(constraints.stop),
        ignore_eos=constraints.ignore_eos,
        n=n,
        **extra,
    )


def build_request(
    node: LLMCall,
    values: dict[str, Any],
    options: RequestOptions,
    n: int = 1,
    generated: Mapping[str, Generation] | None = None,
) -> GenerateRequest:
    """The engine request of one call. ``generated``: slot -> the generation of its value (``spliceable_slots``); a
    text prompt that continues a producer's prompt with its value goes as pieces with the generated ids spliced in."""
    prompt_fields: dict[str, Any]
    if node.is_chat:
        prompt_fields = {"messages": node.prompt.render(values)}
    else:
        pieces = prompt_pieces(node.prompt, values, generated or {})  # type: ignore[arg-type]
        prompt_fields = {"prompt": pieces[0]} if len(pieces) == 1 else {"prompt_pieces": pieces}
    return GenerateRequest(
        **prompt_fields,
        sampling=sampling_params(node.constraints, n),
        priority=options.priority,
        program_id=options.program_id,
        call_id=node.id,
        hints=dict(options.hints),
    )


async def run_llm_call(
    engine: Engine,
    node: LLMCall,
    values: dict[str, Any],
    output: SemanticVariable,
    record: NodeRecord,
    options: RequestOptions,
    dedup: CallDeduplicator | None = None,
    generated: Mapping[str, Generation] | None = None,
) -> Any:
    """The value to bind to ``node``'s output: a string (or decoded JSON), a list for ``n > 1`` or a mapped call.

    With ``dedup``, a deterministic call identical to one another program is running (or ran) shares its result.
    ``generated``: variable name -> how an LLM call generated its value (``output_splicing``). With it, a prompt that
    continues such a call's prompt carries its generated ids, and the output's own generation is recorded
    (``output.generation``) for the calls after it."""
    spliced = spliceable_slots(node, generated or {})
    if node.map_over is None:
        value, token_ids, request = await _run_one(
            engine, node, values, output, record, options, stream=True, dedup=dedup, generated=spliced
        )
        if generated is not None and node.n == 1 and request is not None:
            output.generation = generation_of(engine.tokenizer, request_pieces(request), value, token_ids)
        return value
    items = values[node.slot_binding(node.map_over)]  # type: ignore[index]
    if not isinstance(items, list):
        raise NodeError(
            node.id, "upstream", f"map_over slot {node.map_over!r} must hold a list, got {type(items).__name__}"
        )
    results = await _all_or_none(
        [
            _run_one(
                engine, node, values, output, record, options, stream=False, dedup=dedup, generated=spliced, item=i
            )
            for i in items
        ]
    )
    return [value for value, _, _ in results]


async def _all_or_none(coroutines: list[Coroutine[Any, Any, Any]]) -> list[Any]:
    """Every result in order; on the first failure the other calls are cancelled (their engine requests aborted)
    and awaited before the error propagates, so no request outlives its node."""
    tasks = [asyncio.ensure_future(coroutine) for coroutine in coroutines]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def _run_one(
    engine: Engine,
    node: LLMCall,
    values: dict[str, Any],
    output: SemanticVariable,
    record: NodeRecord,
    options: RequestOptions,
    *,
    stream: bool,
    dedup: CallDeduplicator | None = None,
    generated: Mapping[str, Generation] | None = None,
    item: Any = _NO_ITEM,
) -> tuple[Any, list[int], GenerateRequest | None]:
    """One engine request (for one ``item`` of a mapped call): its value, the first sample's generated ids, and the
    request (None for a scored choice, which generates nothing)."""
    slot_values = {slot: _slot_value(node, slot, values, item) for slot in node.prompt.slots}
    if node.constraints.choices is not None and node.choice_mode is ChoiceMode.SCORE:
        return await _score_choices(engine, node, slot_values, output, record, options, generated), [], None
    request = build_request(node, slot_values, options, n=node.n, generated=generated)
    record.request_ids.append(request.request_id)
    record.spliced_tokens += spliced_token_count(request)
    texts: dict[int, list[str]] = {index: [] for index in range(node.n)}
    first_ids: list[int] = []
    reasons: dict[int, str | None] = {}
    started = time.monotonic()
    source, shared = dedup.generate(engine, request) if dedup is not None else (engine.generate(request), False)
    record.deduplicated = record.deduplicated or shared
    try:
        async with contextlib.aclosing(source) as deltas:  # type: ignore[type-var]
            async for delta in deltas:
                if record.queued_s is None and delta.queued_s is not None:
                    record.queued_s = 0.0 if shared else delta.queued_s
                if record.first_token_at is None and delta.token_ids:
                    record.first_token_at = time.monotonic()
                texts[delta.index].append(delta.text)
                if delta.index == 0:
                    first_ids += delta.token_ids
                if stream and node.n == 1:
                    output.publish(delta.text)
                if delta.finish_reason is not None:
                    reasons[delta.index] = delta.finish_reason
                    record.completion_tokens += delta.completion_tokens
                    if delta.finish_reason == "error":
                        raise NodeError(node.id, "engine", delta.error or "the engine failed the request")
                    if delta.finish_reason == "abort":
                        raise NodeError(node.id, "engine", "the engine aborted the request")
                record.prompt_tokens = max(record.prompt_tokens, delta.prompt_tokens)
                record.cached_tokens = max(record.cached_tokens, delta.cached_tokens)
    finally:
        record.engine_s += time.monotonic() - started
    outputs = [_decode(node, "".join(texts[i]), reasons.get(i)) for i in range(node.n)]
    output.metadata.setdefault("finish_reasons", []).extend(reasons.get(i) for i in range(node.n))
    return (outputs[0] if node.n == 1 else outputs), first_ids, request


def _slot_value(node: LLMCall, slot: str, values: dict[str, Any], item: Any = _NO_ITEM) -> Any:
    if node.map_over == slot and item is not _NO_ITEM:
        return item
    bound = node.slot_binding(slot)
    return [values[name] for name in bound] if isinstance(bound, list) else values[bound]


def _decode(node: LLMCall, text: str, finish_reason: str | None) -> Any:
    constraints = node.constraints
    if constraints.parses_json:
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            hint = " (cut off by max_tokens: raise it)" if finish_reason == "length" else ""
            raise NodeError(node.id, "output", f"the output is not valid JSON{hint}: {error}") from None
    if constraints.choices is not None and text not in constraints.choices:
        raise NodeError(node.id, "output", f"the output {text!r} is not one of the choices")
    return text


async def _score_choices(
    engine: Engine,
    node: LLMCall,
    values: dict[str, Any],
    output: SemanticVariable,
    record: NodeRecord,
    options: RequestOptions,
    generated: Mapping[str, Generation] | None = None,
) -> str:
    """Pick the choice with the highest mean token log-probability given the prompt; keep every score."""
    choices = list(node.constraints.choices or [])
    request = build_request(node, values, options, generated=generated)
    request.sampling = SamplingParams(max_tokens=1, temperature=0.0)
    record.request_ids.append(request.request_id)
    started = time.monotonic()
    try:
        scores = await engine.score_choices(request, choices)
    finally:
        record.engine_s += time.monotonic() - started
    output.metadata["scores"] = {score.text: score.mean_logprob for score in scores}
    output.metadata["logprobs"] = {score.text: score.logprob for score in scores}
    best = max(scores, key=lambda score: score.mean_logprob)
    return best.text
