"""Tokenizer: GGUF vocabularies against HF transformers and llama.cpp's test vectors, tokenizer.json, ByteTokenizer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from plait.engine.errors import ModelLoadError, ModelNotFoundError
from plait.engine.tokenizer import ByteTokenizer, Tokenizer

VECTORS_DIR = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "tokenizers"
VECTOR_SEPARATOR = "\n__ggml_vocab_test__\n"

# Code, numbers, unicode, emoji, whitespace runs, newlines, contractions and special tokens written in the text.
SAMPLES = [
    "Hello world",
    " Hello world",
    "hello   world",
    "12345",
    " 12345 6.78e-9",
    "1,000,000 and 3.14159",
    "x = 3.14159 * r**2",
    "def f(a, b):\n    return a + b\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    '{"key": [1, 2, {"nested": null}]}',
    "  multiple   spaces  ",
    "\n\n\nnewlines\n",
    "tabs\tand\r\nCRLF\r\n",
    "I'm sure you're right, they'll see. IT'S FINE'S",
    "日本語のテキストと中文",
    "Ünïcödé façade naïve café",
    "нещо на Български",
    "emoji 🦙🚀 😶‍🌫️ ✅ 👍🏽",
    "mixed 🦙12 ab🦙cd",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "a<|im_end|>b",
    "<|endoftext|>",
    "<|im_start|><|im_start|>",
    "<|im_start",
    "",
    " ",
    "\t",
    "!!!!!!?????......",
    "https://example.com/path?q=1&r=2#frag",
    "snake_case_name CamelCaseName kebab-case-name",
    "    indented\n        more\n",
    "ﬁ ligature and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "a\U00040000\x04b",  # bytes 0xF1 and 0x04 have no token in SmolLM2's vocabulary: both drop them
]


@pytest.fixture(scope="module")
def smol(default_gguf: Path) -> Tokenizer:
    return Tokenizer.from_gguf(default_gguf)


@pytest.fixture(scope="module")
def hf_smol(default_gguf: Path) -> Any:
    transformers = pytest.importorskip("transformers")
    path = default_gguf
    return transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


# -- the default model (SmolLM2) ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text", SAMPLES)
def test_default_model_matches_transformers(smol: Tokenizer, hf_smol: Any, text: str) -> None:
    assert smol.encode(text, add_special_tokens=False) == hf_smol.encode(text, add_special_tokens=False)


def test_default_model_round_trips(smol: Tokenizer) -> None:
    for text in SAMPLES[:-1]:
        assert smol.decode(smol.encode(text)) == text


def test_default_model_special_tokens(smol: Tokenizer) -> None:
    assert smol.vocab_size == 49152
    # SmolLM2's GGUF names <|im_start|> as BOS and <|im_end|> as EOS, and says not to add BOS.
    assert smol.bos_token_id == 1 and smol.id_to_token(1) == "<|im_start|>"
    assert smol.eos_token_id == 2 and smol.id_to_token(2) == "<|im_end|>"
    assert smol.add_bos is False
    assert smol.encode("hi") == smol.encode("hi", add_special_tokens=False)
    assert smol.stop_token_ids == frozenset({0, 2})  # <|endoftext|>, <|im_end|>
    assert smol.encode("<|im_start|>user") == [1, 4093]
    assert smol.chat_template is not None and "<|im_start|>" in smol.chat_template


def test_default_model_decode_skips_special_tokens(smol: Tokenizer) -> None:
    ids = smol.encode("<|im_start|>assistant\nHello!<|im_end|>")
    assert smol.decode(ids) == "<|im_start|>assistant\nHello!<|im_end|>"
    assert smol.decode(ids, skip_special_tokens=True) == "assistant\nHello!"


def test_token_strings(smol: Tokenizer) -> None:
    strings = smol.token_strings()
    assert len(strings) == smol.vocab_size
    assert strings[:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    hello = smol.encode(" Hello", add_special_tokens=False)
    assert [strings[i] for i in hello] == ["ĠHello"] == [smol.id_to_token(i) for i in hello]
    strings[0] = "mutated"
    assert smol.token_strings()[0] == "<|endoftext|>"
    with pytest.raises(IndexError):
        smol.id_to_token(smol.vocab_size)


def test_backend_is_a_tokenizers_tokenizer(smol: Tokenizer) -> None:
    import tokenizers

    assert isinstance(smol.backend, tokenizers.Tokenizer)


# -- llama.cpp's test vectors ----------------------------------------------------------------------------------


def _vectors(name: str) -> tuple[Path, list[tuple[str, list[int]]]]:
    gguf = VECTORS_DIR / f"ggml-vocab-{name}.gguf"
    if not gguf.is_file():
        pytest.skip(f"../shared/data is absent (no {gguf.name} in {VECTORS_DIR})")
    inputs = Path(f"{gguf}.inp").read_text(encoding="utf-8").split(VECTOR_SEPARATOR)
    outputs = Path(f"{gguf}.out").read_text(encoding="utf-8").split("\n")
    # Both files end with a separator / newline, leaving one empty trailing element.
    assert inputs[-1] == "" and outputs[-1] == "" and len(inputs) == len(outputs)
    return gguf, [(text, [int(i) for i in line.split()]) for text, line in zip(inputs[:-1], outputs[:-1], strict=True)]


@pytest.mark.parametrize("name", ["llama-bpe", "qwen2"])
def test_llama_cpp_vectors(name: str) -> None:
    gguf, vectors = _vectors(name)
    tokenizer = Tokenizer.from_gguf(gguf)
    assert len(vectors) > 40
    mismatches = [
        (text, expected, got)
        for text, expected in vectors
        if (got := tokenizer.encode(text, add_special_tokens=False)) != expected
    ]
    assert mismatches == []
    for text, _ in vectors:
        assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text

    if name == "llama-bpe":
        # No add_bos_token key: llama.cpp adds BOS for the Llama-3 family, once.
        assert tokenizer.add_bos and tokenizer.bos_token_id == 128000
        assert tokenizer.encode("Hello")[0] == 128000
        assert tokenizer.encode("<|begin_of_text|>Hello") == tokenizer.encode("Hello")
        assert {128001, 128009} <= tokenizer.stop_token_ids  # <|end_of_text|>, <|eot_id|>
    else:
        assert not tokenizer.add_bos
        assert tokenizer.encode("<|im_start|>user") == [151644, 872]
        assert {151643, 151645} <= tokenizer.stop_token_ids  # <|endoftext|>, <|im_end|>


# -- GGUF files written here -----------------------------------------------------------------------------------


def _write_gguf(path: Path, *, big_endian: bool = False, **overrides: Any) -> Path:
    """A tiny byte-level vocabulary: the 256 byte tokens, "he", "ll", "hell", a control and a user-defined token."""
    import gguf

    alphabet = ByteTokenizer().token_strings()[:256]
    kv: dict[str, Any] = {
        "model": "gpt2",
        "pre": "gpt2",
        "tokens": [*alphabet, "he", "ll", "hell", "<|im_end|>", "<think>"],
        "types": [1] * 259 + [3, 4],
        "merges": ["h e", "l l", "he ll"],
    }
    kv.update(overrides)
    endian = gguf.GGUFEndian.BIG if big_endian else gguf.GGUFEndian.LITTLE
    writer = gguf.GGUFWriter(path, "llama", endianess=endian)
    writer.add_tokenizer_model(kv["model"])
    if kv["pre"] is not None:
        writer.add_tokenizer_pre(kv["pre"])
    writer.add_token_list(kv["tokens"])
    writer.add_token_types(kv["types"])
    writer.add_token_merges(kv["merges"])
    writer.add_eos_token_id(len(kv["tokens"]) - 2)
    writer.add_chat_template("{{ messages[0]['content'] }}")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("big_endian", [False, True])
def test_written_gguf(tmp_path: Path, big_endian: bool) -> None:
    tokenizer = Tokenizer.from_gguf(_write_gguf(tmp_path / "v.gguf", big_endian=big_endian))
    assert tokenizer.vocab_size == 261
    ids = tokenizer.encode("hello<think> hell<|im_end|>")
    hell, o, space = 258, ord("o"), tokenizer.token_strings().index("Ġ")
    assert ids == [hell, o, 260, space, hell, 259]
    assert tokenizer.decode(ids) == "hello<think> hell<|im_end|>"
    assert tokenizer.decode(ids, skip_special_tokens=True) == "hello<think> hell"  # user-defined is not special
    assert tokenizer.eos_token_id == 259 and tokenizer.stop_token_ids == frozenset({259})
    assert tokenizer.bos_token_id is None and not tokenizer.add_bos
    assert tokenizer.chat_template == "{{ messages[0]['content'] }}"


def test_unknown_pre_tokenizer_is_named(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"'made-up'.*smollm") as info:
        Tokenizer.from_gguf(_write_gguf(tmp_path / "v.gguf", pre="made-up"))
    for supported in ("llama-bpe", "qwen2", "gpt2", "default"):
        assert supported in str(info.value)


def test_missing_pre_means_default(tmp_path: Path) -> None:
    assert Tokenizer.from_gguf(_write_gguf(tmp_path / "v.gguf", pre=None)).encode("hell") == [258]


def test_sentencepiece_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="SentencePiece"):
        Tokenizer.from_gguf(_write_gguf(tmp_path / "v.gguf", model="llama"))


def test_gguf_without_tokenizer(tmp_path: Path) -> None:
    import gguf

    writer = gguf.GGUFWriter(tmp_path / "w.gguf", "llama")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelLoadError, match="no tokenizer"):
        Tokenizer.from_gguf(tmp_path / "w.gguf")


def test_bad_merge_is_a_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError):
        Tokenizer.from_gguf(_write_gguf(tmp_path / "v.gguf", merges=["h e", "nothere x"]))


@pytest.mark.parametrize("cut", [0, 3, 10, 30, 200, 2000])
def test_truncated_gguf_is_a_load_error(tmp_path: Path, cut: int) -> None:
    blob = _write_gguf(tmp_path / "v.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(blob[:cut])
    with pytest.raises(ModelLoadError):
        Tokenizer.from_gguf(tmp_path / "cut.gguf")


def test_garbage_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(ModelLoadError, match="GGUF"):
        Tokenizer.from_gguf(tmp_path / "junk.gguf")
    blob = bytearray(_write_gguf(tmp_path / "v.gguf").read_bytes())
    blob[16:24] = (10**9).to_bytes(8, "little")  # a key/value count far past what the file holds
    (tmp_path / "count.gguf").write_bytes(bytes(blob))
    with pytest.raises(ModelLoadError):
        Tokenizer.from_gguf(tmp_path / "count.gguf")
    with pytest.raises(ModelNotFoundError):
        Tokenizer.from_gguf(tmp_path / "absent.gguf")


# -- tokenizer.json --------------------------------------------------------------------------------------------


def test_from_file_with_config(smol: Tokenizer, tmp_path: Path) -> None:
    smol.backend.save(str(tmp_path / "tokenizer.json"))
    config = {
        "bos_token": {"content": "<|im_start|>", "special": True},
        "eos_token": "<|im_end|>",
        "add_bos_token": True,
        "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}],
    }
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 5]}))
    loaded = Tokenizer.from_pretrained_dir(tmp_path)
    assert (loaded.bos_token_id, loaded.eos_token_id, loaded.add_bos, loaded.chat_template) == (1, 2, True, "D")
    assert loaded.vocab_size == smol.vocab_size
    assert loaded.stop_token_ids == frozenset({0, 2, 5})
    for text in SAMPLES:
        assert loaded.encode(text, add_special_tokens=False) == smol.encode(text, add_special_tokens=False)
        expected = smol.encode(text) if text.startswith("<|im_start|>") else [1, *smol.encode(text)]
        assert loaded.encode(text) == expected


def test_from_file_without_config(smol: Tokenizer, tmp_path: Path) -> None:
    smol.backend.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "chat_template.jinja").write_text("J")
    loaded = Tokenizer.from_file(tmp_path / "tokenizer.json")
    assert (loaded.bos_token_id, loaded.eos_token_id, loaded.add_bos, loaded.chat_template) == (None, None, False, "J")
    assert loaded.stop_token_ids == frozenset({0, 2})  # <|endoftext|> and <|im_end|> are in the vocabulary


def test_from_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError):
        Tokenizer.from_file(tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ModelLoadError):
        Tokenizer.from_pretrained_dir(tmp_path)


# -- ByteTokenizer ---------------------------------------------------------------------------------------------


def test_byte_tokenizer() -> None:
    tokenizer = ByteTokenizer(300)
    text = "héllo 🦙\n"
    ids = tokenizer.encode(text)
    assert ids == list(text.encode("utf-8"))
    assert tokenizer.decode(ids) == text
    assert tokenizer.encode("<s>hi</s>") == [256, 104, 105, 257]
    assert tokenizer.decode([104, 257, 299, 105]) == "h</s>i"  # 299 is padding
    assert tokenizer.decode([104, 257, 105], skip_special_tokens=True) == "hi"
    assert (tokenizer.vocab_size, tokenizer.bos_token_id, tokenizer.eos_token_id) == (300, 256, 257)
    assert tokenizer.stop_token_ids == frozenset({257})
    assert tokenizer.id_to_token(299) == "" and tokenizer.id_to_token(257) == "</s>"
    assert len(tokenizer.token_strings()) == 300
    assert ByteTokenizer(add_bos=True).encode("a") == [256, 97]
    assert ByteTokenizer(add_bos=True).encode("<s>a") == [256, 97]
    with pytest.raises(ModelLoadError):
        ByteTokenizer(100)


# -- Joining pieces ---------------------------------------------------------------------------------------------


def test_byte_level_tokenizers_join_pieces(smol: Tokenizer) -> None:
    assert ByteTokenizer().joins_pieces and smol.joins_pieces


def test_a_tokenizer_that_prefixes_a_space_does_not_join_pieces() -> None:
    """SentencePiece's dummy prefix puts a space before every encoded text: pieces would gain spaces at the seams."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models, pre_tokenizers

    vocab = {"<unk>": 0, **{char: i + 1 for i, char in enumerate("▁Answer:yes\nx")}}
    backend = Backend(models.BPE(vocab, [], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always")
    backend.decoder = decoders.Metaspace(prepend_scheme="always")
    tokenizer = Tokenizer(backend)
    assert tokenizer.decode(tokenizer.encode("x")) == "x"  # a single text round-trips
    assert not tokenizer.joins_pieces
