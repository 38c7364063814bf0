"""GGUF weights kept packed on the CPU: 4-bit and 8-bit blocks multiplied by torch's weight-only int4 kernel.

A GGUF ``Q4_0``/``Q4_1``/``Q8_0`` tensor stores blocks of 32 weights along the input dimension with a float16 scale
(and, for ``Q4_1``, an offset). torch's CPU kernel ``_weight_int4pack_mm_for_cpu`` multiplies bfloat16 activations by
4-bit codes ``c`` in groups of 32 with ``w = (c - 8) * scale + zero``. The mapping is exact:

- ``Q4_0`` (``w = d * (q - 8)``): codes ``q``, scale ``d``, zero 0;
- ``Q4_1`` (``w = d * q + m``): codes ``q``, scale ``d``, zero ``m + 8 d``;
- ``Q8_0`` (``w = d * q``, ``q`` in [-128, 127]): two 4-bit terms, ``q = 16 hi + lo``: codes ``hi + 8`` with scale
  ``16 d`` and zero 0, plus codes ``lo`` with scale ``d`` and zero ``8 d``; the two products are summed.

So a decode step reads ~0.6 bytes per weight (a fifth of float32's) and the only rounding is bfloat16's, of the
activations, the scales and the output: inside the quantization's own error (tested). A fused projection (Q/K/V,
gate/up) is packed when every part of it is one of these types; anything else stays dense.

The kernel is made for few rows: from ``DENSE_MIN_ROWS`` rows on (a prefill chunk), a 4-bit weight is expanded to a
dense bfloat16 matrix for the call and multiplied by the dense kernel, which is faster there once the expansion is
paid (2.4x at 2,048 rows). The expansion reads a second copy of the codes, two per byte in row order (half a byte per
weight more). A Q8_0 weight that the model also holds dense in bfloat16 (the tied head: the embedding) multiplies
that dense copy from ``SHARED_DENSE_MIN_ROWS`` rows on (at 16 rows: 3.8 ms against 6.3 ms for its two 4-bit terms).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

GROUP = 32
# Rows from which a 4-bit weight is expanded to a dense matrix for the call (the kernels cross near 256 rows).
DENSE_MIN_ROWS = 384
# Rows from which a weight with a dense bfloat16 copy elsewhere in the model multiplies that copy.
SHARED_DENSE_MIN_ROWS = 8
PACKABLE_TYPES = ("Q4_0", "Q4_1", "Q8_0")
# Bytes per block of 32 weights: float16 scale (+ float16 offset for Q4_1) and the codes.
_BLOCK_BYTES = {"Q4_0": 18, "Q4_1": 20, "Q8_0": 34}


@dataclass
class BlockWeights:
    """A quantized ``[out, in]`` matrix as integer codes and per-block affine terms: ``w = scale * code + offset``
    per block of ``GROUP`` inputs. ``codes`` are 0..15 (Q4 types) or -128..127 (Q8_0); ``scale``/``offset`` are
    float32 ``[out, in / GROUP]``."""

    kind: str  # "q4" (one 4-bit term) or "q8" (two)
    codes: torch.Tensor
    scale: torch.Tensor
    offset: torch.Tensor

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.codes.shape)

    def dequantize(self) -> torch.Tensor:
        """The float32 matrix (what the dense path multiplies)."""
        expand = lambda t: t.repeat_interleave(GROUP, dim=1)  # noqa: E731
        return self.codes.float() * expand(self.scale) + expand(self.offset)

    def permute_rows(self, permute) -> BlockWeights:
        """The same weights with rows reordered by ``permute`` (a function of an ``[out, ...]`` tensor)."""
        return BlockWeights(self.kind, permute(self.codes), permute(self.scale), permute(self.offset))


def read_blocks(raw: np.ndarray, type_name: str) -> BlockWeights:
    """Decode a GGUF tensor's bytes (``[out, blocks * block_bytes]`` uint8, as ``GGUFFile.tensor_array`` gives)."""
    if type_name not in _BLOCK_BYTES:
        raise ValueError(f"{type_name} is not a packable type ({', '.join(PACKABLE_TYPES)})")
    rows = raw.shape[0]
    blocks = np.ascontiguousarray(raw).reshape(rows, -1, _BLOCK_BYTES[type_name])
    scale = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    if type_name == "Q8_0":
        codes = blocks[..., 2:].copy().view(np.int8).astype(np.int16)
        offset = np.zeros_like(scale)
        kind = "q8"
    else:
        start = 4 if type_name == "Q4_1" else 2
        packed = blocks[..., start:]
        # Byte j of a block holds weight j in its low nibble and weight j + 16 in its high one.
        codes = np.concatenate([packed & 0x0F, packed >> 4], axis=-1).astype(np.int16)
        if type_name == "Q4_1":
            offset = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
        else:
            offset = -8.0 * scale
        kind = "q4"
    return BlockWeights(
        kind,
        torch.from_numpy(codes.reshape(rows, -1)),
        torch.from_numpy(np.ascontiguousarray(scale)),
        torch.from_numpy(np.ascontiguousarray(offset)),
    )


def concat_blocks(parts: list[BlockWeights]) -> BlockWeights | None:
    """Parts of one fused projection stacked along the output dimension; None when their kinds differ."""
    if len({p.kind for p in parts}) != 1:
        return None
    return BlockWeights(
        parts[0].kind,
        torch.cat([p.codes for p in parts]),
        torch.cat([p.scale for p in parts]),
        torch.cat([p.offset for p in parts]),
    )


class _Int4Term:
    """One product by 4-bit codes through torch's kernel: ``x @ ((codes - 8) * scale + zero)^T``."""

    def __init__(self, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> None:
        self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32).contiguous(), 1)
        # [in / GROUP, out, 2]: the kernel's layout of scales and zeros.
        self.scales_and_zeros = torch.stack([scale.t(), zero.t()], dim=-1).contiguous().to(torch.bfloat16)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x, self.packed, GROUP, self.scales_and_zeros)


class PackedLinearWeight:
    """An ``[out, in]`` weight kept packed; ``matmul(x)`` is ``x @ w^T`` in ``x``'s dtype (computed from bfloat16
    activations). ``shared_dense``: the same weight held dense by the model anyway (the embedding of a tied head),
    used for calls of many rows when it is bfloat16."""

    def __init__(self, blocks: BlockWeights, shared_dense: torch.Tensor | None = None) -> None:
        self.out_features, self.in_features = blocks.shape
        self.shared_dense = shared_dense if shared_dense is not None and shared_dense.dtype == torch.bfloat16 else None
        if self.in_features % GROUP:
            raise ValueError(f"input size {self.in_features} is not a multiple of {GROUP}")
        scale, offset = blocks.scale, blocks.offset
        self.nibbles: torch.Tensor | None = None
        if blocks.kind == "q4":
            self.terms = [_Int4Term(blocks.codes, scale, offset + 8 * scale)]
            codes = blocks.codes.to(torch.uint8)
            self.nibbles = (codes[:, 0::2] | (codes[:, 1::2] << 4)).contiguous()  # [out, in / 2]
            self.block_scale = scale.unsqueeze(-1).to(torch.bfloat16)  # [out, in / GROUP, 1]
            self.block_offset = offset.unsqueeze(-1).to(torch.bfloat16)
        else:
            high, low = blocks.codes >> 4, blocks.codes & 0x0F  # arithmetic shift: high in [-8, 7]
            self.terms = [
                _Int4Term(high + 8, 16 * scale, torch.zeros_like(scale)),
                _Int4Term(low, scale, 8 * scale),
            ]

    @property
    def nbytes(self) -> int:
        extra = 0 if self.nibbles is None else self.nibbles.nbytes + 2 * self.block_scale.nbytes
        return extra + sum(t.packed.nbytes + t.scales_and_zeros.nbytes for t in self.terms)

    def dense(self) -> torch.Tensor:
        """The bfloat16 ``[out, in]`` matrix of a 4-bit weight (what a call of many rows multiplies)."""
        assert self.nibbles is not None, "only 4-bit weights expand"
        codes = torch.stack([self.nibbles & 0x0F, self.nibbles >> 4], dim=-1)
        codes = codes.view(self.out_features, self.in_features // GROUP, GROUP).to(torch.bfloat16)
        return torch.addcmul(self.block_offset, codes, self.block_scale).view(self.out_features, self.in_features)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
        rows = flat.shape[0]
        dense = None
        if self.shared_dense is not None and rows >= SHARED_DENSE_MIN_ROWS:
            dense = self.shared_dense
        elif self.nibbles is not None and rows >= DENSE_MIN_ROWS:
            dense = self.dense()
        if dense is not None:
            return torch.nn.functional.linear(flat, dense).view(*x.shape[:-1], self.out_features).to(x.dtype)
        out = self.terms[0](flat)
        if len(self.terms) > 1:
            out = out.float()
            for term in self.terms[1:]:
                out += term(flat)
        return out.view(*x.shape[:-1], self.out_features).to(x.dtype)
