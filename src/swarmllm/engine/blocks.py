"""SpanModel: runs transformer blocks [start, end) of one model on hidden states, with a KV cache.

Contract: `forward(hidden[1, T, D], cache, start_position)` processes the T new positions
start_position .. start_position+T-1, writes their K/V into `cache` and attends causally over
cache positions [0, start_position + T) (a sliding window on local layers). Writing at a
position below `cache.length` overwrites the rest (implicit rollback). Pure compute: no I/O,
no tokenizer, no network; the same object serves local generation and a swarm server.

`forward_many(steps)` runs several sequences at once, each with its own cache, start
position and number of new positions (continuous batching on a server): the norms,
projections and MLP run over their rows stacked in one matrix, attention runs per sequence
over its own cache. A sequence's output does not depend on which others share its batch, nor
a row on its step's size: the short steps' rows (at most EXACT_STEP_POSITIONS each) are cut
into fixed-shape tiles of `row_tile` rows (zero-padded), and every row-wise op runs once per
tile, so every row meets the same kernel paths; a longer step (a prefill: never cut short,
replayed in its own chunks) runs as one call of its own rows, never stacked with another
step's. The tile is 1 (float32, and bfloat16 without native bf16) or 4 if a start-up self-check
of the block's row-wise work finds it exact (bfloat16 on CPUs that multiply it natively);
quantized CPU kernels need no tiles (see engine/row_tiles.py).
Verified bit for bit on an AMD EPYC (AVX2, MKL 2024.2) with 1, 2 and 5 threads and with MKL's
CNR mode COMPATIBLE, where the old padding-to-4 scheme fails (tests/unit/test_engine_row_tiles.py);
the Intel Xeon (AVX512-BF16) of issue 10 was not available to check.

Weights: the four projections of a block (q|k|v, o, gate|up, down) are `engine.quant`
linear layers: dense in the compute dtype (quant="none"), or kept as int8 / int4 and
multiplied by weight-only kernels (quant="int8" / "int4"); see quant.py.

Steps of 2..EXACT_STEP_POSITIONS positions (a speculative verify step, a short prompt) attend
one query row at a time, exactly as that many single-position steps would: each of their rows
is bit-identical to the same position decoded alone (their row-wise work already is, through
the tiles). So verifying k drafted tokens in one pass yields the logits plain decoding gives,
and a step cut short after rejected drafts replays exactly as its accepted rows.

Speed: single-token decode is dominated by per-op overhead on CPU, so weights are fused at
load (q|k|v and gate|up are one matmul each), RoPE is one addcmul over q and k together, GQA
is done by folding query groups into the query-length axis (no K/V repeat), and no mask is
built for T == 1.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from swarmllm.engine.kv_cache import KVCache, new_kv_cache
from swarmllm.engine.norm import RMSNorm
from swarmllm.engine.quant import Linear, check_quant_mode, make_linear
from swarmllm.engine.rope import RopeTable, apply_rope
from swarmllm.engine.row_tiles import (
    ANY_ROWS, RowLayout, counts_are_exact, gated_activation, per_segment, plan_rows, select_tile, tile_candidates,
    tile_is_exact,
)
from swarmllm.models.config import ModelConfig
from swarmllm.weights.types import BlockWeights


EXACT_STEP_POSITIONS = 16
"""Steps of at most this many positions compute attention row by row (see the module docstring).

Measured with torch 2.13 on CPU: one masked attention call over T query rows rounds a row
differently from the unmasked single-row call plain decoding makes (float32: up to 3e-4 in
the block output; bfloat16: 6e-2), enough to flip a near-tied greedy token. Row by row costs T
attention calls per block instead of one, small next to the linear layers at these sizes.
Prefills longer than this keep the single masked call: they are never cut short. The same bound
separates tiled rows from a long step's one call per row-wise op (see engine/row_tiles.py).
"""


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


@dataclass(frozen=True)
class SequenceStep:
    """One sequence's share of `SpanModel.forward_many`."""

    hidden: torch.Tensor  # [T, D]: hidden states of the T new positions
    cache: KVCache  # this sequence's own cache (batch size 1)
    start_position: int  # absolute position of the first new row


@dataclass(frozen=True)
class _Layer:
    """Fused weights of one block, ready for compute."""

    index: int
    sliding: bool
    attn_norm: RMSNorm  # weight [D]
    qkv: Linear  # [(H + 2KV) * hd, D]
    qkv_bias: torch.Tensor | None  # [(H + 2KV) * hd] (Qwen2)
    qk_norm: torch.Tensor | None  # [H + KV, hd]
    o: Linear  # [D, H * hd]
    post_attn_norm: RMSNorm | None  # weight [D]
    ffn_norm: RMSNorm  # weight [D]
    gate_up: Linear  # [2I, D]
    down: Linear  # [D, I]
    post_ffn_norm: RMSNorm | None  # weight [D]


    @property
    def linear_bytes(self) -> int:
        """Bytes of projection weights (and their scales): what one token's decode reads."""
        return sum(linear.nbytes for linear in (self.qkv, self.o, self.gate_up, self.down))


def _fuse(config: ModelConfig, w: BlockWeights, dtype: torch.dtype, quant: str) -> _Layer:
    H, KV, hd = config.n_heads, config.n_kv_heads, config.head_dim
    qk_norm = None
    if config.qk_norm:
        if w.q_norm is None or w.k_norm is None:
            raise ValueError(f"Block {w.index} lacks q_norm/k_norm weights, which this model family needs.")
        qk_norm = torch.cat([w.q_norm.expand(H, hd), w.k_norm.expand(KV, hd)]).to(dtype).contiguous()
    qkv_bias = None
    if config.qkv_bias:
        if w.q_bias is None or w.k_bias is None or w.v_bias is None:
            raise ValueError(f"Block {w.index} lacks q/k/v biases, which this model family needs.")
        qkv_bias = torch.cat([w.q_bias, w.k_bias, w.v_bias]).to(dtype).contiguous()
    if config.sandwich_norms and (w.post_attn_norm is None or w.post_ffn_norm is None):
        raise ValueError(f"Block {w.index} lacks post-attention/post-feedforward norms, which this family needs.")

    def norm(t: torch.Tensor | None) -> RMSNorm | None:
        return None if t is None else RMSNorm(t, config.hidden_size, config.rms_norm_eps, dtype)

    return _Layer(
        index=w.index,
        sliding=config.is_sliding(w.index),
        attn_norm=norm(w.attn_norm),
        qkv=make_linear([w.q, w.k, w.v], quant, dtype),
        qkv_bias=qkv_bias,
        qk_norm=qk_norm,
        o=make_linear([w.o], quant, dtype),
        post_attn_norm=norm(w.post_attn_norm) if config.sandwich_norms else None,
        ffn_norm=norm(w.ffn_norm),
        gate_up=make_linear([w.gate, w.up], quant, dtype),
        down=make_linear([w.down], quant, dtype),
        post_ffn_norm=norm(w.post_ffn_norm) if config.sandwich_norms else None,
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
        quant: str = "none",
    ) -> None:
        config.check_span(start, end)
        if [b.index for b in blocks] != list(range(start, end)):
            raise ValueError(f"SpanModel [{start}, {end}) got weights for blocks {[b.index for b in blocks]}.")
        self.config, self.start, self.end, self.dtype = config, start, end, dtype
        self.quant = check_quant_mode(quant)
        self.layers = [_fuse(config, w, dtype, quant) for w in blocks]
        self.head_norm = RMSNorm(None, config.head_dim, config.rms_norm_eps, dtype)  # per-head q/k norm (weight apart)
        # Quantized CPU kernels compute each row alike at any row count; dense ones need tiles.
        self._count_independent = all(linear.count_independent for layer in self.layers
                                      for linear in (layer.qkv, layer.o, layer.gate_up, layer.down))
        self.rope_global = RopeTable(config.rope_dim, config.rope_theta, config.rope_scaling, dtype)
        local_theta = config.rope_local_theta or config.rope_theta
        self.rope_local = RopeTable(config.rope_dim, local_theta, None, dtype)
        c = config  # what a block's kernels see of the model: the tile is measured once per such key
        self._tile_key = ("span", c.hidden_size, c.n_heads, c.n_kv_heads, c.head_dim, c.intermediate_size, c.activation,
                          c.qkv_bias, c.qk_norm, c.sandwich_norms, c.rope_dim, dtype, quant, self._count_independent)
        self.row_tile  # noqa: B018 -- measured at load, not in the first request (cached per key)

    @property
    def row_tile(self) -> int:
        """Rows per call for short steps' rows (see engine/row_tiles.py): `ANY_ROWS` with quantized
        CPU kernels if they pass the row-count check, else the first of `tile_candidates(dtype)` the
        start-up self-check finds exact (else 1); measured once per shapes, dtype and thread count."""
        candidates = (ANY_ROWS, 1) if self._count_independent else tile_candidates(self.dtype)
        return select_tile(self._tile_key, self._tile_is_exact, candidates)

    def _tile_is_exact(self, tile: int) -> bool:
        """The self-check of `tile` on the first block's row-wise work (every block has its shapes)."""
        cfg, layer = self.config, self.layers[0]
        g = torch.Generator().manual_seed(0)
        n = EXACT_STEP_POSITIONS + 1  # samples for counts_are_exact, whose counts go up to 13
        x = torch.randn(n, cfg.hidden_size, generator=g).to(self.dtype)
        a = torch.randn(n, cfg.n_heads * cfg.head_dim, generator=g).to(self.dtype)
        cos, sin = self.rope_global.slice(0, n)
        activation = F.silu if cfg.activation == "silu" else _gelu_tanh

        def rows_in(x, cos, sin):
            return self._rows_in(layer, x, cos, sin)

        def rows_out(x, a):
            return self._rows_out(layer, x, a, activation, True)

        if tile == ANY_ROWS:
            return counts_are_exact(rows_in, (x, cos, sin)) and counts_are_exact(rows_out, (x, a))
        return tile_is_exact(rows_in, (x, cos, sin), tile) and tile_is_exact(rows_out, (x, a), tile)

    @property
    def n_blocks(self) -> int:
        return self.end - self.start

    @property
    def weight_bytes_per_block(self) -> float:
        """Mean bytes of projection weights per block (norms excluded: they are tiny)."""
        return sum(layer.linear_bytes for layer in self.layers) / len(self.layers)

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
        """(cos, sin, first visible key position, mask or None) for the new positions.

        For 2..EXACT_STEP_POSITIONS positions the third item is a tuple: each row's first
        visible key, and there is no mask (rows attend one at a time)."""
        cfg = self.config
        cos, sin = (self.rope_local if sliding else self.rope_global).slice(start, T)
        end = start + T
        window = cfg.sliding_window if sliding else None
        k0 = max(0, start + 1 - window) if window else 0  # keys below k0 are invisible to every query
        if T == 1:
            return cos, sin, k0, None
        if T <= EXACT_STEP_POSITIONS:
            return cos, sin, tuple(max(0, p + 1 - window) if window else 0 for p in range(start, end)), None
        q_pos = torch.arange(start, end)[:, None]
        k_pos = torch.arange(k0, end)[None, :]
        mask = k_pos <= q_pos  # [T, L]
        if window:
            mask = mask & (k_pos > q_pos - window)
        group = cfg.n_heads // cfg.n_kv_heads
        return cos, sin, k0, mask.repeat(group, 1)  # rows follow the folded (group, T) query order

    def forward(self, hidden: torch.Tensor, cache: KVCache, start_position: int) -> torch.Tensor:
        """hidden [1, T, D] -> hidden [1, T, D] after blocks [start, end)."""
        if hidden.dim() != 3 or hidden.shape[0] != 1:
            raise ValueError(f"forward runs one sequence, hidden [1, T, D]; got {list(hidden.shape)}. "
                             "Run several sequences with forward_many.")
        return self.forward_many([SequenceStep(hidden[0], cache, start_position)])[0].unsqueeze(0)

    __call__ = forward

    def _check(self, steps: Sequence[SequenceStep]) -> None:
        """Every step is checked before any cache is touched: a bad one changes nothing."""
        if not steps:
            raise ValueError("forward_many needs at least one step.")
        if len({id(step.cache) for step in steps}) != len(steps):
            raise ValueError("Two steps of one forward_many share a KV cache; run them one after the other.")
        for step in steps:
            if step.hidden.dim() != 2 or step.hidden.shape[1] != self.config.hidden_size or step.hidden.shape[0] < 1:
                raise ValueError(f"Expected hidden states [T, {self.config.hidden_size}], got {list(step.hidden.shape)}.")
            if step.cache.n_blocks != self.n_blocks:
                raise ValueError(f"The KV cache has {step.cache.n_blocks} blocks but this span has {self.n_blocks}.")
            if step.cache.batch_size != 1:
                raise ValueError("Each sequence of forward_many needs its own KV cache of batch size 1.")
            step.cache.check_write(step.start_position, step.hidden.shape[0])

    @torch.inference_mode()
    def forward_many(self, steps: Sequence[SequenceStep]) -> list[torch.Tensor]:
        """Run several sequences through blocks [start, end) at once; returns each one's [T, D]."""
        self._check(steps)
        layout = plan_rows([s.hidden.shape[0] for s in steps], self.row_tile, EXACT_STEP_POSITIONS)
        kinds = {layer.sliding for layer in self.layers}
        plans = [{k: self._attention_plan(s.start_position, s.hidden.shape[0], k) for k in kinds} for s in steps]
        rope = {k: (layout.stack([p[k][0] for p in plans]), layout.stack([p[k][1] for p in plans]))
                for k in kinds}  # cos, sin: [rows, 1, hd] (zero rows for the padding)
        x = layout.stack([s.hidden for s in steps])  # [rows, D]
        if x.dtype != self.dtype:
            x = x.to(self.dtype)
        for i, layer in enumerate(self.layers):
            x = self._block(layer, x, layout, steps, i, [p[layer.sliding] for p in plans], rope[layer.sliding])
        for step in steps:
            step.cache.length = step.start_position + step.hidden.shape[0]
        return [x[a:b] for a, b in layout.offsets]

    def _block(self, layer: _Layer, x: torch.Tensor, layout: RowLayout, steps: Sequence[SequenceStep],
               block: int, plans: list[tuple], rope: tuple) -> torch.Tensor:
        """x [rows, D] -> the same after one block: row-wise work per segment, attention per sequence."""
        cfg = self.config
        qk, v = per_segment(lambda short, x, cos, sin: self._rows_in(layer, x, cos, sin), layout, x, *rope)
        if len(steps) == 1 and not layout.padding:  # one sequence, no padding (quantized decode, a prefill)
            a = self._attend(qk, v, steps[0].cache, block, steps[0].start_position, plans[0])
        else:
            a = layout.stack([self._attend(qk[lo:hi], v[lo:hi], step.cache, block, step.start_position, plan)
                              for step, (lo, hi), plan in zip(steps, layout.offsets, plans)])  # [rows, H*hd]
        activation = F.silu if cfg.activation == "silu" else _gelu_tanh
        return per_segment(lambda short, x, a: self._rows_out(layer, x, a, activation, short), layout, x, a)

    def _rows_in(self, layer: _Layer, x: torch.Tensor, cos: torch.Tensor,
                 sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One segment: x [n, D] -> (q|k after norm and RoPE [n, H+KV, hd], v [n, KV, hd])."""
        cfg = self.config
        H, KV, hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        qkv = layer.qkv(layer.attn_norm(x))
        if layer.qkv_bias is not None:  # added after the matmul: stays row-independent
            qkv = qkv + layer.qkv_bias
        qkv = qkv.view(x.shape[0], H + 2 * KV, hd)
        qk = qkv[:, : H + KV]
        if layer.qk_norm is not None:
            qk = self.head_norm(qk) * layer.qk_norm
        rd = cfg.rope_dim
        if rd == hd:
            qk = apply_rope(qk, cos, sin)
        else:  # partial rotary (Phi-3 variants): only the first rd dims of each head rotate
            qk = torch.cat([apply_rope(qk[..., :rd], cos, sin), qk[..., rd:]], dim=-1)
        return qk, qkv[:, H + KV:]

    def _rows_out(self, layer: _Layer, x: torch.Tensor, a: torch.Tensor, activation, short: bool) -> torch.Tensor:
        """One segment: x [n, D] and its attention output a [n, H*hd] -> x after the block."""
        a = layer.o(a)
        if layer.post_attn_norm is not None:
            a = layer.post_attn_norm(a)
        x = x + a
        gate, up = layer.gate_up(layer.ffn_norm(x)).chunk(2, dim=-1)  # [n, I] each
        m = layer.down(gated_activation(activation, gate, up, short))
        if layer.post_ffn_norm is not None:
            m = layer.post_ffn_norm(m)
        return x + m

    def _attend(self, qk: torch.Tensor, v: torch.Tensor, cache: KVCache, block: int,
                start: int, plan: tuple) -> torch.Tensor:
        """One sequence: qk [T, H+KV, hd] (roped), v [T, KV, hd] -> attention output [T, H*hd]."""
        cfg = self.config
        T = qk.shape[0]
        H, KV, hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        G = H // KV
        _, _, k0, mask = plan
        end = start + T
        cache.write_rows(block, start, qk[:, H:], v)
        if T == 1:
            keys, values = cache.read(block, k0, end)  # [1, KV, L, hd]
            q = qk[0, :H].view(1, KV, G, hd)
            a = F.scaled_dot_product_attention(q, keys, values, scale=cfg.attention_scale)  # [1, KV, G, hd]
            return a.reshape(1, H * hd)
        if mask is None:  # a short step: each row exactly as a single-position step computes it
            rows = []
            for j, first in enumerate(k0):
                keys, values = cache.read(block, first, start + j + 1)
                q = qk[j, :H].reshape(1, KV, G, hd)
                rows.append(F.scaled_dot_product_attention(q, keys, values, scale=cfg.attention_scale))
            return torch.cat(rows).reshape(T, H * hd)
        keys, values = cache.read(block, k0, end)  # [1, KV, L, hd]
        q = qk[:, :H].reshape(T, KV, G, hd).permute(1, 2, 0, 3).reshape(1, KV, G * T, hd)
        a = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=cfg.attention_scale)
        return a.view(KV, G, T, hd).permute(2, 0, 1, 3).reshape(T, H * hd)
