"""Pick the tokenizer that goes with a model source (or an explicit override)."""

from __future__ import annotations

from pathlib import Path

from plait.engine.errors import ModelNotFoundError
from plait.engine.model_loader import ModelSource
from plait.engine.tokenizer import ByteTokenizer, Tokenizer


def load_tokenizer(source: ModelSource, override: str | None = None) -> Tokenizer | ByteTokenizer:
    """``override``: a GGUF file (vocab-only files work), a ``tokenizer.json`` or a directory holding one.

    Without one: the GGUF's own vocabulary, the HF directory's ``tokenizer.json``, or a byte-level tokenizer for
    dummy weights (whose outputs are meaningless anyway).
    """
    path = Path(override) if override else source.path
    if path is None:
        return ByteTokenizer(source.config.vocab_size)
    if not path.exists():
        raise ModelNotFoundError(f"tokenizer not found: {path}")
    if path.is_dir():
        return Tokenizer.from_pretrained_dir(path)
    if path.suffix == ".json":
        return Tokenizer.from_file(path)
    return Tokenizer.from_gguf(path)
