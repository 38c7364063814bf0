"""IncrementalDetokenizer: streaming text must equal decoding all generated ids at once."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plait.engine.detokenizer import IncrementalDetokenizer
from plait.engine.tokenizer import ByteTokenizer, Tokenizer

BYTE_CHARS = ByteTokenizer().token_strings()[:256]  # byte b as a byte-level BPE vocabulary spells it
PROPERTY_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def smol() -> Tokenizer:
    from plait.engine.default_model import default_model_path

    try:
        path = default_model_path()
    except Exception as exc:
        pytest.skip(f"the default model is not installed: {exc}")
    return Tokenizer.from_gguf(path)


@pytest.fixture(scope="module")
def smol_bytes(smol: Tokenizer) -> set[int]:
    """The bytes SmolLM2's vocabulary has a token for (it lacks 0xF1, 0xF2, 0xF5-0xFF and some control bytes)."""
    vocab = smol.backend.get_vocab()
    return {b for b, char in enumerate(BYTE_CHARS) if char in vocab}


@pytest.fixture(scope="module")
def smol_ids(smol: Tokenizer) -> st.SearchStrategy[int]:
    """Ids weighted towards single-byte tokens (which split multi-byte characters) and special tokens."""
    strings = smol.token_strings()
    single_bytes = [i for i, s in enumerate(strings) if len(s) == 1]
    specials = sorted(smol.stop_token_ids | {1})
    return st.one_of(st.sampled_from(single_bytes), st.sampled_from(specials), st.integers(0, smol.vocab_size - 1))


def stream(tokenizer: Tokenizer, ids: Sequence[int], prompt: Sequence[int] | None = None, skip: bool = False) -> str:
    """Feed ``ids`` one at a time; check ``text`` along the way; return everything emitted."""
    detokenizer = IncrementalDetokenizer(tokenizer, list(prompt) if prompt is not None else None, skip)
    pieces = [detokenizer.add(i) for i in ids]
    assert detokenizer.text == "".join(pieces)
    pieces.append(detokenizer.flush())
    assert detokenizer.text == "".join(pieces)
    assert detokenizer.flush() == ""
    return "".join(pieces)


# -- ByteTokenizer: every byte is a token, so characters are split as often as possible -------------------------


@PROPERTY_SETTINGS
@given(
    ids=st.lists(st.integers(0, 259), max_size=40), prompt=st.lists(st.integers(0, 257), max_size=6), skip=st.booleans()
)
def test_byte_ids_stream_like_full_decode(ids: list[int], prompt: list[int], skip: bool) -> None:
    tokenizer = ByteTokenizer(260)
    assert stream(tokenizer, ids, prompt, skip) == tokenizer.decode(ids, skip_special_tokens=skip)


@PROPERTY_SETTINGS
@given(text=st.text(max_size=40))
def test_byte_text_streams_without_partial_characters(text: str) -> None:
    tokenizer = ByteTokenizer()
    detokenizer = IncrementalDetokenizer(tokenizer)
    pieces = [detokenizer.add(i) for i in tokenizer.encode(text, add_special_tokens=False)]
    assert "".join(pieces) + detokenizer.flush() == tokenizer.decode(tokenizer.encode(text)) == text
    if "\ufffd" not in text:
        assert all("\ufffd" not in piece for piece in pieces)


def test_emoji_is_held_back_until_complete() -> None:
    tokenizer = ByteTokenizer()
    detokenizer = IncrementalDetokenizer(tokenizer)
    assert [detokenizer.add(b) for b in "a🦙b".encode()] == ["a", "", "", "", "🦙", "b"]


def test_flush_emits_a_trailing_partial_character() -> None:
    tokenizer = ByteTokenizer()
    detokenizer = IncrementalDetokenizer(tokenizer)
    ids = list("é".encode())[:1]
    assert detokenizer.add(ids[0]) == ""
    assert detokenizer.flush() == tokenizer.decode(ids) == "\ufffd"
    assert detokenizer.text == "\ufffd"


def test_each_step_decodes_a_short_window() -> None:
    class Recording(ByteTokenizer):
        longest = 0

        def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
            Recording.longest = max(Recording.longest, len(ids))
            return super().decode(ids, skip_special_tokens)

    tokenizer = Recording()
    text = "Ünïcödé 🦙 and 中文 " * 100
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert stream(tokenizer, ids, prompt=ids[:50]) == text
    assert Recording.longest <= 8  # 4 bytes of the longest character, plus the previous character's


# -- the default model's byte-level BPE ------------------------------------------------------------------------


def test_random_ids_stream_like_full_decode(smol: Tokenizer, smol_ids: st.SearchStrategy[int]) -> None:
    @PROPERTY_SETTINGS
    @given(ids=st.lists(smol_ids, max_size=30), prompt=st.lists(smol_ids, max_size=6), skip=st.booleans())
    def check(ids: list[int], prompt: list[int], skip: bool) -> None:
        assert stream(smol, ids, prompt, skip) == smol.decode(ids, skip_special_tokens=skip)

    check()


@PROPERTY_SETTINGS
@given(text=st.text(max_size=60), prefix=st.sampled_from(["", " ", "<|im_start|>assistant\n", "é"]))
def test_encoded_text_streams_back(smol: Tokenizer, smol_bytes: set[int], text: str, prefix: str) -> None:
    ids = smol.encode(prefix + text, add_special_tokens=False)
    prompt = smol.encode("<|im_start|>user\nhi<|im_end|>\n", add_special_tokens=False)
    assert stream(smol, ids, prompt) == smol.decode(ids)
    # Bytes without a token are dropped by encoding, so only text made of the others round-trips.
    if set(text.encode()) <= smol_bytes:
        assert smol.decode(ids) == prefix + text


def test_leading_space_and_cjk_tokens(smol: Tokenizer) -> None:
    text = " Hello 世界 🦙🚀 done"
    ids = smol.encode(text, add_special_tokens=False)
    prompt = smol.encode("<|im_start|>assistant\n", add_special_tokens=False)
    detokenizer = IncrementalDetokenizer(smol, prompt)
    pieces = [detokenizer.add(i) for i in ids]
    assert pieces[0] == " Hello"
    assert "".join(pieces) + detokenizer.flush() == text
    assert all("\ufffd" not in piece for piece in pieces)


def test_skipped_special_tokens(smol: Tokenizer) -> None:
    ids = smol.encode("Hi<|im_end|> there<|endoftext|>", add_special_tokens=False)
    assert stream(smol, ids, skip=True) == "Hi there"
    assert stream(smol, ids, skip=False) == "Hi<|im_end|> there<|endoftext|>"
