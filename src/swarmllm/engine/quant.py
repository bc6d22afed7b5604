"""Quantized linear layers: weights kept as int8 or int4 in memory and multiplied by PyTorch's
weight-only kernels, never dequantized per step.

    linear = make_linear([q, k, v], "int4", torch.bfloat16)   # parts are fused along rows
    y = linear(x)                                              # x [M, K] -> y [M, N]

Modes (`QUANT_MODES`):
- "none": a dense weight in the compute dtype, `F.linear`.
- "int8": symmetric per-output-channel int8 (absmax / 127), `aten._weight_int8pack_mm`
  (CPU and CUDA); 1 byte per weight + one scale per row.
- "int4": asymmetric int4 in groups of 32 along the input (w = (q - 8) * scale + zero),
  `aten._weight_int4pack_mm_for_cpu` on CPU, `aten._weight_int4pack_mm` on CUDA; half a
  byte per weight + 2 scales per 32 weights. A GGUF's Q4_0/Q4_1/Q4_K tensors come in as
  `Int4Codes` and are re-packed code for code (no float round trip); float sources are
  quantized here by rounding to nearest, with an optional clip search (`quantize_int4`).

Row independence: a row of the output must depend only on its own input row, not on the row
count or the other rows (continuous batching, replays, verify steps; see engine/row_tiles.py).
Dense layers run on MKL / oneDNN GEMMs, which pick their kernel from the row count, so the
engine calls them on fixed-shape row tiles (`count_independent = False`). The int8 and int4
weight-only CPU kernels accumulate every row by the same per-row loop over K whatever the row
count (torch's `tinygemm_kernel` blocks of 1-4 rows differ only in how many rows share a weight
load), so they are called on all the rows at once (`count_independent = True`; measured
bit-identical for 1..63 rows in tests/unit/test_engine_quant.py, and re-checked at start-up by
`row_tiles.counts_are_exact`). Tiling them would cost: a 4-row int4 matmul takes ~1.7x the time
of a 1-row one. On CUDA their behaviour is unmeasured, so they are tiled like dense layers.

Kernel dtype: torch 2.13's CPU kernels for these ops are vectorized for bfloat16 activations
only; with float32 or float16 activations they run a scalar loop 40-100x slower (measured on
a 3072x576 layer, 4 rows: bf16 0.1 ms, fp32 13-15 ms). So the quantized layers multiply in
`KERNEL_DTYPE` (bfloat16) whatever the compute dtype: float32 activations are rounded to
bfloat16 on the way in and the result cast back. The scales are stored in the kernel dtype,
as the ops require; a GGUF's float16 scales lose 3 mantissa bits there (relative 2^-9), so
the file's dequantized weights are reproduced exactly only with kernel_dtype=float32 (slow;
tests use it to check the re-packing).

Per-call overhead: a decode step calls these layers 4 times per block, so `__call__` does the
least Python it can: the kernels are called through their C++ bindings (`torch._weight_*`; the
`torch.ops.aten` route costs several us more per call) and no-op casts are skipped (`Tensor.to`
costs ~1-2 us even when it has nothing to do).

Pure compute: no I/O.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from swarmllm.weights.types import Int4Codes, Weight

QUANT_MODES = ("none", "int8", "int4")
INT4_GROUP = 32
_CUDA_INNER_K_TILES = 8
KERNEL_DTYPE = torch.bfloat16


def check_quant_mode(mode: str) -> str:
    if mode not in QUANT_MODES:
        raise ValueError(f"Unknown weight quantization {mode!r}; use one of: {', '.join(QUANT_MODES)}.")
    return mode


class DenseLinear:
    """y = x @ W.T with W [N, K] in the compute dtype."""

    count_independent = False  # BLAS kernels pick their path from the row count (see row_tiles.py)

    def __init__(self, weight: torch.Tensor) -> None:
        self.weight = weight.contiguous()
        self.out_features, self.in_features = weight.shape

    @property
    def nbytes(self) -> int:
        return self.weight.numel() * self.weight.element_size()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


class Int8Linear:
    """Per-output-channel int8: W = codes [N, K] (int8) * scales [N]."""

    def __init__(self, codes: torch.Tensor, scales: torch.Tensor, kernel_dtype: torch.dtype = KERNEL_DTYPE) -> None:
        self.codes, self.scales = codes.contiguous(), scales.to(kernel_dtype).contiguous()
        # The CPU kernel computes each row alike at any row count (see above); others are unmeasured.
        self.count_independent = codes.device.type == "cpu"
        self.out_features, self.in_features = codes.shape
        self.kernel_dtype = kernel_dtype

    @property
    def nbytes(self) -> int:
        return self.codes.numel() + self.scales.numel() * self.scales.element_size()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == self.kernel_dtype:  # the usual case, kept to one Python-level check
            return torch._weight_int8pack_mm(x, self.codes, self.scales)
        return torch._weight_int8pack_mm(x.to(self.kernel_dtype), self.codes, self.scales).to(x.dtype)

    def dequantize(self) -> torch.Tensor:
        return self.codes.float() * self.scales.float()[:, None]


class Int4Linear:
    """Group-wise int4 packed for the device's kernel; scales_zeros [K / group, N, 2]."""

    def __init__(self, codes: Int4Codes, kernel_dtype: torch.dtype = KERNEL_DTYPE,
                 device: torch.device | str = "cpu") -> None:
        N, K = codes.shape
        self.out_features, self.in_features, self.group_size = N, K, codes.group_size
        self.kernel_dtype = kernel_dtype
        self.device = torch.device(device)
        # The CPU kernel computes each row alike at any row count (see above); others are unmeasured.
        self.count_independent = self.device.type == "cpu"
        self._op = torch._weight_int4pack_mm_for_cpu if self.device.type == "cpu" else torch._weight_int4pack_mm
        # Kernel form: w = (q - 8) * scale + zero, so zero = min + 8 * scale (exact in float32).
        zeros = codes.mins + 8 * codes.scales
        self.scales_zeros = torch.stack([codes.scales.t(), zeros.t()], dim=-1).to(kernel_dtype).contiguous().to(self.device)
        q = codes.codes.to(torch.int32)
        if self.device.type == "cpu":
            self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
        else:  # CUDA layout: two codes per byte (even index in the high nibble), tiled by the op
            pairs = (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8).to(self.device)
            self.packed = torch.ops.aten._convert_weight_to_int4pack(pairs, _CUDA_INNER_K_TILES)

    @property
    def nbytes(self) -> int:
        return self.packed.numel() * self.packed.element_size() + self.scales_zeros.numel() * self.scales_zeros.element_size()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == self.kernel_dtype:  # the usual case, kept to one Python-level check
            return self._op(x, self.packed, self.group_size, self.scales_zeros)
        return self._op(x.to(self.kernel_dtype), self.packed, self.group_size, self.scales_zeros).to(x.dtype)


Linear = DenseLinear | Int8Linear | Int4Linear


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float [N, K] -> (int8 codes [N, K], float32 scales [N]): symmetric absmax per row."""
    w = weight.float()
    scales = (w.abs().amax(dim=1) / 127).clamp(min=1e-12)
    codes = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)
    return codes, scales


def quantize_int4(weight: torch.Tensor, group_size: int = INT4_GROUP, clip_search: bool = False,
                  importance: torch.Tensor | None = None) -> Int4Codes:
    """float [N, K] -> asymmetric group-wise 4-bit codes, rounding to nearest.

    clip_search: also try shrinking each group's [min, max] range (factors 1.0 .. 0.8) and keep
    the one with the least squared error, weighted per input channel by `importance` [K]
    (e.g. mean squared activations from calibration text) when given. A cheap stand-in for
    GPTQ: it trades a little clipping of outliers for finer steps elsewhere.
    """
    N, K = weight.shape
    if K % group_size:
        raise ValueError(f"int4 needs the input size ({K}) to be a multiple of the group size {group_size}.")
    w = weight.float().view(N, K // group_size, group_size)
    lo, hi = w.amin(-1), w.amax(-1)
    weights = None if importance is None else importance.float().view(1, K // group_size, group_size)
    best = None
    for shrink in ((1.0, 0.95, 0.9, 0.85, 0.8) if clip_search else (1.0,)):
        a, b = lo * shrink, hi * shrink
        scales = ((b - a) / 15).clamp(min=1e-12)
        codes = torch.round((w - a[..., None]) / scales[..., None]).clamp(0, 15)
        error = (codes * scales[..., None] + a[..., None] - w).square()
        error = (error if weights is None else error * weights).sum(-1)  # [N, G]
        if best is None:
            best = [error, codes, scales, a]
        else:
            better = error < best[0]
            best[0] = torch.where(better, error, best[0])
            best[1] = torch.where(better[..., None], codes, best[1])
            best[2] = torch.where(better, scales, best[2])
            best[3] = torch.where(better, a, best[3])
    _, codes, scales, mins = best
    return Int4Codes(codes.view(N, K).to(torch.uint8), scales.contiguous(), mins.contiguous(), group_size)


def _dense(part: Weight) -> torch.Tensor:
    return part.dequantize() if isinstance(part, Int4Codes) else part


def _int4(part: Weight) -> Int4Codes:
    if isinstance(part, Int4Codes) and part.group_size == INT4_GROUP:
        return part
    return quantize_int4(_dense(part).float())


def make_linear(parts: Sequence[Weight], mode: str, dtype: torch.dtype,
                device: torch.device | str = "cpu") -> Linear:
    """One linear layer over `parts` stacked along the output rows (e.g. q|k|v).

    An int4 layer whose input size is not a multiple of the group size falls back to int8.
    """
    check_quant_mode(mode)
    if mode == "int4" and parts[0].shape[1] % INT4_GROUP == 0:
        codes = [_int4(p) for p in parts]
        fused = codes[0] if len(codes) == 1 else Int4Codes(
            torch.cat([c.codes for c in codes]), torch.cat([c.scales for c in codes]),
            torch.cat([c.mins for c in codes]), INT4_GROUP)
        return Int4Linear(fused, device=device)
    weight = torch.cat([_dense(p) for p in parts]) if len(parts) > 1 else _dense(parts[0])
    if mode == "none":
        return DenseLinear(weight.to(dtype).to(device))
    codes, scales = quantize_int8(weight)  # from the float32 values, not the compute-dtype ones
    return Int8Linear(codes.to(device), scales.to(device))
