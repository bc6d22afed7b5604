"""Model configuration: one frozen dataclass that describes every supported family.

Family differences (Llama, Gemma 3, Qwen2, Qwen3, Mistral, Phi-3) are *fields* of
`ModelConfig`, not subclasses: the engine reads `activation`, `qk_norm`, `qkv_bias`,
`sandwich_norms`, `sliding_window`, `rotary_dim` ... and never asks "which family is this?". Configs are built by `swarmllm.models.registry` from GGUF metadata
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

    family: str  # registry key (swarmllm.models.registry.FAMILIES): "llama", "gemma3", "qwen2", ...
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
    # --- family options (defaults = plain Llama) ---
    qkv_bias: bool = False  # q, k and v projections have biases (Qwen2)
    rotary_dim: int | None = None  # RoPE rotates the first rotary_dim dims of each head (None = head_dim)
    sliding_window: int | None = None  # on sliding layers, keys k with q - k < sliding_window are visible
    sliding_window_pattern: int = 0  # every Nth layer (1-based) is global; 0 = every layer slides
    rope_local_theta: float | None = None  # rope base of sliding layers (None = rope_theta)
    query_pre_attn_scalar: float | None = None  # attention scale = scalar**-0.5 (None = head_dim)
    embed_scale: float = 1.0  # token embeddings are multiplied by this (Gemma: sqrt(hidden))
    qk_norm: bool = False  # per-head RMSNorm on q and k before RoPE
    sandwich_norms: bool = False  # extra RMSNorm after attention and after the MLP
    final_logit_softcapping: float | None = None  # logits = cap * tanh(logits / cap)

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"Unsupported activation {self.activation!r}; expected one of {ACTIVATIONS}.")
        if self.rotary_dim is not None and not (0 < self.rotary_dim <= self.head_dim and self.rotary_dim % 2 == 0):
            raise ValueError(f"rotary_dim ({self.rotary_dim}) must be even and in (0, head_dim={self.head_dim}].")
        if self.n_heads % self.n_kv_heads != 0:
            raise ValueError(
                f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})."
            )

    def is_sliding(self, layer: int) -> bool:
        """True when absolute block `layer` uses local (sliding-window) attention."""
        if self.sliding_window is None:
            return False
        if self.sliding_window_pattern <= 0:
            return True  # Mistral / Phi-3 style: every layer slides
        return (layer + 1) % self.sliding_window_pattern != 0

    @property
    def rope_dim(self) -> int:
        """Dimensions of each head that RoPE rotates (partial rotary: fewer than head_dim)."""
        return self.rotary_dim or self.head_dim

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
