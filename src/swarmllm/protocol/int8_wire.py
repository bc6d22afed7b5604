"""The "int8" wire format of hidden states: blockwise int8 on two curves, plus a few outliers per row.

Rows are the last axis (one position's hidden state). Per row, the `OUTLIERS` values of
largest magnitude are sent apart (u16 column, bfloat16 value) and zeroed; the rest is cut
into blocks of 32 values, each sent as one scale s and 32 int8 codes q in [-127, 127]. A
block is decoded on one of two curves, named by the sign bit of its scale:

    linear:      x = s * q                 (s = block absmax / 127)
    square-law:  x = s * q * |q| / 127     (same s: q = 127 still means the absmax)

Payload, k = min(OUTLIERS, cols), n = ceil(cols / 32):

    scales [rows, n] fp16 (sign bit: square-law) | outlier columns [rows, k] u16
    | outlier values [rows, k] bf16 | codes [rows, cols] int8 (0 at the outlier columns)

For a 576-wide row that is 644 bytes (0.280x fp32); 640 wide, 712 (0.278x).

Why the pieces (measured in benchmarks/results/wire-summary.md):
- Outliers: the residual stream has a few channels far larger than the rest (smollm2 ~400
  vs a median of ~2; Gemma 3 up to 1e5, beyond fp16), and a block holding one would quantize
  its 31 neighbours with a coarse step. bfloat16 keeps their range at half the bytes of fp32;
  their error (2^-8 relative at most) is far below the blocks'.
- Two curves: a channel's error matters relative to that channel's own size, not to its
  block's maximum: RMSNorm weights undo channel scales (Gemma 3's final norm weight vs channel
  RMS: correlation -0.89 in log space, weights 0.19 to 301), so a small channel next to a big
  one is amplified downstream. The square-law curve gives small values steps up to 11x finer
  (and the largest ones 2x coarser). The encoder picks, per block, the curve with the lower
  sum of err^2 / (x^2 + (absmax / 20)^2): relative error, with a floor so that values near
  zero do not decide. Linear wins on Gaussian-like blocks (embeddings), square-law on the
  heavy-tailed residual stream. Measured (2048 positions, all four crossings of a 3-way
  split): Gemma 3 KL vs fp32 3.0e-3 (linear only) -> 4.7e-4, top-1 97.1% -> 99.0%; smollm2
  KL 1.6e-4 -> 1.9e-4, top-1 99.5% -> 99.3%.
- Scales in fp16 (11 bits), not bfloat16 (8 bits): the block's largest value then comes
  back almost exactly, and on Gemma 3 bfloat16 scales cost 10% more KL. Blocks whose absmax
  (outliers removed) exceeds 8.3e6 are clipped to it; none of the measured models come close.

Blocks never cross rows, so a step of T positions encodes exactly like T single-position
steps, and encoding is deterministic (failover replays send the same bytes). Pure functions
of tensors and bytes; lengths are checked by the caller (codec.tensor_nbytes).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

BLOCK = 32          # values per block (one scale each)
OUTLIERS = 8        # values per row sent apart, in bfloat16
LEVELS = 127        # codes are in [-LEVELS, LEVELS]
_CHOICE_FLOOR = 1 / 20  # relative-error floor of the curve choice, as a fraction of the block absmax
_SQUARE_FLAG = 0x8000   # sign bit of a (positive) fp16 scale: the block uses the square-law curve
_FP16_MAX = 65504.0


def rows_cols(shape: tuple[int, ...]) -> tuple[int, int]:
    """(rows, values per row): blocks and outliers are per row of the last axis."""
    if not shape:
        return 1, 1
    rows = 1
    for size in shape[:-1]:
        rows *= size
    return rows, shape[-1]


def payload_bytes(shape: tuple[int, ...]) -> int:
    rows, cols = rows_cols(shape)
    return rows * (-(-cols // BLOCK) * 2 + min(OUTLIERS, cols) * 4 + cols)


def encode(t: torch.Tensor) -> bytes:
    rows, cols = rows_cols(tuple(t.shape))
    x = t.detach().cpu().float().reshape(rows, cols)
    k, n_blocks = min(OUTLIERS, cols), -(-cols // BLOCK)
    columns = x.abs().topk(k, dim=1).indices.sort(dim=1).values  # [rows, k]
    outliers = x.gather(1, columns).to(torch.bfloat16).view(torch.int16).to(torch.int32)
    x = x.scatter(1, columns, 0.0)
    blocks = F.pad(x, (0, n_blocks * BLOCK - cols)).view(rows, n_blocks, BLOCK)
    absmax = blocks.abs().amax(dim=-1, keepdim=True)
    # The fp16-rounded scale is the one the receiver sees, so quantize with exactly that.
    s = (absmax / LEVELS).clamp(max=_FP16_MAX).to(torch.float16)
    scale_bits = s.view(torch.int16).to(torch.int32) & 0x7FFF
    s = s.float()
    units = blocks.abs() / torch.where(s > 0, s, 1.0)  # |x| in steps of the linear curve, in [0, 127]
    linear = units.round().clamp(max=LEVELS)
    square = _nearest_square_root(units * LEVELS).clamp(max=LEVELS)
    floor = (absmax * _CHOICE_FLOOR) ** 2

    def cost(decoded_units: torch.Tensor) -> torch.Tensor:
        return ((decoded_units * s - blocks.abs()) ** 2 / (blocks ** 2 + floor)).nan_to_num(0.0).sum(-1, keepdim=True)

    use_square = (cost(square * square / LEVELS) < cost(linear)) & (s > 0)
    q = torch.where(use_square, square, linear) * blocks.sign()
    q = q.to(torch.int8).view(rows, n_blocks * BLOCK)[:, :cols]
    scale_bits = scale_bits | use_square.to(torch.int32) * _SQUARE_FLAG
    return b"".join((_u16(scale_bits), _u16(columns), _u16(outliers), q.contiguous().numpy().tobytes()))


def decode(shape: tuple[int, ...], payload: memoryview | bytes) -> torch.Tensor:
    """Float32 tensor of `shape`; garbage bytes decode to garbage numbers, never to an exception."""
    rows, cols = rows_cols(shape)
    k, n_blocks = min(OUTLIERS, cols), -(-cols // BLOCK)
    ends = np.cumsum([rows * n_blocks * 2, rows * k * 2, rows * k * 2])
    scale_bits = np.frombuffer(payload[:ends[0]], dtype=np.uint16).reshape(rows, n_blocks, 1)
    columns = np.frombuffer(payload[ends[0]:ends[1]], dtype=np.uint16).astype(np.int64).reshape(rows, k)
    outliers = _bf16_to_float32(np.frombuffer(payload[ends[1]:ends[2]], dtype=np.uint16)).reshape(rows, k)
    q = np.frombuffer(payload[ends[2]:], dtype=np.int8).astype(np.float32).reshape(rows, cols)
    q = np.pad(q, ((0, 0), (0, n_blocks * BLOCK - cols))).reshape(rows, n_blocks, BLOCK)
    scales = (scale_bits & 0x7FFF).view(np.float16).astype(np.float32)
    q = np.where(scale_bits & _SQUARE_FLAG, q * np.abs(q) / LEVELS, q)
    x = torch.from_numpy((q * scales).reshape(rows, n_blocks * BLOCK)[:, :cols].copy())
    columns = torch.from_numpy(columns).clamp(max=max(0, cols - 1))  # a bad column from garbage stays in the row
    return x.scatter(1, columns, torch.from_numpy(outliers))


# --- helpers -----------------------------------------------------------------------------
def _nearest_square_root(t: torch.Tensor) -> torch.Tensor:
    """The integer q >= 0 whose square is nearest to t (ties go down), exact despite float sqrt."""
    q = t.sqrt().floor()
    return q + ((t - q * q) > ((q + 1) * (q + 1) - t)).float()


def _bf16_to_float32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _u16(values: torch.Tensor) -> bytes:
    return values.to(torch.int32).numpy().astype(np.uint16).tobytes()
