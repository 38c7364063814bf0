"""Splicing generated ids into later prompts.

A prompt that continues an earlier call's prompt with that call's output (a ReAct history, a revision of a draft)
goes to the engine as pieces: the earlier prompt's pieces, the ids the call generated, then the rest as text. The
prefix cache then matches everything the earlier call computed. Sent as text, the output would be tokenized again,
and may split into other tokens (at the seams for a real model; almost everywhere for the random tokens of dummy
weights), so the cache would miss from there on.

A slot is spliced only where the text before it is exactly the producer's prompt, so the ids can match KV; elsewhere
the value goes as text and the prompt keeps its usual tokenization. A spliced prompt therefore always starts with
text (BOS and all), since no producer's prompt is empty.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from plait.dag import LLMCall
from plait.engine import GenerateRequest, Tokenizer
from plait.semantic_vars import Generation, Template

PromptPieces = list[str | list[int]]
# Tokens a stop (an end-of-sequence token, a stop string's tokens) may add after the value's last token.
_MAX_TRIMMED_TOKENS = 16


def spliceable_slots(node: LLMCall, generated: Mapping[str, Generation]) -> dict[str, Generation]:
    """``node``'s prompt slots bound to one variable whose generation is known (``generated``: variable name ->
    generation). Only text prompts splice: a chat prompt is re-rendered by the chat template."""
    if node.is_chat or not generated:
        return {}
    spliced = {}
    for slot in node.prompt.slots:
        bound = node.slot_binding(slot)
        # A mapped slot renders one item of the list, never the whole value.
        if slot != node.map_over and isinstance(bound, str) and bound != node.map_over and bound in generated:
            spliced[slot] = generated[bound]
    return spliced


def prompt_pieces(template: Template, values: Mapping[str, Any], generated: Mapping[str, Generation]) -> PromptPieces:
    """The rendered prompt as pieces: a slot whose text so far is exactly its producer's prompt carries the generated
    ids; everything else is text, joined into as few pieces as possible. One text piece when nothing is spliced."""
    pieces: PromptPieces = []
    text: list[str] = []
    for slot, part in template.render_parts(values):
        generation = generated.get(slot) if slot is not None else None
        if generation is not None:
            before = [*pieces, "".join(text)] if text else pieces
            if before == generation.prompt:
                pieces = [*before, generation.token_ids]
                text = []
                continue
        text.append(part)
    if text or not pieces:
        pieces.append("".join(text))
    return pieces


def request_pieces(request: GenerateRequest) -> PromptPieces | None:
    """The prompt of a request as pieces (a text prompt is one piece); None for chat messages and bare ids."""
    if request.prompt_pieces is not None:
        return request.prompt_pieces
    return [request.prompt] if isinstance(request.prompt, str) else None


def spliced_token_count(request: GenerateRequest) -> int:
    """Prompt tokens that go as generated ids."""
    return sum(len(piece) for piece in request.prompt_pieces or () if isinstance(piece, list))


def generation_of(
    tokenizer: Tokenizer, prompt: PromptPieces | None, value: Any, token_ids: list[int]
) -> Generation | None:
    """The generation of ``value`` when the longest run of ``token_ids`` that decodes exactly to it is found: all of
    them, or all but the last few a stop added (an end-of-sequence token, a stop string cut from the text). None for
    non-text values (decoded JSON), chat prompts, or ids that never decode to the value (a skipped special token in the
    middle, invalid UTF-8). The trimmed tail's KV is never reused anyway: the last token is never fed back."""
    if prompt is None or not isinstance(value, str) or not value or not token_ids:
        return None
    whole = tokenizer.decode(token_ids)
    if whole == value:
        return Generation(prompt, token_ids)
    if not whole.startswith(value):  # something inside differs: no shorter run can match (one decode, not 16)
        return None
    for end in range(len(token_ids) - 1, max(0, len(token_ids) - _MAX_TRIMMED_TOKENS), -1):
        if tokenizer.decode(token_ids[:end]) == value:
            return Generation(prompt, token_ids[:end])
    return None
