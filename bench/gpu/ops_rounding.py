"""Do the fused Triton ops round like the torch reference? Per op, on bf16 inputs of a decoder layer's scale: the
share of output elements that differ and the relative error (0 and 0.0% when the two round at the same points).

Usage: python bench/gpu/ops_rounding.py
"""

from __future__ import annotations

import torch

from plait.engine.model_ops import TORCH_OPS, triton_ops


def compare(name: str, got: torch.Tensor, want: torch.Tensor) -> None:
    differ = float((got != want).float().mean())
    rel = float((got.float() - want.float()).norm() / want.float().norm())
    print(f"{name:28s} {differ:7.2%} of elements differ, relative error {rel:.1e}")


def main() -> None:
    torch.manual_seed(0)
    fused, ref = triton_ops(), TORCH_OPS
    dev, bf16 = "cuda", torch.bfloat16
    weight = torch.ones(2048, device=dev, dtype=bf16)
    embed = (0.02 * torch.randn(256, 2048, device=dev)).to(bf16)
    compare("rms_norm (first layer)", fused.rms_norm(embed, weight, 1e-5), ref.rms_norm(embed, weight, 1e-5))
    x = torch.randn(256, 2048, device=dev).to(bf16)
    residual = torch.randn(256, 2048, device=dev)
    got_n, got_r = fused.add_rms_norm(x, residual.clone(), weight, 1e-5)
    want_n, want_r = ref.add_rms_norm(x, residual.clone(), weight, 1e-5)
    compare("add_rms_norm: residual", got_r, want_r)
    compare("add_rms_norm: normed", got_n, want_n)
    gate_up = torch.randn(256, 16384, device=dev).to(bf16)
    compare("silu_and_mul", fused.silu_and_mul(gate_up), ref.silu_and_mul(gate_up))
    positions = torch.arange(256, device=dev)
    inv = 1.0 / (500000.0 ** (torch.arange(0, 64, 2, device=dev, dtype=torch.float64) / 64))
    freqs = torch.outer(positions.double(), inv).float()
    emb = torch.cat([freqs, freqs], -1)
    cos, sin = emb.cos().to(bf16), emb.sin().to(bf16)
    q = torch.randn(256, 32, 64, device=dev).to(bf16)
    k = torch.randn(256, 8, 64, device=dev).to(bf16)
    want_q, want_k = ref.rotary(positions, q.clone(), k.clone(), cos, sin)
    got_q, got_k = fused.rotary(positions, q.clone(), k.clone(), cos, sin)
    compare("rotary: q", got_q, want_q)
    compare("rotary: k", got_k, want_k)


if __name__ == "__main__":
    main()
