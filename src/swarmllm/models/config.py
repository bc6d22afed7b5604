"""Model configuration: one frozen dataclass that describes every supported family.

Family differences (Llama vs Gemma 3) are *fields* of `ModelConfig`, not subclasses: the
engine reads `activation`, `qk_norm`, `sandwich_norms`, `sliding_window` ... and never asks
"which family is this?". Configs are built by `swarmllm.models.registry` from GGUF metadata
or a Hugging Face `config.json`; nothing here reads files.

Conventions the engine relies on:
- RMSNorm weights are stored as the final multiplier (Gemma's `1 + w` is folded in at load).
- Layer indices are absolute (0..n_blocks-1); spans are half-open `[start, end)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

ACTIVATIONS = ("silu", "gelu_tanh")
ROPE_SCALING_TYPES = ("linear", "llama3", "freq_factors")


@dataclass(frozen=True)
class RopeScaling:
    """How rotary frequencies are rescaled for long context.

    type:
      "linear"       positions are divided by `factor`.
      "llama3"       Llama 3.1 piecewise scaling (factor, low/high_freq_factor, original ctx).
      "freq_factors" each inverse frequency is divided by `freq_factors[i]` (llama.cpp stores
                     Llama 3 scaling this way, as a `rope_freqs.weight` tensor).
    """

    type: str
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_context_length: int = 8192
    freq_factors: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.type not in ROPE_SCALING_TYPES:
            raise ValueError(
                f"Unsupported rope scaling type {self.type!r}; supported types are {', '.join(ROPE_SCALING_TYPES)}."
            )


@dataclass(frozen=True)
class ModelConfig:
    """Everything the engine needs to run blocks, the embedding and the LM head."""

    family: str  # registry key: "llama" or "gemma3"
    n_blocks: int
    hidden_size: int
    intermediate_size: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab_size: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: RopeScaling | None = None  # applies to global (non-sliding) layers
    tie_embeddings: bool = True
    context_length: int = 2048
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    activation: str = "silu"
    # --- Gemma-style options (defaults = plain Llama) ---
    sliding_window: int | None = None  # keys k with q - k < sliding_window are visible
    sliding_window_pattern: int = 0  # every Nth layer (1-based) is global; 0 = all global
    rope_local_theta: float | None = None  # rope base of sliding layers (None = rope_theta)
    query_pre_attn_scalar: float | None = None  # attention scale = scalar**-0.5 (None = head_dim)
    embed_scale: float = 1.0  # token embeddings are multiplied by this (Gemma: sqrt(hidden))
    qk_norm: bool = False  # per-head RMSNorm on q and k before RoPE
    sandwich_norms: bool = False  # extra RMSNorm after attention and after the MLP
    final_logit_softcapping: float | None = None  # logits = cap * tanh(logits / cap)

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"Unsupported activation {self.activation!r}; expected one of {ACTIVATIONS}.")
        if self.n_heads % self.n_kv_heads != 0:
            raise ValueError(
                f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})."
            )

    def is_sliding(self, layer: int) -> bool:
        """True when absolute block `layer` uses local (sliding-window) attention."""
        if self.sliding_window is None or self.sliding_window_pattern <= 0:
            return False
        return (layer + 1) % self.sliding_window_pattern != 0

    @property
    def attention_scale(self) -> float:
        scalar = self.query_pre_attn_scalar if self.query_pre_attn_scalar is not None else self.head_dim
        return 1.0 / math.sqrt(scalar)

    @property
    def q_size(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.n_kv_heads * self.head_dim

    def check_span(self, start: int, end: int) -> None:
        """Raise a clear error unless [start, end) is a non-empty span of this model's blocks."""
        if not (0 <= start < end <= self.n_blocks):
            raise ValueError(
                f"Block span [{start}, {end}) is invalid for a model with {self.n_blocks} blocks; "
                f"use 0 <= start < end <= {self.n_blocks}."
            )
