"""ModelHead: the client-side ends of the model -- token embedding in, logits out.

`embed(token_ids)` returns hidden states (Gemma's sqrt(hidden) scale applied); `logits(hidden)`
applies the final RMSNorm, the LM head and, if configured, final logit soft-capping, and returns
float32. Pure compute: no tokenizer, no I/O.

quant="int8" or "int4" keeps the LM head (and the embedding table when tied) as per-row int8
(`engine.quant.Int8Linear`): the head is a large share of the bytes read per token for small
models (smollm2-135m: 49152 x 576). An embedding lookup then reads int8 rows and scales them.
Int4 is not used here: looking rows up in a packed int4 table has no kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from swarmllm.engine.norm import RMSNorm
from swarmllm.engine.quant import DenseLinear, Int8Linear, check_quant_mode, make_linear
from swarmllm.models.config import ModelConfig
from swarmllm.weights.types import HeadWeights


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
        """hidden [B, T, D] -> float32 logits [B, T, V]."""
        if hidden.dtype != self.dtype:
            hidden = hidden.to(self.dtype)
        h = self.final_norm(hidden)
        logits = self.lm_head(h.reshape(-1, h.shape[-1])).view(*h.shape[:-1], -1).float()
        cap = self.config.final_logit_softcapping
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits
