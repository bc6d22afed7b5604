"""ModelHead: the client-side ends of the model -- token embedding in, logits out.

`embed(token_ids)` returns hidden states (Gemma's sqrt(hidden) scale applied); `logits(hidden)`
applies the final RMSNorm, the LM head and, if configured, final logit soft-capping, and returns
float32. Pure compute: no tokenizer, no I/O.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from swarmllm.models.config import ModelConfig
from swarmllm.weights.types import HeadWeights


class ModelHead:
    def __init__(self, config: ModelConfig, weights: HeadWeights, dtype: torch.dtype = torch.float32) -> None:
        self.config, self.dtype = config, dtype
        self.embed_weight = weights.embed.to(dtype).contiguous()
        self.final_norm = weights.final_norm.to(dtype).contiguous()
        tied = weights.lm_head is weights.embed
        self.lm_head = self.embed_weight if tied else weights.lm_head.to(dtype).contiguous()

    @torch.inference_mode()
    def embed(self, token_ids: torch.Tensor | list[int]) -> torch.Tensor:
        """token ids [B, T] (or a flat list, treated as B = 1) -> hidden [B, T, D]."""
        ids = torch.as_tensor(token_ids, dtype=torch.long)
        if ids.dim() == 1:
            ids = ids.unsqueeze(0)
        if int(ids.max()) >= self.config.vocab_size or int(ids.min()) < 0:
            raise ValueError(f"Token ids must lie in [0, {self.config.vocab_size}).")
        hidden = F.embedding(ids, self.embed_weight)
        if self.config.embed_scale != 1.0:
            hidden = hidden * torch.tensor(self.config.embed_scale, dtype=self.dtype)
        return hidden

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [B, T, D] -> float32 logits [B, T, V]."""
        h = F.rms_norm(hidden.to(self.dtype), (self.config.hidden_size,), self.final_norm, self.config.rms_norm_eps)
        logits = F.linear(h, self.lm_head).float()
        cap = self.config.final_logit_softcapping
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits
