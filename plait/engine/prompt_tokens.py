"""A request's prompt as token ids: text tokenized, chat messages rendered and tokenized, pieces assembled, or the ids
given, each checked, with errors that name the field."""

from __future__ import annotations

from plait.engine.errors import InvalidRequestError
from plait.engine.request import GenerateRequest
from plait.engine.tokenizer import Tokenizer

PROMPT_FIELDS = ("prompt", "prompt_token_ids", "prompt_pieces", "messages")


def request_prompt_ids(request: GenerateRequest, tokenizer: Tokenizer, vocab_size: int) -> list[int]:
    """The prompt's token ids; ``InvalidRequestError`` unless exactly one prompt field is given and it is valid."""
    given = [name for name in PROMPT_FIELDS if getattr(request, name) is not None]
    if len(given) != 1:
        raise InvalidRequestError("prompt", f"give exactly one of {', '.join(PROMPT_FIELDS)} (got {given})")
    if request.prompt_pieces is not None:
        prompt_ids = _assemble_pieces(request.prompt_pieces, tokenizer, vocab_size)
    elif request.messages is not None:
        text = tokenizer.apply_chat_template(request.messages, add_generation_prompt=True)
        prompt_ids = tokenizer.encode(text)
    elif request.prompt is not None:
        if not isinstance(request.prompt, str) or not request.prompt:
            raise InvalidRequestError("prompt", "must be a non-empty string")
        prompt_ids = tokenizer.encode(request.prompt)
    else:
        prompt_ids = list(request.prompt_token_ids or [])
        if not prompt_ids:
            raise InvalidRequestError("prompt_token_ids", "must be a non-empty list of token ids")
        _check_ids("prompt_token_ids", prompt_ids, vocab_size)
    if not prompt_ids:
        raise InvalidRequestError("prompt", "the prompt is empty")
    return prompt_ids


def _assemble_pieces(pieces: list[str | list[int]], tokenizer: Tokenizer, vocab_size: int) -> list[int]:
    """Texts tokenized one by one (special tokens only for a text first), id lists as given, concatenated."""
    if not isinstance(pieces, list) or not any(pieces):
        raise InvalidRequestError("prompt_pieces", "must be a list of texts and token id lists, not all empty")
    ids: list[int] = []
    for index, piece in enumerate(pieces):
        if isinstance(piece, str):
            ids += tokenizer.encode(piece, add_special_tokens=index == 0)
        elif isinstance(piece, list) and piece:
            _check_ids(f"prompt_pieces[{index}]", piece, vocab_size)
            ids += piece
        else:
            shown = "an empty list" if isinstance(piece, list) else type(piece).__name__
            raise InvalidRequestError(
                f"prompt_pieces[{index}]", f"must be a text or a non-empty list of token ids, got {shown}"
            )
    return ids


def _check_ids(field: str, ids: list[int], vocab_size: int) -> None:
    bad = [t for t in ids if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab_size]
    if bad:
        raise InvalidRequestError(field, f"ids outside the vocabulary [0, {vocab_size}): {bad[:5]}")
