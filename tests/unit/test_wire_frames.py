"""Frame layouts: binary Step / StepResult headers round-trip exactly, fall back to JSON when they
cannot, reject every malformed byte string, and keep a one-token int8 frame under 0.3x of fp32.
Also: the float16 wire refuses what it cannot represent."""

import struct

import pytest
import torch

from swarmllm.protocol import (
    CloseSession, ErrorCode, ErrorReply, NextHop, OpenSession, Ping, Pong, ProtocolError, RangeData, ReadRange,
    Reroute, SessionOpened, Step, StepResult, decode_frame, decode_tensor, encode_frame, encode_tensor,
)
from swarmllm.protocol import compact_header
from swarmllm.protocol.codec import LAYOUT_JSON, LAYOUT_STEP, LAYOUT_STEP_RESULT

SID = "0123456789abcdef0123456789abcdef"  # what the client uses: uuid4().hex
META = {"dtype": "int8", "shape": (1, 1, 576)}

EVERY_MESSAGE = [
    OpenSession(session_id=SID, model_id="m", start=0, end=3, max_length=16, wire_dtype="int8",
                next_hop=NextHop(peer_id="QmPeer", session_id=SID)),
    SessionOpened(session_id=SID, peer_id="p", start=0, end=3, max_length=16, protocol_version=8),
    Step(session_id=SID, step_id=123, start_position=456, tensor=META),
    Step(session_id=SID, step_id=2**40, start_position=0, tensor={"dtype": "float32", "shape": (1, 7, 640)},
         replay_end=20),
    Step(session_id="Not-Hex-Ünïcode", step_id=0, start_position=0, tensor={"dtype": "bfloat16", "shape": ()}),
    Step(session_id="abc", step_id=0, start_position=0, tensor={"dtype": "float16", "shape": (0,)}),  # odd-length hex
    Step(session_id="x" * 200, step_id=1, start_position=1, tensor=META),          # too long for binary: JSON
    StepResult(session_id=SID, step_id=9, start_position=10, tensor=META, compute_seconds=0.1 + 0.2),
    StepResult(session_id=SID, step_id=-1, start_position=10, tensor=META),        # negative: JSON
    Reroute(session_id=SID, next_hop=None, replay_positions=4, replay_chunks=(3, 1), step_id=5, replay_end=7),
    CloseSession(session_id=SID),
    ErrorReply(code="malformed", message="bad", session_id=SID, step_id=3, peer_id="p"),
    Ping(nonce=7), Pong(nonce=7, peer_id="p", model_id="m", start=1, end=2, accepting=False),
    ReadRange(model_id="m", file_name="f.gguf", offset=5, length=4),
]


def _payload(message) -> bytes:
    if isinstance(message, RangeData):
        return b"x" * message.length
    meta = getattr(message, "tensor", None)
    return encode_tensor(torch.randn(meta.shape), meta.dtype)[1] if meta is not None else b""


@pytest.mark.parametrize("message", EVERY_MESSAGE + [RangeData(model_id="m", offset=0, length=4, total_size=10)],
                         ids=lambda m: m.type)
def test_every_message_round_trips_exactly(message):
    payload = _payload(message)
    decoded, got = decode_frame(encode_frame(message, payload))
    assert decoded == message and type(decoded) is type(message) and bytes(got) == payload


def test_hot_messages_use_the_binary_layouts_and_others_json():
    layouts = {(m.type, m.session_id if hasattr(m, "session_id") else None, getattr(m, "step_id", None)):
               encode_frame(m, _payload(m))[:1] for m in EVERY_MESSAGE}
    assert layouts[("step", SID, 123)] == LAYOUT_STEP
    assert layouts[("step", "Not-Hex-Ünïcode", 0)] == LAYOUT_STEP
    assert layouts[("step_result", SID, 9)] == LAYOUT_STEP_RESULT
    assert layouts[("step", "x" * 200, 1)] == LAYOUT_JSON
    assert layouts[("step_result", SID, -1)] == LAYOUT_JSON
    assert layouts[("open_session", SID, None)] == LAYOUT_JSON


def test_binary_layouts_cover_every_field_of_their_messages():
    # A field added to Step or StepResult must be added to compact_header too (else they go as JSON).
    assert set(Step.model_fields) == compact_header.STEP_FIELDS
    assert set(StepResult.model_fields) == compact_header.STEP_RESULT_FIELDS


def test_decode_step_header_size():
    frame = encode_frame(Step(session_id=SID, step_id=123, start_position=456, tensor=META), b"\0" * 644)
    assert len(frame) - 644 == 1 + 17 + 1 + 2 + 1 + 2 + 4  # layout, id, step, position, replay_end, dtype+ndim, dims


@pytest.mark.parametrize("hidden", [576, 640])
@pytest.mark.parametrize("kind", [Step, StepResult])
def test_one_token_int8_frame_is_under_0_3x_of_fp32(hidden, kind):
    # Late in a long session: 3-byte step ids and positions. + 8: the transport's length prefix.
    def frame_bytes(wire):
        meta, raw = encode_tensor(torch.randn(1, 1, hidden), wire)
        fields = {"session_id": SID, "step_id": 100_000, "start_position": 131_071, "tensor": meta}
        if kind is StepResult:
            fields["compute_seconds"] = 0.0123
        return len(encode_frame(kind(**fields), raw)) + 8

    assert frame_bytes("int8") / frame_bytes("float32") <= 0.3


def _step_frame() -> bytes:
    return encode_frame(Step(session_id=SID, step_id=300, start_position=5, tensor=META, replay_end=9), b"\0" * 644)


@pytest.mark.parametrize("cut", range(1, 30))
def test_truncated_binary_headers_are_malformed(cut):
    for frame in (_step_frame(), encode_frame(StepResult(session_id=SID, step_id=1, start_position=2, tensor=META,
                                                         compute_seconds=1.5), b"\0" * 644)):
        with pytest.raises(ProtocolError) as info:
            decode_frame(frame[:cut])
        assert info.value.code == ErrorCode.MALFORMED


def _patched(offset: int, value: bytes) -> bytes:
    frame = bytearray(_step_frame())
    frame[offset:offset + len(value)] = value
    return bytes(frame)


@pytest.mark.parametrize("frame, fragment", [
    (b"X" + _step_frame()[1:], "unknown frame layout byte 0x58"),
    (struct.pack("<I", 170) + b'{"type":"step"}', "unknown frame layout byte 0xaa"),  # a pre-layout frame
    (_patched(22, b"\x09"), "dtype code 9"),   # after layout 1 + session id 17 + step id 2 + position 1 + replay 1
    (_patched(23, b"\x09"), "9 dimensions"),
    (b"S\x03\xff\xfe\xfd" + _step_frame()[18:], "not UTF-8"),
    (b"S\x80" + b"\xff" * 10, "longer than 9 bytes"),
    (_step_frame()[:-1], "payload is 643 bytes"),
    (_step_frame() + b"\0", "payload is 645 bytes"),
])
def test_malformed_binary_frames(frame, fragment):
    with pytest.raises(ProtocolError) as info:
        decode_frame(frame)
    assert info.value.code == ErrorCode.MALFORMED
    assert fragment in str(info.value)


def test_binary_headers_decode_to_validated_frozen_messages():
    message, _ = decode_frame(encode_frame(Step(session_id=SID, step_id=3, start_position=5, tensor=META), b"\0" * 644))
    assert type(message) is Step and message.replay_end is None and message.tensor.shape == (1, 1, 576)
    with pytest.raises(Exception):
        message.step_id = 4  # frozen, like a JSON-decoded one


# --- float16 wire: refuse, never send inf / NaN ------------------------------------------------
def test_float16_refuses_values_beyond_its_range():
    x = torch.randn(1, 2, 640)
    x[0, 1, 163] = 98538.0  # what gemma3-270m's residual stream holds
    with pytest.raises(ProtocolError) as info:
        encode_tensor(x, "float16")
    assert info.value.code == ErrorCode.BAD_SHAPE
    assert "9.854e+04" in str(info.value) and "bfloat16 or int8" in str(info.value)
    for wire in ("bfloat16", "int8", "float32"):  # the formats it points to do carry it
        assert torch.isfinite(decode_tensor(*encode_tensor(x, wire))).all()


def test_float16_refuses_nan_and_sends_the_largest_finite_values():
    x = torch.randn(1, 1, 8)
    x[0, 0, 2] = float("nan")
    with pytest.raises(ProtocolError, match="NaN or inf"):
        encode_tensor(x, "float16")
    edge = torch.tensor([[65504.0, -65504.0, 65519.0, 1e-3]])  # 65519 still rounds to 65504
    assert torch.equal(decode_tensor(*encode_tensor(edge, "float16")), torch.tensor([[65504.0, -65504.0, 65504.0,
                                                                                      torch.tensor(1e-3).half().item()]]))
