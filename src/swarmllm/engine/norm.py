"""RMSNorm as the engine runs it: `F.rms_norm`, or in bfloat16 the same norm through `F.layer_norm`.

    norm = RMSNorm(weight, size, eps, dtype)   # weight [size] or None
    y = norm(x)                                # x [..., size] -> y [..., size], x's dtype

Why: torch 2.13 runs `F.rms_norm` on CPU as a composite of ~25 small ops (upcast, pow, mean,
rsqrt, casts), ~11 us for one bfloat16 row of 576, while `F.layer_norm` is one fused kernel. The
layer norm of [x, -x] is x's RMS norm in its first half: the concatenation has mean 0 and
variance mean(x^2). So in bfloat16 `RMSNorm` computes layer_norm([x, -x], weight=[w, 0])[..., :D],
~5 us a row: a decode step (2 threads, int4) drops by 0.26 ms on smollm2 (61 norms) and by
0.43 ms on gemma3-270m (91 norms), ~4% each.
Both compute in float32 and round once; the results differ from `F.rms_norm` by one bfloat16
ulp in ~0.5% of rows (the float32 statistics round differently). In float32 the trick would
change nearly every row at the 1e-7 level (the family tests compare float32 with transformers)
and is slower past one row, so float32 keeps `F.rms_norm`.

Every row is normalized on its own; the engine calls the norms on fixed-shape row tiles like
every row-wise op, so batched and single steps stay bit-identical (see engine/row_tiles.py).
Pure compute: no I/O.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class RMSNorm:
    """y = x / sqrt(mean(x^2) + eps) * weight over the last dim, computed in float32."""

    def __init__(self, weight: torch.Tensor | None, size: int, eps: float, dtype: torch.dtype) -> None:
        self.size, self.eps = size, eps
        self.via_layer_norm = dtype == torch.bfloat16
        if weight is not None:
            weight = weight.to(dtype)
            if self.via_layer_norm:  # the [-x] half gets weight 0; it is sliced off anyway
                weight = torch.cat([weight, torch.zeros_like(weight)])
            weight = weight.contiguous()
        self.weight = weight  # [size] ([2 * size] through layer_norm) or None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        D = self.size
        if not self.via_layer_norm:
            return F.rms_norm(x, (D,), self.weight, self.eps)
        return F.layer_norm(torch.cat([x, -x], -1), (2 * D,), self.weight, None, self.eps)[..., :D].contiguous()
