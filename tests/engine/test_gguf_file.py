"""``GGUFFile``: the same metadata and tensor data as ``gguf.GGUFReader`` (which plait no longer opens files with:
it decodes every vocabulary string first, seconds per load), decoding only the keys asked for."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from plait.engine.gguf_file import GGUFFile

gguf = pytest.importorskip("gguf")


def _write(path: Path, *, big_endian: bool = False, alignment: int | None = None) -> Path:
    endian = gguf.GGUFEndian.BIG if big_endian else gguf.GGUFEndian.LITTLE
    writer = gguf.GGUFWriter(path, "llama", endianess=endian)
    if alignment is not None:
        writer.add_custom_alignment(alignment)
    writer.add_context_length(64)
    writer.add_name("tiny")
    writer.add_token_list([f"t{i}" for i in range(40)])
    writer.add_rope_freq_base(10000.0)
    rng = np.random.default_rng(0)
    writer.add_tensor("token_embd.weight", rng.standard_normal((40, 32), dtype=np.float32))
    writer.add_tensor("output_norm.weight", rng.standard_normal(32).astype(np.float16))
    q8 = gguf.quants.quantize(rng.standard_normal((8, 64), dtype=np.float32), gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("blk.0.attn_q.weight", q8, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def assert_same_as_reader(path: Path) -> None:
    reader = gguf.GGUFReader(str(path))
    file = GGUFFile(path)
    fields = {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}
    assert file.metadata.keys() == fields.keys()
    for name, value in fields.items():
        assert file.metadata[name] == pytest.approx(value) if isinstance(value, float) else file.metadata[name] == value
    assert [t.name for t in file.tensors] == [t.name for t in reader.tensors]
    for mine, theirs in zip(file.tensors, reader.tensors, strict=True):
        assert mine.type_id == theirs.tensor_type and mine.shape == tuple(int(d) for d in theirs.shape)
        data = file.tensor_array(mine)
        assert data.dtype == theirs.data.dtype and data.shape == theirs.data.shape, mine.name
        assert np.array_equal(data, theirs.data), mine.name


@pytest.mark.parametrize(("big_endian", "alignment"), [(False, None), (True, None), (False, 64)])
def test_written_files_read_as_gguf_reads_them(tmp_path, big_endian, alignment) -> None:
    assert_same_as_reader(_write(tmp_path / "m.gguf", big_endian=big_endian, alignment=alignment))


def test_the_default_model_reads_as_gguf_reads_it(default_gguf) -> None:
    assert_same_as_reader(default_gguf)


def test_only_the_keys_kept_are_decoded_and_every_array_is_counted(tmp_path) -> None:
    file = GGUFFile(_write(tmp_path / "m.gguf"), keep=lambda key: not key.startswith("tokenizer."))
    assert "tokenizer.ggml.tokens" not in file.metadata and file.array_lengths["tokenizer.ggml.tokens"] == 40
    assert file.metadata["llama.context_length"] == 64


@pytest.mark.parametrize("keep_bytes", [20, 200, -100])
def test_a_file_cut_short_fails_when_opened(tmp_path, keep_bytes) -> None:
    whole = _write(tmp_path / "m.gguf").read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole[:keep_bytes])
    with pytest.raises((ValueError, struct.error)):
        GGUFFile(cut)
