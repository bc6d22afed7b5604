"""Frame encoding: one message header plus an optional raw tensor payload.

A frame is `[u32 header length, little endian][header JSON][payload bytes]`. The transport
adds its own length prefix around the frame. Decoding validates the header against the
message schema and the payload length against the header's `TensorMeta`, so handlers only
ever see well-formed messages; anything else raises `ProtocolError(MALFORMED)`.

Tensor payloads are raw little-endian elements in the wire dtype, except "int8": blockwise
symmetric int8, for slow links. Each row (the last axis) is cut into blocks of 32 values;
a block is sent as one fp16 scale (its absmax / 127) and 32 int8 values. The payload is all
scales `[rows, ceil(cols / 32)]` fp16, then all values `[rows, cols]` int8: 1.0625 bytes a
value, 0.27x fp32. Blocks never cross rows, so a step of T positions quantizes exactly like
T single-position steps, and encoding is deterministic (failover replays send the same bytes).
"""

from __future__ import annotations

import struct

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import TypeAdapter, ValidationError

from swarmllm.protocol.errors import ErrorCode, ProtocolError
from swarmllm.protocol.messages import Message, TensorMeta

MAX_HEADER_BYTES = 64 * 1024
MAX_PAYLOAD_BYTES = 256 * 1024 * 1024

_MESSAGE_ADAPTER: TypeAdapter = TypeAdapter(Message)
_HEADER_LEN = struct.Struct("<I")
_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_ITEM_SIZE = {"float32": 4, "float16": 2, "bfloat16": 2}
INT8_BLOCK = 32     # values per int8 block (one scale each)
_INT8_SCALE_BYTES = 2  # fp16 scales
_FP16_MAX = 65504.0


def encode_frame(message, payload: bytes | memoryview = b"") -> bytes:
    header = message.model_dump_json().encode()
    return b"".join((_HEADER_LEN.pack(len(header)), header, payload))


def decode_frame(frame: bytes) -> tuple[object, memoryview]:
    """Parse a frame into (message, payload). Raises ProtocolError(MALFORMED) on any defect."""
    if len(frame) < _HEADER_LEN.size:
        raise ProtocolError(ErrorCode.MALFORMED, f"frame of {len(frame)} bytes is too short for a header")
    (header_len,) = _HEADER_LEN.unpack_from(frame)
    if header_len > MAX_HEADER_BYTES or _HEADER_LEN.size + header_len > len(frame):
        raise ProtocolError(ErrorCode.MALFORMED, f"header length {header_len} does not fit a frame of {len(frame)} bytes")
    header = frame[_HEADER_LEN.size:_HEADER_LEN.size + header_len]
    try:
        message = _MESSAGE_ADAPTER.validate_json(header)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "message"
        raise ProtocolError(ErrorCode.MALFORMED, f"invalid message header: {where}: {first.get('msg')}") from None
    payload = memoryview(frame)[_HEADER_LEN.size + header_len:]
    meta = getattr(message, "tensor", None)
    expected = tensor_nbytes(meta) if meta is not None else 0
    if len(payload) != expected:
        raise ProtocolError(ErrorCode.MALFORMED, f"payload is {len(payload)} bytes but the header describes {expected}")
    return message, payload


def tensor_nbytes(meta: TensorMeta) -> int:
    count = 1
    for size in meta.shape:
        if size < 0:
            raise ProtocolError(ErrorCode.BAD_SHAPE, f"negative dimension in shape {meta.shape}")
        count *= size
    if meta.dtype == "int8":
        rows, cols = _rows_cols(meta.shape)
        nbytes = count + rows * -(-cols // INT8_BLOCK) * _INT8_SCALE_BYTES
    else:
        nbytes = count * _ITEM_SIZE[meta.dtype]
    if nbytes > MAX_PAYLOAD_BYTES:
        raise ProtocolError(ErrorCode.BAD_SHAPE, f"tensor of shape {meta.shape} exceeds {MAX_PAYLOAD_BYTES} bytes")
    return nbytes


def encode_tensor(tensor: torch.Tensor, wire_dtype: str) -> tuple[TensorMeta, bytes]:
    """Convert to the wire format and return (meta, raw bytes)."""
    meta = TensorMeta(dtype=wire_dtype, shape=tuple(tensor.shape))
    if wire_dtype == "int8":
        return meta, _quantize_int8(tensor.detach().cpu().float())
    t = tensor.detach().to(_TORCH_DTYPES[wire_dtype]).contiguous().cpu()
    raw = t.view(torch.uint8).numpy().tobytes() if t.dtype == torch.bfloat16 else t.numpy().tobytes()
    return meta, raw


def decode_tensor(meta: TensorMeta, payload: memoryview | bytes, compute_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Rebuild a tensor from raw bytes (copying, so the frame can be freed) in compute_dtype."""
    expected = tensor_nbytes(meta)
    if len(payload) != expected:
        raise ProtocolError(ErrorCode.MALFORMED, f"payload is {len(payload)} bytes but {meta.dtype} "
                                                 f"{list(meta.shape)} needs {expected}")
    if meta.dtype == "int8":
        flat = _dequantize_int8(meta.shape, payload)
    elif meta.dtype == "bfloat16":
        flat = torch.from_numpy(np.frombuffer(payload, dtype=np.uint16).copy()).view(torch.bfloat16)
    else:
        flat = torch.from_numpy(np.frombuffer(payload, dtype=meta.dtype).copy())
    return flat.reshape(meta.shape).to(compute_dtype)


def _rows_cols(shape: tuple[int, ...]) -> tuple[int, int]:
    """(rows, values per row): int8 blocks run along the last axis."""
    if not shape:
        return 1, 1
    rows = 1
    for size in shape[:-1]:
        rows *= size
    return rows, shape[-1]


def _quantize_int8(t: torch.Tensor) -> bytes:
    rows, cols = _rows_cols(tuple(t.shape))
    n_blocks = -(-cols // INT8_BLOCK)
    x = F.pad(t.reshape(rows, cols), (0, n_blocks * INT8_BLOCK - cols)).view(rows, n_blocks, INT8_BLOCK)
    # The fp16-rounded scale is the one the receiver sees, so quantize with exactly that.
    scales = (x.abs().amax(dim=-1, keepdim=True) / 127).clamp(max=_FP16_MAX).to(torch.float16)
    s = scales.float()
    q = torch.where(s > 0, x / torch.where(s > 0, s, 1.0), 0.0).round().clamp(-127, 127).to(torch.int8)
    q = q.view(rows, n_blocks * INT8_BLOCK)[:, :cols].contiguous()
    return scales.numpy().tobytes() + q.numpy().tobytes()


def _dequantize_int8(shape: tuple[int, ...], payload: memoryview | bytes) -> torch.Tensor:
    rows, cols = _rows_cols(shape)
    n_blocks = -(-cols // INT8_BLOCK)
    split = rows * n_blocks * _INT8_SCALE_BYTES
    scales = torch.from_numpy(np.frombuffer(payload[:split], dtype=np.float16).astype(np.float32))
    q = torch.from_numpy(np.frombuffer(payload[split:], dtype=np.int8).astype(np.float32))
    q = F.pad(q.view(rows, cols), (0, n_blocks * INT8_BLOCK - cols)).view(rows, n_blocks, INT8_BLOCK)
    return (q * scales.view(rows, n_blocks, 1)).view(rows, n_blocks * INT8_BLOCK)[:, :cols]
