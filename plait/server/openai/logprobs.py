"""The engine's ``TokenLogprob``s in OpenAI's two shapes: chat (``logprobs.content[]``) and legacy completions
(parallel ``tokens`` / ``token_logprobs`` / ``top_logprobs`` / ``text_offset`` lists).

A token's text is its own decoding; a token that is part of a multi-byte character decodes to U+FFFD on its own, as
in OpenAI's responses, and ``bytes`` then holds the replacement character's bytes.
"""

from __future__ import annotations

import functools
import math
from typing import Any

from plait.engine import TokenLogprob
from plait.server.openai.responses import ChatLogprobs, ChatTokenLogprob, CompletionLogprobs, TopLogprob

_FLOOR = -9999.0  # JSON has no -inf: a token the model gives zero probability (possible under a grammar) reads this


class TokenTexts:
    """Token id -> text, cached per id (decoding one token at a time is the hot path of logprobs)."""

    def __init__(self, tokenizer: Any) -> None:
        self._decode = functools.lru_cache(maxsize=65536)(lambda token_id: tokenizer.decode([token_id]))

    def __call__(self, token_id: int) -> str:
        return str(self._decode(token_id))


def _finite(value: float) -> float:
    return value if math.isfinite(value) else _FLOOR


def chat_logprobs(items: list[TokenLogprob], texts: TokenTexts) -> ChatLogprobs:
    content = []
    for item in items:
        token = texts(item.token_id)
        top = [
            TopLogprob(token=texts(tid), logprob=_finite(lp), bytes=list(texts(tid).encode("utf-8")))
            for tid, lp in item.top
        ]
        content.append(
            ChatTokenLogprob(
                token=token, logprob=_finite(item.logprob), bytes=list(token.encode("utf-8")), top_logprobs=top
            )
        )
    return ChatLogprobs(content=content)


def completion_logprobs(items: list[TokenLogprob], texts: TokenTexts, offset: int = 0) -> CompletionLogprobs:
    """``offset``: the character offset of the first token in the choice's text (``text_offset`` counts from it)."""
    result = CompletionLogprobs()
    for item in items:
        token = texts(item.token_id)
        result.tokens.append(token)
        result.token_logprobs.append(_finite(item.logprob))
        result.top_logprobs.append({texts(tid): _finite(lp) for tid, lp in item.top})
        result.text_offset.append(offset)
        offset += len(token)
    return result
