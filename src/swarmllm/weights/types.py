"""Typed containers for loaded weights, in Hugging Face orientation ([out, in]).

Readers fill these; the engine fuses them (qkv, gate+up) when it builds a SpanModel.
Checkpoints that store fused tensors (Phi-3's qkv_proj / gate_up_proj) are split by the
readers (`split_fused`), so the engine sees one layout for every family. Projection weights
are float tensors, or `Int4Codes` when a reader was asked to keep a GGUF's 4-bit codes (see
`load_blocks(..., keep_int4=True)`). Norm tensors always hold the final RMSNorm multiplier (Gemma's `1 + w` already applied),
and q/k rows are in the HF rotary layout (llama.cpp's permutation already undone).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Int4Codes:
    """A 4-bit weight kept as its codes: w[n, k] = codes[n, k] * scales[n, g] + mins[n, g], g = k // group_size.

    Readers return this for GGUF tensors whose format is exactly this shape (Q4_0, Q4_1, Q4_K:
    32-element groups with one scale and one offset each), so a quantized engine can re-pack
    the codes without a float round trip. Orientation is HF ([out, in]) like every tensor here.
    """

    codes: torch.Tensor  # uint8 [N, K], values 0..15
    scales: torch.Tensor  # float32 [N, K / group_size]
    mins: torch.Tensor  # float32 [N, K / group_size]
    group_size: int

    @property
    def shape(self) -> torch.Size:
        return self.codes.shape

    def dequantize(self) -> torch.Tensor:
        """float32 [N, K]."""
        N, K = self.codes.shape
        groups = self.codes.view(N, K // self.group_size, self.group_size).float()
        return (groups * self.scales[..., None] + self.mins[..., None]).view(N, K)

    def rows(self, order: torch.Tensor) -> "Int4Codes":
        """The same weight with its output rows reordered (for llama.cpp's q/k permutation)."""
        return Int4Codes(self.codes[order], self.scales[order], self.mins[order], self.group_size)


Weight = torch.Tensor | Int4Codes


@dataclass(frozen=True)
class BlockWeights:
    """All tensors of one transformer block. Optional fields are None when a family lacks them."""

    index: int  # absolute block index in the model
    attn_norm: torch.Tensor  # [D]
    q: Weight  # [H*hd, D]
    k: Weight  # [KV*hd, D]
    v: Weight  # [KV*hd, D]
    o: Weight  # [D, H*hd]
    ffn_norm: torch.Tensor  # [D]
    gate: Weight  # [I, D]
    up: Weight  # [I, D]
    down: Weight  # [D, I]
    q_norm: torch.Tensor | None = None  # [hd]
    k_norm: torch.Tensor | None = None  # [hd]
    post_attn_norm: torch.Tensor | None = None  # [D]
    post_ffn_norm: torch.Tensor | None = None  # [D]
    q_bias: torch.Tensor | None = None  # [H*hd]
    k_bias: torch.Tensor | None = None  # [KV*hd]
    v_bias: torch.Tensor | None = None  # [KV*hd]

    @property
    def nbytes(self) -> int:
        total = 0
        for t in vars(self).values():
            if isinstance(t, Int4Codes):
                total += t.codes.numel() // 2 + (t.scales.numel() + t.mins.numel()) * t.scales.element_size()
            elif isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
        return total


@dataclass(frozen=True)
class HeadWeights:
    """What a client needs around the blocks: the embedding, the final norm and the LM head."""

    embed: torch.Tensor  # [V, D]
    final_norm: torch.Tensor  # [D]
    lm_head: torch.Tensor  # [V, D]; the same tensor object as `embed` when tied


def split_fused(tensors: dict[str, torch.Tensor], q_rows: int, kv_rows: int) -> dict[str, torch.Tensor]:
    """Replace fused "qkv" / "gate_up" entries of a role -> tensor dict by their parts.

    qkv rows are [q (q_rows); k (kv_rows); v (kv_rows)]; gate_up rows are [gate; up] halves.
    Parts are copies (contiguous), so the fused tensor can be freed.
    """
    out = dict(tensors)
    qkv = out.pop("qkv", None)
    if qkv is not None:
        if qkv.shape[0] != q_rows + 2 * kv_rows:
            raise ValueError(f"A fused qkv tensor has {qkv.shape[0]} rows; expected {q_rows + 2 * kv_rows}.")
        for role, part in zip(("q", "k", "v"), qkv.split([q_rows, kv_rows, kv_rows])):
            out.setdefault(role, part.contiguous())
    gate_up = out.pop("gate_up", None)
    if gate_up is not None:
        if gate_up.shape[0] % 2:
            raise ValueError(f"A fused gate_up tensor has an odd number of rows ({gate_up.shape[0]}).")
        for role, part in zip(("gate", "up"), gate_up.chunk(2)):
            out.setdefault(role, part.contiguous())
    return out
