"""Frame encoding: one message header plus an optional raw tensor payload.

A frame is `[u8 layout][header][payload]`; the transport adds its own length prefix around
it. The layout byte says how the header is written:

    LAYOUT_JSON         b"J"  [u32 header length, little endian][header JSON]   any message
    LAYOUT_STEP         b"S"  binary Step header (compact_header.py)
    LAYOUT_STEP_RESULT  b"R"  binary StepResult header
    LAYOUT_RECEIPT      b"V"  a whole StepReceipt: signed fields + signature (receipts.py), no payload

The binary layouts exist because a one-token step is sent once per token per hop and its
JSON header (~170 bytes) costs more than a quarter of an int8 payload; they are used
whenever they carry the message exactly, JSON otherwise. A layout's meaning never changes: a
new one takes a new byte, and a node that meets a byte it does not know says so (a frame
from a swarmllm older than the layout byte starts with its u32 header length and is
rejected the same way). Decoding validates every header, binary or JSON, against the
message schema, and the payload length against the header's `TensorMeta` (or a
`RangeData`'s length), so handlers only ever see well-formed messages; anything else raises
`ProtocolError(MALFORMED)`, except an OpenSession this version cannot parse from a peer whose
protocol range does not overlap ours: that raises VERSION_MISMATCH saying who must upgrade
(versions.py), so a much newer client hears why rather than "malformed".

Tensor payloads are raw little-endian elements in the wire dtype, except "int8": blockwise
int8 with a few outliers per row, for slow links (see int8_wire.py). The float16 wire
refuses hidden states it cannot represent (see `encode_tensor`).
"""

from __future__ import annotations

import struct

import numpy as np
import torch
from pydantic import TypeAdapter, ValidationError

from swarmllm.protocol import compact_header, int8_wire, receipts, versions
from swarmllm.protocol.errors import ErrorCode, ProtocolError
from swarmllm.protocol.messages import Message, RangeData, Step, StepReceipt, StepResult, TensorMeta

MAX_HEADER_BYTES = 64 * 1024
MAX_PAYLOAD_BYTES = 256 * 1024 * 1024

_MESSAGE_ADAPTER: TypeAdapter = TypeAdapter(Message)
_HEADER_LEN = struct.Struct("<I")
_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_ITEM_SIZE = {"float32": 4, "float16": 2, "bfloat16": 2}
_FP16_MAX = 65504.0

LAYOUT_JSON, LAYOUT_STEP, LAYOUT_STEP_RESULT = b"J", b"S", b"R"
_BINARY_LAYOUTS = {Step: LAYOUT_STEP, StepResult: LAYOUT_STEP_RESULT}
_BINARY_CLASSES = {layout[0]: cls for cls, layout in _BINARY_LAYOUTS.items()}


def encode_frame(message, payload: bytes | memoryview = b"") -> bytes:
    if isinstance(message, StepReceipt):
        return receipts.encode_receipt(message)
    header = compact_header.encode(message)
    if header is not None:
        return b"".join((_BINARY_LAYOUTS[type(message)], header, payload))
    header = message.model_dump_json().encode()
    return b"".join((LAYOUT_JSON, _HEADER_LEN.pack(len(header)), header, payload))


def decode_frame(frame: bytes) -> tuple[object, memoryview]:
    """Parse a frame into (message, payload). Raises ProtocolError(MALFORMED) on any defect."""
    if not frame:
        raise ProtocolError(ErrorCode.MALFORMED, "empty frame")
    layout = frame[0]
    if layout == receipts.LAYOUT_RECEIPT[0]:
        return receipts.decode_receipt(frame), memoryview(b"")
    if layout in _BINARY_CLASSES:
        message_class = _BINARY_CLASSES[layout]
        fields, header_end = compact_header.decode(message_class, frame, 1)
        message = _validated(lambda: message_class.model_validate(fields))
    elif layout == LAYOUT_JSON[0]:
        start = 1 + _HEADER_LEN.size
        if len(frame) < start:
            raise ProtocolError(ErrorCode.MALFORMED, f"frame of {len(frame)} bytes is too short for a header")
        (header_len,) = _HEADER_LEN.unpack_from(frame, 1)
        header_end = start + header_len
        if header_len > MAX_HEADER_BYTES or header_end > len(frame):
            raise ProtocolError(ErrorCode.MALFORMED, f"header length {header_len} does not fit a frame of "
                                                     f"{len(frame)} bytes")
        message = _validated(lambda: _MESSAGE_ADAPTER.validate_json(frame[start:header_end]),
                             header=frame[start:header_end])
    else:
        known = ", ".join(repr(chr(b)) for b in (LAYOUT_JSON[0], *_BINARY_CLASSES, receipts.LAYOUT_RECEIPT[0]))
        raise ProtocolError(ErrorCode.MALFORMED, f"unknown frame layout byte 0x{layout:02x} (this node reads {known}); "
                                                 f"is the peer running another version of swarmllm?")
    payload = memoryview(frame)[header_end:]
    meta = getattr(message, "tensor", None)
    if getattr(message, "token_ids", None) is not None:  # a lite client's ids: the receiver embeds, no payload
        meta = None
    expected = tensor_nbytes(meta) if meta is not None else message.length if isinstance(message, RangeData) else 0
    if len(payload) != expected:
        raise ProtocolError(ErrorCode.MALFORMED, f"payload is {len(payload)} bytes but the header describes {expected}")
    return message, payload


def _validated(parse, header: bytes | None = None):
    """Run a pydantic parse; a validation error becomes MALFORMED naming the first bad field (or, for an
    OpenSession of an incompatible newer peer, VERSION_MISMATCH saying who must upgrade: versions.py)."""
    try:
        return parse()
    except ValidationError as e:
        refusal = versions.unreadable_open_session(bytes(header)) if header is not None else None
        if refusal is not None:
            raise refusal from None
        first = e.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "message"
        raise ProtocolError(ErrorCode.MALFORMED, f"invalid message header: {where}: {first.get('msg')}") from None


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
    """Convert to the wire format and return (meta, raw bytes).

    float16 raises ProtocolError(BAD_SHAPE) rather than send inf or NaN: Gemma 3's residual
    stream reaches ~1e5, beyond float16's 65504, and an inf there turns every later position
    into NaN. Clamping instead would quietly shrink the model's largest channels (gemma3-270m:
    98538 -> 65504): a wrong answer nobody is told about. bfloat16 and int8
    carry that range; the error says so. Server handlers already answer a ProtocolError with
    an ErrorReply to the client.
    """
    meta = TensorMeta(dtype=wire_dtype, shape=tuple(tensor.shape))
    if wire_dtype == "int8":
        return meta, int8_wire.encode(tensor)
    t = tensor.detach().to(_TORCH_DTYPES[wire_dtype]).contiguous().cpu()
    if wire_dtype == "float16" and t.numel() and not bool(torch.isfinite(t).all()):
        _refuse_float16(tensor)
    raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.dtype == torch.bfloat16 else t.numpy().tobytes()
    return meta, raw


def _refuse_float16(tensor: torch.Tensor) -> None:
    finite = torch.isfinite(tensor)
    if not bool(finite.all()):
        raise ProtocolError(ErrorCode.BAD_SHAPE, "hidden states contain NaN or inf before encoding; the float16 wire "
                                                 "does not send them")
    peak = float(tensor.detach().abs().max())
    raise ProtocolError(ErrorCode.BAD_SHAPE, f"hidden states reach {peak:.4g}, beyond float16's range "
                                             f"(+-{_FP16_MAX:.0f}); use the bfloat16 or int8 wire for this model")


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
