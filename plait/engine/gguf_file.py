"""A GGUF file's header read directly: its metadata (the values asked for) and its tensor index; tensors are views
of the mapped file, built when read.

``gguf.GGUFReader`` builds a numpy view of every metadata string as it opens a file: 2 s on SmolLM2's 49k-token
vocabulary, 10 s on Llama-3's 128k, before a single weight is read. This reader decodes only the keys a caller keeps
(the model's settings for the weights, ``tokenizer.*`` for the tokenizer) and skips the rest by their lengths.

Layout (GGUF v2/v3): magic ``GGUF``, u32 version, u64 tensor count, u64 key/value count; the key/value pairs; one
entry per tensor (name, u32 dimension count, u64 dimensions fastest-varying first, u32 type, u64 offset); then the
tensor data, from the next multiple of ``general.alignment`` (32 by default), each tensor at its offset.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# Metadata value types: fixed-size scalars (struct format), 8 = string, 9 = array.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
_DEFAULT_ALIGNMENT = 32
# Unquantized tensor types, stored as plain numbers (``gguf.GGUFReader`` reads these with their own dtype).
_PLAIN_TYPES = {
    "F16": np.float16,
    "F32": np.float32,
    "F64": np.float64,
    "I8": np.int8,
    "I16": np.int16,
    "I32": np.int32,
    "I64": np.int64,
}


@dataclass(frozen=True)
class GGUFTensorInfo:
    """One entry of the tensor index."""

    name: str
    shape: tuple[int, ...]  # GGUF order: the fastest-varying dimension first (as ``gguf.ReaderTensor.shape``)
    type_id: int  # a ``gguf.GGMLQuantizationType`` value
    data_offset: int  # from the start of the file
    nbytes: int


class GGUFFile:
    """An opened GGUF file: ``metadata`` (the keys ``keep`` accepts), the length of every array (kept or not),
    the tensor index, and each tensor's data on request.

    Raises ``OSError`` when the file cannot be read and ``ValueError`` (``UnicodeDecodeError`` included) or
    ``struct.error`` when it is not a GGUF v2/v3 file, is cut short (a tensor's data included) or names a tensor
    type ``gguf`` does not know."""

    def __init__(self, path: str | Path, keep: Callable[[str], bool] = lambda key: True) -> None:
        self.path = Path(path)
        with self.path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            self.metadata, self.array_lengths, self.tensors, self.big_endian = _parse(buf, keep)
            size = len(buf)
        for tensor in self.tensors:
            if tensor.data_offset + tensor.nbytes > size:
                raise ValueError(f"tensor {tensor.name} runs past the end of the file")
        self._data: np.ndarray | None = None  # the whole file, mapped when a tensor is first read

    def tensor_array(self, tensor: GGUFTensorInfo) -> np.ndarray:
        """The tensor's data as a read-only view of the file, shaped as ``gguf.GGUFReader`` shapes it (what
        ``gguf.quants.dequantize`` takes): the dimensions slowest-varying first, and for a quantized type the last
        one in bytes."""
        from gguf import GGMLQuantizationType
        from gguf.quants import quant_shape_to_byte_shape

        if self._data is None:  # a plain view of the mapping: slicing a np.memmap costs a Python call per slice
            self._data = np.asarray(np.memmap(self.path, dtype=np.uint8, mode="r"))
        quant_type = GGMLQuantizationType(tensor.type_id)
        dims = tuple(reversed(tensor.shape))
        plain = _PLAIN_TYPES.get(quant_type.name)
        if plain is not None:
            dtype = np.dtype(plain).newbyteorder(">" if self.big_endian else "<")
        else:  # blocks of bytes, one row of blocks per row of the tensor
            dtype = np.dtype(np.uint8)
            dims = quant_shape_to_byte_shape(dims, quant_type)
        data = self._data[tensor.data_offset : tensor.data_offset + tensor.nbytes]
        return data.view(dtype).reshape(dims)


def _parse(
    buf: mmap.mmap, keep: Callable[[str], bool]
) -> tuple[dict[str, Any], dict[str, int], list[GGUFTensorInfo], bool]:
    """``(metadata, array lengths, tensor index, big-endian)`` of the header in ``buf``."""
    if buf[:4] != b"GGUF":
        raise ValueError("bad magic (not a GGUF file)")
    # A big-endian file stores the version byte-swapped; every other number is then big-endian too.
    endian = "<" if struct.unpack_from("<I", buf, 4)[0] < 0x10000 else ">"
    (version,) = struct.unpack_from(endian + "I", buf, 4)
    if version not in (2, 3):
        raise ValueError(f"GGUF version {version} is not supported (2 and 3 are)")
    u32, u64 = struct.Struct(endian + "I"), struct.Struct(endian + "Q")
    (tensor_count,), (kv_count,) = u64.unpack_from(buf, 8), u64.unpack_from(buf, 16)
    size, off = len(buf), 24

    def string(off: int, decode: bool) -> tuple[str, int]:
        (n,) = u64.unpack_from(buf, off)
        end = off + 8 + n
        if end > size:
            raise ValueError("a string runs past the end of the file")
        return (buf[off + 8 : end].decode("utf-8") if decode else ""), end

    def value(kind: int, off: int, decode: bool) -> tuple[Any, int]:
        if kind == _STRING:
            return string(off, decode)
        if kind in _SCALARS:
            fmt = struct.Struct(endian + _SCALARS[kind])
            return fmt.unpack_from(buf, off)[0], off + fmt.size
        if kind != _ARRAY:
            raise ValueError(f"unknown metadata value type {kind}")
        (item_kind,), (count,) = u32.unpack_from(buf, off), u64.unpack_from(buf, off + 4)
        off += 12
        if count > size - off:  # every item takes a byte or more: a corrupt count must not loop (or allocate) for ages
            raise ValueError("an array runs past the end of the file")
        if item_kind in _SCALARS:  # a fixed-size array is read (or skipped) in one go
            fmt = struct.Struct(f"{endian}{count}{_SCALARS[item_kind]}")
            return (list(fmt.unpack_from(buf, off)) if decode else None), off + fmt.size
        items = []
        for _ in range(count):
            item, off = value(item_kind, off, decode)
            items.append(item)
        return (items if decode else None), off

    metadata: dict[str, Any] = {}
    array_lengths: dict[str, int] = {}
    alignment: Any = _DEFAULT_ALIGNMENT
    for _ in range(kv_count):
        key, off = string(off, True)
        (kind,) = u32.unpack_from(buf, off)
        if kind == _ARRAY:
            (array_lengths[key],) = u64.unpack_from(buf, off + 8)
        wanted = keep(key)
        item, off = value(kind, off + 4, wanted or key == "general.alignment")  # where the tensors start
        if key == "general.alignment":
            alignment = item
        if wanted:
            metadata[key] = item

    index: list[tuple[str, tuple[int, ...], int, int]] = []
    for _ in range(tensor_count):
        name, off = string(off, True)
        (n_dims,) = u32.unpack_from(buf, off)
        shape = struct.unpack_from(f"{endian}{n_dims}Q", buf, off + 4)
        off += 4 + 8 * n_dims
        (type_id,), (offset,) = u32.unpack_from(buf, off), u64.unpack_from(buf, off + 4)
        off += 12
        index.append((name, shape, type_id, offset))
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise ValueError(f"general.alignment must be a power of two, got {alignment!r}")
    data_start = off + (-off % alignment)
    tensors = [
        GGUFTensorInfo(name, shape, type_id, data_start + offset, _tensor_bytes(name, shape, type_id))
        for name, shape, type_id, offset in index
    ]
    return metadata, array_lengths, tensors, endian == ">"


def _tensor_bytes(name: str, shape: tuple[int, ...], type_id: int) -> int:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        block_size, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(type_id)]
    except (ValueError, KeyError):
        raise ValueError(f"tensor {name} has the unknown type {type_id}") from None
    return int(np.prod(shape)) * type_size // block_size
