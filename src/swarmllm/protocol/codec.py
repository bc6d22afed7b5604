"""Frame encoding: one message header plus an optional raw tensor payload.

A frame is `[u32 header length, little endian][header JSON][payload bytes]` (the payload is a
tensor described by the header's `TensorMeta`, or the raw file bytes of a `RangeData`). The transport
adds its own length prefix around the frame. Decoding validates the header against the
message schema and the payload length against the header's `TensorMeta`, so handlers only
ever see well-formed messages; anything else raises `ProtocolError(MALFORMED)`.

Tensor payloads are raw little-endian elements in the wire dtype, except "int8": blockwise
int8 with a few exact outliers per row, for slow links (see int8_wire.py).
"""

from __future__ import annotations

import struct

import numpy as np
import torch
from pydantic import TypeAdapter, ValidationError

from swarmllm.protocol import int8_wire
from swarmllm.protocol.errors import ErrorCode, ProtocolError
from swarmllm.protocol.messages import Message, RangeData, TensorMeta

MAX_HEADER_BYTES = 64 * 1024
MAX_PAYLOAD_BYTES = 256 * 1024 * 1024

_MESSAGE_ADAPTER: TypeAdapter = TypeAdapter(Message)
_HEADER_LEN = struct.Struct("<I")
_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_ITEM_SIZE = {"float32": 4, "float16": 2, "bfloat16": 2}


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
    expected = tensor_nbytes(meta) if meta is not None else message.length if isinstance(message, RangeData) else 0
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
        nbytes = int8_wire.payload_bytes(meta.shape)
    else:
        nbytes = count * _ITEM_SIZE[meta.dtype]
    if nbytes > MAX_PAYLOAD_BYTES:
        raise ProtocolError(ErrorCode.BAD_SHAPE, f"tensor of shape {meta.shape} exceeds {MAX_PAYLOAD_BYTES} bytes")
    return nbytes


def encode_tensor(tensor: torch.Tensor, wire_dtype: str) -> tuple[TensorMeta, bytes]:
    """Convert to the wire format and return (meta, raw bytes)."""
    meta = TensorMeta(dtype=wire_dtype, shape=tuple(tensor.shape))
    if wire_dtype == "int8":
        return meta, int8_wire.encode(tensor)
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
        flat = int8_wire.decode(meta.shape, payload)
    elif meta.dtype == "bfloat16":
        flat = torch.from_numpy(np.frombuffer(payload, dtype=np.uint16).copy()).view(torch.bfloat16)
    else:
        flat = torch.from_numpy(np.frombuffer(payload, dtype=meta.dtype).copy())
    return flat.reshape(meta.shape).to(compute_dtype)
