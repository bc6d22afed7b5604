"""ModelHead: the client-side ends of the model -- token embedding in, logits out.

`embed(token_ids)` returns hidden states (Gemma's sqrt(hidden) scale applied); `logits(hidden)`
applies the final RMSNorm, the LM head and, if configured, final logit soft-capping, and returns
float32. Pure compute: no tokenizer, no I/O.

quant="int8" or "int4" keeps the LM head (and the embedding table when tied) as per-row int8
(`engine.quant.Int8Linear`): the head is a large share of the bytes read per token for small
models (smollm2-135m: 49152 x 576). An embedding lookup then reads int8 rows and scales them.
Int4 is not used here: looking rows up in a packed int4 table has no kernel.

Row exactness: a row's logits do not depend on the other rows of the call (a verify step's k
rows equal k single-row decodes, a batched head equals per-session heads). As in the blocks
(see engine/row_tiles.py), sequences of at most `EXACT_STEP_POSITIONS` positions are computed
in fixed-shape tiles of `row_tile` rows, longer ones (a prompt's logits) in one call each. The
dense head's tile is 1, one matrix-vector call per row, exact by construction and the fastest
for the usual single decode row: a 4-row float32 call of the 49152 x 576 smollm2 head costs
2.5-5x a 1-row one on this AMD EPYC (MKL's GEMM path vs its GEMV). The int8 head runs one call
for all rows (its kernel is row-count independent, checked at start-up).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from swarmllm.engine.blocks import EXACT_STEP_POSITIONS
from swarmllm.engine.norm import RMSNorm
from swarmllm.engine.quant import DenseLinear, Int8Linear, check_quant_mode, make_linear
from swarmllm.engine.row_tiles import ANY_ROWS, counts_are_exact, per_segment, plan_rows, select_tile, tile_is_exact
from swarmllm.models.config import ModelConfig
from swarmllm.weights.types import HeadWeights

HEAD_TILE_CANDIDATES = (1,)
"""Tiles tried for the dense LM head: only 1 (see the module docstring for the cost of more rows)."""


class ModelHead:
    def __init__(self, config: ModelConfig, weights: HeadWeights, dtype: torch.dtype = torch.float32,
                 quant: str = "none") -> None:
        self.config, self.dtype, self.quant = config, dtype, check_quant_mode(quant)
        self.final_norm = RMSNorm(weights.final_norm, config.hidden_size, config.rms_norm_eps, dtype)
        tied = weights.lm_head is weights.embed
        mode = "none" if quant == "none" else "int8"
        self.lm_head: DenseLinear | Int8Linear = make_linear([weights.lm_head], mode, dtype)  # type: ignore[assignment]
        if tied and isinstance(self.lm_head, Int8Linear):
            self.embed_weight, self._embed_scales = self.lm_head.codes, self.lm_head.scales[:, None]
        elif tied:
            self.embed_weight, self._embed_scales = self.lm_head.weight, None
        else:
            self.embed_weight, self._embed_scales = weights.embed.to(dtype).contiguous(), None
        self._embed_scale = torch.tensor(config.embed_scale, dtype=dtype)  # Gemma's sqrt(hidden)
        self._tile_key = ("head", config.hidden_size, config.vocab_size, config.final_logit_softcapping, dtype, quant)
        self.row_tile  # noqa: B018 -- measured at load, not in the first request (cached per key)

    @property
    def row_tile(self) -> int:
        """Rows per call for short sequences' rows (see the module docstring and engine/row_tiles.py)."""
        candidates = (ANY_ROWS, 1) if self.lm_head.count_independent else HEAD_TILE_CANDIDATES
        return select_tile(self._tile_key, self._tile_is_exact, candidates)

    def _tile_is_exact(self, tile: int) -> bool:
        g = torch.Generator().manual_seed(0)
        sample = (torch.randn(9, self.config.hidden_size, generator=g).to(self.dtype),)
        if tile == ANY_ROWS:  # fewer counts than the blocks': each row of the int8 head reads 28 MB
            return counts_are_exact(self._rows, sample, (1, 2, 3, 5))
        return tile_is_exact(self._rows, sample, tile)

    @property
    def nbytes(self) -> int:
        """Bytes of the embedding table and LM head (counted once when tied)."""
        embed = self.embed_weight.numel() * self.embed_weight.element_size()
        shared = self.embed_weight is getattr(self.lm_head, "codes", getattr(self.lm_head, "weight", None))
        return self.lm_head.nbytes + (0 if shared else embed)

    @torch.inference_mode()
    def embed(self, token_ids: torch.Tensor | list[int]) -> torch.Tensor:
        """token ids [B, T] (or a flat list, treated as B = 1) -> hidden [B, T, D]."""
        ids = torch.as_tensor(token_ids, dtype=torch.long)
        if ids.dim() == 1:
            ids = ids.unsqueeze(0)
        if int(ids.max()) >= self.config.vocab_size or int(ids.min()) < 0:
            raise ValueError(f"Token ids must lie in [0, {self.config.vocab_size}).")
        hidden = F.embedding(ids, self.embed_weight)
        if self._embed_scales is not None:
            hidden = hidden.to(self.dtype) * F.embedding(ids, self._embed_scales)
        if self.config.embed_scale != 1.0:
            hidden = hidden * self._embed_scale
        return hidden

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [B, T, D] (B sequences of T positions) -> float32 logits [B, T, V].

        Rows of sequences of at most `EXACT_STEP_POSITIONS` positions are computed alike
        whatever else is in the call; pass independent rows (one per session) as [N, 1, D]."""
        if hidden.dtype != self.dtype:
            hidden = hidden.to(self.dtype)
        B, T, D = hidden.shape
        layout = plan_rows([T] * B, self.row_tile, EXACT_STEP_POSITIONS)
        out = per_segment(self._rows_of, layout, layout.stack(list(hidden.unbind(0))))
        if B == 1 and layout.rows == T:
            return out.view(1, T, -1)
        return torch.stack([out[a:b] for a, b in layout.offsets])

    def _rows_of(self, short: bool, h: torch.Tensor) -> torch.Tensor:
        return self._rows(h)

    def _rows(self, h: torch.Tensor) -> torch.Tensor:
        """One call: hidden rows [n, D] -> float32 logits [n, V] (final norm, LM head, soft-cap)."""
        logits = self.lm_head(self.final_norm(h)).float()
        cap = self.config.final_logit_softcapping
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits
