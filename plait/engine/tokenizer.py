"""Tokenizers: byte-level BPE from GGUF metadata or a HF ``tokenizer.json``, and a byte tokenizer for dummy models.

Each wraps a ``tokenizers.Tokenizer`` (built the way llama.cpp reads the GGUF vocabulary) and handles BOS, stop tokens
and chat templates itself: the backend is always called with ``add_special_tokens=False``.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers

from plait.engine.chat_template import render_chat
from plait.engine.errors import ModelLoadError, ModelNotFoundError
from plait.engine.gguf_file import GGUFFile

# Pre-tokenizer split patterns, by llama.cpp's ``tokenizer.ggml.pre`` name (oniguruma syntax, as tokenizers uses).
_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# name -> (split patterns applied in order, ignore_merges). ignore_merges: a pre-token that is itself in the vocabulary
# becomes that one token without running merges (llama.cpp does this for the Llama-3 family only).
_PRE_TOKENIZERS: dict[str, tuple[tuple[str, ...], bool]] = {
    "default": ((_GPT2_SPLIT,), False),
    "gpt2": ((_GPT2_SPLIT,), False),
    "smollm": ((r"\p{N}", _GPT2_SPLIT), False),
    "llama-bpe": ((_LLAMA3_SPLIT,), True),
    "llama3": ((_LLAMA3_SPLIT,), True),
    "llama-v3": ((_LLAMA3_SPLIT,), True),
    "qwen2": ((_QWEN2_SPLIT,), False),
    "deepseek-r1-qwen": ((_QWEN2_SPLIT,), False),
}
# llama.cpp adds BOS for these when the file has no tokenizer.ggml.add_bos_token.
_ADD_BOS_BY_DEFAULT = frozenset({"llama-bpe", "llama3", "llama-v3"})
_TOKEN_TYPE_CONTROL, _TOKEN_TYPE_USER_DEFINED = 3, 4
_MODEL_HINTS = {"llama": " (SentencePiece vocabularies are not)", None: " (the file has no tokenizer)"}
# End-of-turn / end-of-text tokens of common chat models; whichever exist in a vocabulary also stop generation.
_END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|endoftext|>", "<|eom_id|>", "<end_of_turn>")


class Tokenizer:
    """Text <-> token ids for one model, plus the model's special tokens and chat template."""

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        *,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
        chat_template: str | None = None,
        add_bos: bool = False,
        extra_stop_token_ids: Iterable[int] = (),
        vocab_size: int | None = None,
    ) -> None:
        """Wrap ``backend``. ``vocab_size`` defaults to one past the largest id the backend knows (added tokens
        included); pass the model's embedding size to cover padding ids that have no string."""
        self._backend = backend
        known = backend.get_vocab(with_added_tokens=True)
        self._vocab_size = max(vocab_size or 0, max(known.values(), default=-1) + 1)
        self._bos_token_id = bos_token_id
        self._eos_token_id = eos_token_id
        self._bos_token, self._eos_token = (
            (backend.id_to_token(i) or "") if i is not None else "" for i in (bos_token_id, eos_token_id)
        )
        self._chat_template = chat_template
        self._add_bos = add_bos and bos_token_id is not None
        stops = {i for i in extra_stop_token_ids if 0 <= i < self._vocab_size}
        stops.update(known[t] for t in _END_OF_TURN_TOKENS if t in known)
        if eos_token_id is not None:
            stops.add(eos_token_id)
        self._stop_token_ids = frozenset(stops)
        self._token_strings: list[str] | None = None
        self._joins_pieces: bool | None = None

    @classmethod
    def from_gguf(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """Build the tokenizer a GGUF file describes (``tokenizer.ggml.model == "gpt2"``, byte-level BPE).

        Raises:
            ModelNotFoundError: the path does not exist.
            ModelLoadError: the file is corrupt, or its tokenizer is not supported (SentencePiece, an unknown ``pre``).
        """
        where = Path(path)
        meta = _read_tokenizer_metadata(where)
        model = meta.get("tokenizer.ggml.model")
        if model != "gpt2":
            hint = _MODEL_HINTS.get(model, "")
            raise ModelLoadError(f"{where}: tokenizer.ggml.model={model!r} is not supported; only 'gpt2' is{hint}")
        pre = meta.get("tokenizer.ggml.pre", "default")
        if pre not in _PRE_TOKENIZERS:
            raise ModelLoadError(
                f"{where}: tokenizer.ggml.pre={pre!r} is not supported; supported: {', '.join(sorted(_PRE_TOKENIZERS))}"
            )
        tokens: list[str] = meta.get("tokenizer.ggml.tokens") or []
        if not tokens or not isinstance(tokens, list):
            raise ModelLoadError(f"{where}: the file has no tokenizer.ggml.tokens array")
        token_types: list[int] = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
        if len(token_types) != len(tokens):
            raise ModelLoadError(f"{where}: {len(token_types)} token types for {len(tokens)} tokens")
        splits, ignore_merges = _PRE_TOKENIZERS[pre]
        try:
            backend = _byte_level_bpe(tokens, meta.get("tokenizer.ggml.merges") or [], splits, ignore_merges)
            control = [t for t, kind in zip(tokens, token_types, strict=True) if kind == _TOKEN_TYPE_CONTROL]
            user = [t for t, kind in zip(tokens, token_types, strict=True) if kind == _TOKEN_TYPE_USER_DEFINED]
            backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
            backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in user])
        except Exception as exc:  # tokenizers raises plain Exception for e.g. a merge naming an unknown token
            raise ModelLoadError(f"{where}: cannot build the tokenizer: {exc}") from exc

        def special_id(key: str) -> int | None:
            value = meta.get(f"tokenizer.ggml.{key}")
            return value if isinstance(value, int) and 0 <= value < len(tokens) else None

        add_bos = meta.get("tokenizer.ggml.add_bos_token", pre in _ADD_BOS_BY_DEFAULT)
        extra = [i for i in (special_id("eot_token_id"), special_id("eom_token_id")) if i is not None]
        return cls(
            backend,
            bos_token_id=special_id("bos_token_id"),
            eos_token_id=special_id("eos_token_id"),
            chat_template=meta.get("tokenizer.chat_template"),
            add_bos=bool(add_bos),
            extra_stop_token_ids=extra,
            vocab_size=len(tokens),
        )

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """Load a HF ``tokenizer.json``; ``tokenizer_config.json``, ``chat_template.jinja`` and
        ``generation_config.json`` beside it (all optional) give BOS/EOS, ``add_bos_token``, the chat template and
        extra stop ids.

        Raises:
            ModelNotFoundError: ``path`` does not exist.
            ModelLoadError: a file is not valid JSON or not a tokenizer.
        """
        path = Path(path)
        if not path.is_file():
            raise ModelNotFoundError(f"{path}: no such tokenizer file")
        try:
            backend = tokenizers.Tokenizer.from_file(str(path))
        except Exception as exc:
            raise ModelLoadError(f"{path}: not a valid tokenizer.json: {exc}") from exc
        config = _read_json(path.parent / "tokenizer_config.json")
        generation = _read_json(path.parent / "generation_config.json")

        def token_id(value: Any) -> int | None:
            content = value.get("content") if isinstance(value, dict) else value
            return backend.token_to_id(content) if isinstance(content, str) else None

        bos, eos = token_id(config.get("bos_token")), token_id(config.get("eos_token"))
        add_bos = config.get("add_bos_token")
        if not isinstance(add_bos, bool):
            # No flag: add BOS when the tokenizer's own post-processor would (e.g. Llama-3's TemplateProcessing).
            add_bos = bos is not None and backend.encode("", add_special_tokens=True).ids[:1] == [bos]
        template = _pick_template(config.get("chat_template"))
        if template is None and (path.parent / "chat_template.jinja").is_file():
            template = (path.parent / "chat_template.jinja").read_text(encoding="utf-8")
        gen_eos = generation.get("eos_token_id")
        extra = [i for i in (gen_eos if isinstance(gen_eos, list) else [gen_eos]) if isinstance(i, int)]
        return cls(
            backend,
            bos_token_id=bos,
            eos_token_id=eos,
            chat_template=template,
            add_bos=add_bos,
            extra_stop_token_ids=extra,
        )

    @classmethod
    def from_pretrained_dir(cls, directory: str | os.PathLike[str]) -> Tokenizer:
        """Load the tokenizer of a HF model directory (its ``tokenizer.json`` and the configs beside it)."""
        return cls.from_file(Path(directory) / "tokenizer.json")

    @property
    def backend(self) -> tokenizers.Tokenizer:
        """The underlying ``tokenizers.Tokenizer``."""
        return self._backend

    @property
    def vocab_size(self) -> int:
        """Number of token ids (added tokens and padding ids included)."""
        return self._vocab_size

    @property
    def bos_token_id(self) -> int | None:
        """Beginning-of-sequence id, if the model has one."""
        return self._bos_token_id

    @property
    def eos_token_id(self) -> int | None:
        """End-of-sequence id, if the model has one."""
        return self._eos_token_id

    @property
    def stop_token_ids(self) -> frozenset[int]:
        """Ids that end generation: EOS plus the end-of-turn tokens present in the vocabulary."""
        return self._stop_token_ids

    @property
    def chat_template(self) -> str | None:
        """The model's Jinja chat template, if it has one."""
        return self._chat_template

    @property
    def add_bos(self) -> bool:
        """Whether ``encode`` prepends BOS (with ``add_special_tokens=True``)."""
        return self._add_bos

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``. Special tokens written in the text (``<|im_start|>``) are matched whole. BOS is
        prepended when ``add_bos`` and ``add_special_tokens`` are true, unless the text already starts with it."""
        # encode_batch releases the GIL while it runs (encode holds it): a long prompt tokenized on a caller's
        # thread must not stall the engine thread's step loop for milliseconds.
        ids: list[int] = self._backend.encode_batch([text], add_special_tokens=False)[0].ids
        if add_special_tokens and self._add_bos and not (self._bos_token and text.startswith(self._bos_token)):
            assert self._bos_token_id is not None  # _add_bos implies it
            ids.insert(0, self._bos_token_id)
        return ids

    @property
    def joins_pieces(self) -> bool:
        """Whether texts tokenized one by one and concatenated decode to the texts joined, so a prompt can be assembled
        from tokenized pieces and generated ids. True for byte-level BPE; False for a tokenizer that puts a space
        before every text it encodes (SentencePiece's dummy prefix), which would insert spaces at the seams."""
        if self._joins_pieces is None:
            pieces = ("Answer:", " yes", "\n", "x")
            ids = [token for i, piece in enumerate(pieces) for token in self.encode(piece, add_special_tokens=i == 0)]
            self._joins_pieces = self.decode(ids, skip_special_tokens=True) == "".join(pieces)
        return self._joins_pieces

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of ``ids``; invalid UTF-8 becomes U+FFFD and ids without a string decode to nothing."""
        return self._backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def id_to_token(self, token_id: int) -> str:
        """Raw vocabulary string of ``token_id`` (byte-level form, e.g. ``Ġhello``); "" for padding ids.

        Raises:
            IndexError: ``token_id`` is outside ``[0, vocab_size)``.
        """
        if not 0 <= token_id < self._vocab_size:
            raise IndexError(f"token id {token_id} is outside the vocabulary [0, {self._vocab_size})")
        return self._backend.id_to_token(token_id) or ""

    def token_strings(self) -> list[str]:
        """Raw vocabulary strings indexed by id ("" for ids without one), e.g. for grammar-constrained decoding."""
        if self._token_strings is None:
            strings = [""] * self._vocab_size
            for token, i in self._backend.get_vocab(with_added_tokens=True).items():
                strings[i] = token
            self._token_strings = strings
        return list(self._token_strings)

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
    ) -> str:
        """Render ``messages`` with this model's chat template (ChatML when it has none); see ``render_chat``."""
        return render_chat(
            self._chat_template,
            messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self._bos_token,
            eos_token=self._eos_token,
            tools=tools,
        )


class ByteTokenizer(Tokenizer):
    """Tokenizer for models with random weights and no vocabulary: ids 0-255 are the bytes of the UTF-8 text,
    256 is ``<s>`` (BOS), 257 is ``</s>`` (EOS); ids from 258 up to ``vocab_size`` are padding that decodes to ""."""

    def __init__(self, vocab_size: int = 258, *, add_bos: bool = False) -> None:
        """``vocab_size`` is the model's embedding size (at least 258)."""
        if vocab_size < 258:
            raise ModelLoadError(f"a byte tokenizer needs a vocabulary of at least 258 ids, the model has {vocab_size}")
        # Byte b is token b, spelled in the byte-level alphabet, so decoding goes through the ByteLevel decoder.
        byte_to_char = _bytes_to_unicode()
        backend = _byte_level_bpe([byte_to_char[b] for b in range(256)], [], (), False)
        backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<s>", "</s>")])
        super().__init__(backend, bos_token_id=256, eos_token_id=257, add_bos=add_bos, vocab_size=vocab_size)


def _byte_level_bpe(
    tokens: Sequence[str], merges: Sequence[str], splits: Sequence[str], ignore_merges: bool
) -> tokenizers.Tokenizer:
    """A byte-level BPE backend: ``splits`` regexes, then bytes -> byte-alphabet characters, then BPE merges."""
    # Duplicate strings keep the last id, as llama.cpp's token-to-id map does.
    vocab = {token: i for i, token in enumerate(tokens)}
    pairs: list[tuple[str, str]] = []
    for merge in merges:
        # The separator is the first space after position 0: a merge's left side may itself be a raw space.
        cut = merge.find(" ", 1)
        if cut < 0:
            raise ModelLoadError(f"malformed merge {merge!r}")
        pairs.append((merge[:cut], merge[cut + 1 :]))
    backend = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=pairs, ignore_merges=ignore_merges))
    steps: list[Any] = [pre_tokenizers.Split(Regex(p), behavior="isolated") for p in splits]
    steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False))
    backend.pre_tokenizer = pre_tokenizers.Sequence(steps)
    backend.decoder = decoders.ByteLevel()
    return backend


def _bytes_to_unicode() -> dict[int, str]:
    """The GPT-2 byte alphabet: printable Latin-1 bytes stand for themselves, the others for chars from U+0100."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    others = [b for b in range(256) if b not in printable]
    return {b: chr(b) for b in printable} | {b: chr(0x100 + i) for i, b in enumerate(others)}


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: not valid JSON: {exc}") from exc
    return data if isinstance(data, dict) else {}


def _pick_template(value: Any) -> str | None:
    """``chat_template`` of tokenizer_config.json: a string, or a list of named templates (take "default")."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        chosen = named.get("default", next(iter(named.values()), None))
        return chosen if isinstance(chosen, str) else None
    return None


def _read_tokenizer_metadata(path: Path) -> dict[str, Any]:
    """The ``tokenizer.*`` metadata of a GGUF file, by key (``GGUFFile`` decodes only those keys)."""
    if not path.is_file():
        raise ModelNotFoundError(f"{path}: no such GGUF file")
    try:
        return GGUFFile(path, keep=lambda key: key.startswith("tokenizer.")).metadata
    except (OSError, ValueError, struct.error) as exc:  # UnicodeDecodeError is a ValueError
        raise ModelLoadError(f"{path}: not a readable GGUF file: {exc}") from exc
