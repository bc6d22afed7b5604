"""GGUF 4-bit tensors as codes + per-group scale and offset, without a float round trip.

Q4_0, Q4_1 and Q4_K all store 32-element groups of 4-bit codes q with one scale and one
offset per group (w = q * scale + min), which is exactly what a group-32 int4 matmul kernel
takes. `int4_codes(raw, type, shape)` unpacks the bytes of such a tensor into `Int4Codes`
(codes bit-for-bit, scales and offsets computed in float32 from the file's float16 fields,
so `Int4Codes.dequantize()` equals `gguf.quants.dequantize` to float32 rounding). Other
types (Q5_0, Q6_K, Q8_0, F16, ...) return None: they have no exact 4-bit form and the
engine re-quantizes their dequantized values instead.

Layouts (ggml-common.h): Q4_0 block = d:f16, qs[16]; w = d * (q - 8).
Q4_1 block = d:f16, m:f16, qs[16]; w = d * q + m. In both, element i < 16 is the low nibble
of qs[i] and element i + 16 its high nibble. Q4_K super-block (256 elements) = d:f16,
dmin:f16, scales[12] (eight 6-bit scales and eight 6-bit mins), qs[128]; sub-block 2j takes
the low nibbles of qs[32j:32j+32], sub-block 2j+1 their high nibbles; w = d*sc*q - dmin*m.
"""

from __future__ import annotations

import numpy as np
import torch

from swarmllm.weights.types import Int4Codes

GROUP = 32
_Q4_0, _Q4_1, _Q4_K = 2, 3, 12  # gguf.GGMLQuantizationType values
INT4_TYPES = (_Q4_0, _Q4_1, _Q4_K)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """qs [..., 16] uint8 -> codes [..., 32]: low nibbles first, then high nibbles."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _f16(raw: np.ndarray, offset: int) -> np.ndarray:
    return raw[..., offset:offset + 2].copy().view(np.float16)[..., 0].astype(np.float32)


def _q4_0_q4_1(blocks: np.ndarray, with_min: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d = _f16(blocks, 0)
    header = 4 if with_min else 2
    codes = _nibbles(blocks[..., header:header + 16])
    mins = _f16(blocks, 2) if with_min else -8.0 * d
    return codes, d, mins


def _q4_k(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d, dmin = _f16(blocks, 0)[..., None], _f16(blocks, 2)[..., None]
    s = blocks[..., 4:16].astype(np.uint8)  # [..., 12]
    sc = np.empty(s.shape[:-1] + (8,), np.uint8)
    mn = np.empty_like(sc)
    sc[..., :4], mn[..., :4] = s[..., 0:4] & 63, s[..., 4:8] & 63
    sc[..., 4:] = (s[..., 8:12] & 0x0F) | ((s[..., 0:4] >> 6) << 4)
    mn[..., 4:] = (s[..., 8:12] >> 4) | ((s[..., 4:8] >> 6) << 4)
    qs = blocks[..., 16:144].reshape(blocks.shape[:-1] + (4, 32))  # four chunks of 64 elements
    codes = np.stack([qs & 0x0F, qs >> 4], axis=-2).reshape(blocks.shape[:-1] + (8, 32))
    return codes, d * sc.astype(np.float32), -(dmin * mn.astype(np.float32))


def int4_codes(raw: np.ndarray, tensor_type: int, hf_shape: tuple[int, ...]) -> Int4Codes | None:
    """raw: the tensor's bytes [rows, row_bytes]; hf_shape: (N, K). None if the type is not 4-bit."""
    if tensor_type not in INT4_TYPES or len(hf_shape) != 2:
        return None
    N, K = hf_shape
    if tensor_type == _Q4_K:
        blocks = raw.reshape(N, K // 256, 144)
        codes, scales, mins = _q4_k(blocks)
    else:
        blocks = raw.reshape(N, K // GROUP, 20 if tensor_type == _Q4_1 else 18)
        codes, scales, mins = _q4_0_q4_1(blocks, tensor_type == _Q4_1)
    return Int4Codes(
        codes=torch.from_numpy(np.ascontiguousarray(codes.reshape(N, K), dtype=np.uint8)),
        scales=torch.from_numpy(np.ascontiguousarray(scales.reshape(N, K // GROUP), dtype=np.float32)),
        mins=torch.from_numpy(np.ascontiguousarray(mins.reshape(N, K // GROUP), dtype=np.float32)),
        group_size=GROUP,
    )
