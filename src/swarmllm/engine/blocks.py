"""SpanModel: runs transformer blocks [start, end) of one model on hidden states, with a KV cache.

Contract: `forward(hidden[B, T, D], cache, start_position)` processes the T new positions
start_position .. start_position+T-1, writes their K/V into `cache` and attends causally over
cache positions [0, start_position + T) (a sliding window on local layers). Writing at a
position below `cache.length` overwrites the rest (implicit rollback). Pure compute: no I/O,
no tokenizer, no network; the same object serves local generation and a swarm server.

Speed: single-token decode is dominated by per-op overhead on CPU, so weights are fused at
load (q|k|v and gate|up are one matmul each), RoPE is one addcmul over q and k together, GQA
is done by folding query groups into the query-length axis (no K/V repeat), and no mask is
built for T == 1.
"""

from __future__ import annotations

import copy

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from swarmllm.engine.kv_cache import KVCache, new_kv_cache
from swarmllm.engine.rope import RopeTable, apply_rope
from swarmllm.models.config import ModelConfig
from swarmllm.weights.types import BlockWeights


@dataclass(frozen=True)
class _Layer:
    """Fused weights of one block, ready for compute."""

    index: int
    sliding: bool
    attn_norm: torch.Tensor  # [D]
    qkv: torch.Tensor  # [(H + 2KV) * hd, D]
    qk_norm: torch.Tensor | None  # [H + KV, hd]
    o: torch.Tensor  # [D, H * hd]
    post_attn_norm: torch.Tensor | None  # [D]
    ffn_norm: torch.Tensor  # [D]
    gate_up: torch.Tensor  # [2I, D]
    down: torch.Tensor  # [D, I]
    post_ffn_norm: torch.Tensor | None  # [D]


def _fuse(config: ModelConfig, w: BlockWeights, dtype: torch.dtype) -> _Layer:
    H, KV, hd = config.n_heads, config.n_kv_heads, config.head_dim
    qk_norm = None
    if config.qk_norm:
        if w.q_norm is None or w.k_norm is None:
            raise ValueError(f"Block {w.index} lacks q_norm/k_norm weights, which this model family needs.")
        qk_norm = torch.cat([w.q_norm.expand(H, hd), w.k_norm.expand(KV, hd)]).to(dtype).contiguous()
    if config.sandwich_norms and (w.post_attn_norm is None or w.post_ffn_norm is None):
        raise ValueError(f"Block {w.index} lacks post-attention/post-feedforward norms, which this family needs.")

    def cast(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.to(dtype).contiguous()

    return _Layer(
        index=w.index,
        sliding=config.is_sliding(w.index),
        attn_norm=cast(w.attn_norm),
        qkv=torch.cat([w.q, w.k, w.v]).to(dtype).contiguous(),
        qk_norm=qk_norm,
        o=cast(w.o),
        post_attn_norm=cast(w.post_attn_norm) if config.sandwich_norms else None,
        ffn_norm=cast(w.ffn_norm),
        gate_up=torch.cat([w.gate, w.up]).to(dtype).contiguous(),
        down=cast(w.down),
        post_ffn_norm=cast(w.post_ffn_norm) if config.sandwich_norms else None,
    )


class SpanModel:
    """Blocks [start, end) of a model, fused for inference."""

    def __init__(
        self,
        config: ModelConfig,
        blocks: list[BlockWeights],
        start: int,
        end: int,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        config.check_span(start, end)
        if [b.index for b in blocks] != list(range(start, end)):
            raise ValueError(f"SpanModel [{start}, {end}) got weights for blocks {[b.index for b in blocks]}.")
        self.config, self.start, self.end, self.dtype = config, start, end, dtype
        self.layers = [_fuse(config, w, dtype) for w in blocks]
        self.rope_global = RopeTable(config.head_dim, config.rope_theta, config.rope_scaling, dtype)
        local_theta = config.rope_local_theta or config.rope_theta
        self.rope_local = RopeTable(config.head_dim, local_theta, None, dtype)

    @property
    def n_blocks(self) -> int:
        return self.end - self.start

    def view(self, start: int, end: int) -> "SpanModel":
        """Blocks [start, end) of this span as a SpanModel sharing the same weights (no copy)."""
        if not (self.start <= start < end <= self.end):
            raise ValueError(f"[{start}, {end}) is not inside this span [{self.start}, {self.end}).")
        model = copy.copy(self)
        model.start, model.end = start, end
        model.layers = self.layers[start - self.start:end - self.start]
        return model

    def new_cache(self, max_length: int, batch_size: int = 1, kv_dtype: str = "auto") -> KVCache:
        """A cache for this span; kv_dtype "int8" stores K/V quantized (see kv_cache.py)."""
        return new_kv_cache(self.config, self.n_blocks, max_length, batch_size, self.dtype, kv_dtype)

    def _attention_plan(self, start: int, T: int, sliding: bool) -> tuple:
        """(cos, sin, first visible key position, mask or None) for the new positions."""
        cfg = self.config
        cos, sin = (self.rope_local if sliding else self.rope_global).slice(start, T)
        end = start + T
        window = cfg.sliding_window if sliding else None
        k0 = max(0, start + 1 - window) if window else 0  # keys below k0 are invisible to every query
        if T == 1:
            return cos, sin, k0, None
        q_pos = torch.arange(start, end)[:, None]
        k_pos = torch.arange(k0, end)[None, :]
        mask = k_pos <= q_pos  # [T, L]
        if window:
            mask = mask & (k_pos > q_pos - window)
        group = cfg.n_heads // cfg.n_kv_heads
        return cos, sin, k0, mask.repeat(group, 1)  # rows follow the folded (group, T) query order

    @torch.inference_mode()
    def forward(self, hidden: torch.Tensor, cache: KVCache, start_position: int) -> torch.Tensor:
        """hidden [B, T, D] -> hidden [B, T, D] after blocks [start, end)."""
        B, T, D = hidden.shape
        if D != self.config.hidden_size:
            raise ValueError(f"Expected hidden size {self.config.hidden_size}, got {D}.")
        if cache.n_blocks != self.n_blocks:
            raise ValueError(f"The KV cache has {cache.n_blocks} blocks but this span has {self.n_blocks}.")
        cache.check_write(start_position, T)
        plans = {s: self._attention_plan(start_position, T, s) for s in {layer.sliding for layer in self.layers}}
        x = hidden.to(self.dtype)
        for i, layer in enumerate(self.layers):
            x = self._block(layer, x, cache, i, start_position, plans[layer.sliding])
        cache.length = start_position + T
        return x

    __call__ = forward

    def _block(self, layer: _Layer, x: torch.Tensor, cache: KVCache, block: int, start: int,
               plan: tuple) -> torch.Tensor:
        cfg = self.config
        B, T, D = x.shape
        H, KV, hd, eps = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.rms_norm_eps
        G = H // KV
        cos, sin, k0, mask = plan
        end = start + T

        h = F.rms_norm(x, (D,), layer.attn_norm, eps)
        qkv = F.linear(h, layer.qkv).view(B, T, H + 2 * KV, hd)  # [B, T, H+2KV, hd]
        qk = qkv[:, :, : H + KV]
        if layer.qk_norm is not None:
            qk = F.rms_norm(qk, (hd,), None, eps) * layer.qk_norm
        qk = apply_rope(qk, cos, sin)  # [B, T, H+KV, hd]
        cache.write(block, start, qk[:, :, H:].transpose(1, 2), qkv[:, :, H + KV:].transpose(1, 2))
        keys, values = cache.read(block, k0, end)  # [B, KV, L, hd]
        if T == 1:
            q = qk[:, 0, :H].reshape(B, KV, G, hd)
            a = F.scaled_dot_product_attention(q, keys, values, scale=cfg.attention_scale)  # [B, KV, G, hd]
            a = a.reshape(B, 1, H * hd)
        else:
            q = qk[:, :, :H].reshape(B, T, KV, G, hd).permute(0, 2, 3, 1, 4).reshape(B, KV, G * T, hd)
            a = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=cfg.attention_scale)
            a = a.view(B, KV, G, T, hd).permute(0, 3, 1, 2, 4).reshape(B, T, H * hd)
        a = F.linear(a, layer.o)  # [B, T, D]
        if layer.post_attn_norm is not None:
            a = F.rms_norm(a, (D,), layer.post_attn_norm, eps)
        x = x + a

        h = F.rms_norm(x, (D,), layer.ffn_norm, eps)
        gate, up = F.linear(h, layer.gate_up).chunk(2, dim=-1)  # [B, T, I] each
        if cfg.activation == "silu":
            m = F.silu(gate) * up
        else:
            m = F.gelu(gate, approximate="tanh") * up
        m = F.linear(m, layer.down)  # [B, T, D]
        if layer.post_ffn_norm is not None:
            m = F.rms_norm(m, (D,), layer.post_ffn_norm, eps)
        return x + m
