"""Typed containers for loaded weights, in Hugging Face orientation ([out, in]).

Readers fill these; the engine fuses them (qkv, gate+up) when it builds a SpanModel.
Norm tensors always hold the final RMSNorm multiplier (Gemma's `1 + w` already applied),
and q/k rows are in the HF rotary layout (llama.cpp's permutation already undone).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class BlockWeights:
    """All tensors of one transformer block. Optional fields are None when a family lacks them."""

    index: int  # absolute block index in the model
    attn_norm: torch.Tensor  # [D]
    q: torch.Tensor  # [H*hd, D]
    k: torch.Tensor  # [KV*hd, D]
    v: torch.Tensor  # [KV*hd, D]
    o: torch.Tensor  # [D, H*hd]
    ffn_norm: torch.Tensor  # [D]
    gate: torch.Tensor  # [I, D]
    up: torch.Tensor  # [I, D]
    down: torch.Tensor  # [D, I]
    q_norm: torch.Tensor | None = None  # [hd]
    k_norm: torch.Tensor | None = None  # [hd]
    post_attn_norm: torch.Tensor | None = None  # [D]
    post_ffn_norm: torch.Tensor | None = None  # [D]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in vars(self).values() if isinstance(t, torch.Tensor))


@dataclass(frozen=True)
class HeadWeights:
    """What a client needs around the blocks: the embedding, the final norm and the LM head."""

    embed: torch.Tensor  # [V, D]
    final_norm: torch.Tensor  # [D]
    lm_head: torch.Tensor  # [V, D]; the same tensor object as `embed` when tied
