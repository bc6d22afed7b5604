"""Rotary position embedding tables (HF `rotate_half` layout) with long-context scaling.

`RopeTable` precomputes cos/sin for positions [0, n) and grows geometrically on demand, so a
decode step only slices. The sine table is stored sign-folded (`[-sin, +sin]` halves) so that
`x * cos + roll(x, hd/2) * sin_signed` equals HF's `x * cos + rotate_half(x) * sin`.
Frequencies are computed in float32 exactly as transformers does, then cast to the model dtype.
"""

from __future__ import annotations

import math

import torch

from swarmllm.models.config import RopeScaling


def inverse_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None) -> torch.Tensor:
    """Inverse frequencies [head_dim / 2] in float32, after the configured scaling."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    if scaling is None:
        return inv_freq
    if scaling.type == "linear":
        return inv_freq / scaling.factor
    if scaling.type == "freq_factors":
        factors = torch.tensor(scaling.freq_factors, dtype=torch.float32)
        if factors.numel() != inv_freq.numel():
            raise ValueError(f"rope_freqs has {factors.numel()} factors but the head needs {inv_freq.numel()}.")
        return inv_freq / factors
    # llama3: keep high frequencies, divide low ones by factor, interpolate in between.
    low_wavelen = scaling.original_context_length / scaling.low_freq_factor
    high_wavelen = scaling.original_context_length / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (scaling.original_context_length / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    is_medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(is_medium, smoothed, scaled)


class RopeTable:
    """cos / signed-sin tables for one (head_dim, theta, scaling), grown lazily."""

    def __init__(self, head_dim: int, theta: float, scaling: RopeScaling | None, dtype: torch.dtype) -> None:
        self.head_dim = head_dim
        self.dtype = dtype
        self.inv_freq = inverse_frequencies(head_dim, theta, scaling)
        self.cos = torch.empty(0, head_dim, dtype=dtype)
        self.sin = torch.empty(0, head_dim, dtype=dtype)

    def _grow(self, n: int) -> None:
        size = max(256, 1 << (n - 1).bit_length())
        positions = torch.arange(size, dtype=torch.int64).float()
        freqs = positions[:, None] * self.inv_freq[None, :]  # [P, hd/2] float32
        emb = torch.cat((freqs, freqs), dim=-1)  # [P, hd]
        half = self.head_dim // 2
        sin = emb.sin()
        sin[:, :half] = -sin[:, :half]
        self.cos, self.sin = emb.cos().to(self.dtype), sin.to(self.dtype)

    def slice(self, start: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin_signed), each [length, 1, head_dim], for positions start..start+length-1."""
        if start + length > self.cos.shape[0]:
            self._grow(start + length)
        cos = self.cos[start:start + length].unsqueeze(1)
        sin = self.sin[start:start + length].unsqueeze(1)
        return cos, sin


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """x: [..., T, heads, hd]; cos, sin_signed: [T, 1, hd] (one row per position, any positions)."""
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, -1), sin_signed)
