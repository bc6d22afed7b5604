"""Binary headers for the two hot messages, Step and StepResult (one per token per hop).

A JSON header of a one-token Step is ~170 bytes: with an int8 payload of 644 that alone
would lift a frame from 0.28x to 0.34x of an fp32 frame. These layouts carry the same
fields in ~30 bytes:

    Step:        session id | step_id | start_position | replay_end (0: none) | tensor
    StepResult:  session id | step_id | start_position | tensor | compute_seconds (f64 LE)

    session id   u8 n, then: n < 0x80: n bytes of UTF-8; n >= 0x80: n - 0x80 bytes that are
                 the lowercase hex string of twice that length (a uuid4().hex is 17 bytes)
    integers     unsigned LEB128, at most 9 bytes (< 2**63)
    tensor       u8 dtype (index in DTYPES) | u8 ndim (<= MAX_DIMS) | ndim integers

`encode` returns None for any message it cannot carry exactly (another class, a negative or
huge integer, a long session id, a field this layout does not know, a Step that starts a
ring: once per generation, its `RingSpec` goes as JSON; a lite client's Step of token ids): the
caller then sends JSON, so every message still round-trips. `decode` only parses; the caller validates the
fields with the message's pydantic schema, exactly as for JSON headers. Raises
ProtocolError(MALFORMED) on truncated or impossible bytes. No framing here (see codec.py).
"""

from __future__ import annotations

import struct

from swarmllm.protocol.errors import ErrorCode, ProtocolError
from swarmllm.protocol.messages import Step, StepResult

DTYPES = ("float32", "float16", "bfloat16", "int8")  # a new wire dtype goes at the end
MAX_DIMS = 8
_MAX_INT = 2**63
_HEX_FLAG = 0x80
_HEX_DIGITS = frozenset("0123456789abcdef")
_F64 = struct.Struct("<d")

# Exactly the fields each layout carries: a message class with any other field set is sent as
# JSON rather than losing a field (tests/unit/test_wire_frames.py asserts they still match).
STEP_FIELDS = frozenset({"type", "session_id", "step_id", "start_position", "tensor", "replay_end", "ring",
                         "token_ids"})
STEP_RESULT_FIELDS = frozenset({"type", "session_id", "step_id", "start_position", "tensor", "compute_seconds"})
_LAYOUT_FITS = {Step: set(Step.model_fields) == STEP_FIELDS,
                StepResult: set(StepResult.model_fields) == STEP_RESULT_FIELDS}


def encode(message) -> bytes | None:
    """The binary header of a Step or StepResult, or None when only JSON can carry it exactly."""
    if not _LAYOUT_FITS.get(type(message), False) or getattr(message, "ring", None) is not None or \
            getattr(message, "token_ids", None) is not None:
        return None
    meta = message.tensor
    positions = [message.step_id, message.start_position]
    if isinstance(message, Step):
        positions.append(message.replay_end or 0)
    session = _session_bytes(message.session_id)
    if (session is None or meta.dtype not in DTYPES or len(meta.shape) > MAX_DIMS
            or any(not 0 <= value < _MAX_INT for value in (*positions, *meta.shape))):
        return None
    out = bytearray(session)
    for value in positions:
        out += uleb128(value)
    out += bytes((DTYPES.index(meta.dtype), len(meta.shape)))
    for value in meta.shape:
        out += uleb128(value)
    if isinstance(message, StepResult):
        out += _F64.pack(message.compute_seconds)
    return bytes(out)


def decode(message_class, frame: bytes | memoryview, offset: int) -> tuple[dict, int]:
    """(the message's fields, the offset where the header ends) from a header at `offset`."""
    reader = Reader(frame, offset, message_class.__name__)
    fields = {"session_id": reader.session_id(), "step_id": reader.integer(), "start_position": reader.integer()}
    if message_class is Step:
        replay_end = reader.integer()
        fields["replay_end"] = replay_end or None
    dtype, ndim = reader.byte(), reader.byte()
    if dtype >= len(DTYPES) or ndim > MAX_DIMS:
        raise ProtocolError(ErrorCode.MALFORMED, f"{message_class.__name__} header names dtype code {dtype} and "
                                                 f"{ndim} dimensions; this node knows {len(DTYPES)} codes, "
                                                 f"{MAX_DIMS} dimensions at most")
    fields["tensor"] = {"dtype": DTYPES[dtype], "shape": tuple(reader.integer() for _ in range(ndim))}
    if message_class is StepResult:
        fields["compute_seconds"] = reader.float64()
    return fields, reader.offset


# --- helpers -----------------------------------------------------------------------------
def _session_bytes(session_id: str) -> bytes | None:
    if session_id and len(session_id) % 2 == 0 and set(session_id) <= _HEX_DIGITS and len(session_id) // 2 < 0x80:
        return bytes((_HEX_FLAG + len(session_id) // 2,)) + bytes.fromhex(session_id)
    raw = session_id.encode()
    return bytes((len(raw),)) + raw if len(raw) < _HEX_FLAG else None


def uleb128(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


class Reader:
    """Bounds-checked reads; every defect is a MALFORMED error naming the message."""

    def __init__(self, frame: bytes | memoryview, offset: int, name: str):
        self.frame, self.offset, self.name = memoryview(frame), offset, name

    def take(self, n: int) -> memoryview:
        if self.offset + n > len(self.frame):
            raise ProtocolError(ErrorCode.MALFORMED, f"{self.name} header is truncated: frame of "
                                                     f"{len(self.frame)} bytes")
        self.offset += n
        return self.frame[self.offset - n:self.offset]

    def byte(self) -> int:
        return self.take(1)[0]

    def integer(self) -> int:
        value = 0
        for shift in range(0, 63, 7):
            byte = self.byte()
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value  # 9 bytes of 7 bits: always < 2**63
        raise ProtocolError(ErrorCode.MALFORMED, f"{self.name} header holds an integer longer than 9 bytes")

    def session_id(self) -> str:
        n = self.byte()
        raw = self.take(n & ~_HEX_FLAG if n & _HEX_FLAG else n)
        if n & _HEX_FLAG:
            return raw.hex()
        try:
            return str(raw, "utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(ErrorCode.MALFORMED, f"{self.name} header: session id is not UTF-8") from None

    def float64(self) -> float:
        return _F64.unpack(self.take(_F64.size))[0]
