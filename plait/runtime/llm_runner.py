"""Runs one LLM node on the engine: render the prompt, submit, stream the text into the output variable, decode.

The engine sees plain data only: rendered prompts (or chat messages), sampling settings, ``program_id``, priority.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Coroutine
from typing import Any

from plait.dag import ChoiceMode, LLMCall
from plait.engine import Engine, GenerateRequest, SamplingParams
from plait.runtime.errors import NodeError
from plait.runtime.planning.call_dedup import CallDeduplicator
from plait.runtime.request_options import RequestOptions
from plait.runtime.states import NodeRecord
from plait.semantic_vars import GenConstraints, SemanticVariable


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


def build_request(node: LLMCall, values: dict[str, Any], options: RequestOptions, n: int = 1) -> GenerateRequest:
    rendered = node.prompt.render(values)
    prompt_fields: dict[str, Any] = {"messages": rendered} if node.is_chat else {"prompt": rendered}
    return GenerateRequest(
        **prompt_fields,
        sampling=sampling_params(node.constraints, n),
        priority=options.priority,
        program_id=options.program_id,
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
) -> Any:
    """The value to bind to ``node``'s output: a string (or decoded JSON), a list for ``n > 1`` or a mapped call.

    With ``dedup``, a deterministic call identical to one another program is running (or ran) shares its result."""
    if node.map_over is None:
        return await _run_one(engine, node, values, output, record, options, stream=True, dedup=dedup)
    items = values[node.slot_binding(node.map_over)]  # type: ignore[index]
    if not isinstance(items, list):
        raise NodeError(
            node.id, "upstream", f"map_over slot {node.map_over!r} must hold a list, got {type(items).__name__}"
        )
    per_item = [{**values, node.map_over: item} for item in items]
    return await _all_or_none(
        [_run_one(engine, node, v, output, record, options, stream=False, dedup=dedup) for v in per_item]
    )


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
) -> Any:
    slot_values = {slot: _slot_value(node, slot, values) for slot in node.prompt.slots}
    if node.constraints.choices is not None and node.choice_mode is ChoiceMode.SCORE:
        return await _score_choices(engine, node, slot_values, output, record, options)
    request = build_request(node, slot_values, options, n=node.n)
    record.request_ids.append(request.request_id)
    texts: dict[int, list[str]] = {index: [] for index in range(node.n)}
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
    return outputs[0] if node.n == 1 else outputs


def _slot_value(node: LLMCall, slot: str, values: dict[str, Any]) -> Any:
    if node.map_over == slot and slot in values:
        return values[slot]
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
) -> str:
    """Pick the choice with the highest mean token log-probability given the prompt; keep every score."""
    choices = list(node.constraints.choices or [])
    request = build_request(node, values, options)
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
