"""Protocol: frames round-trip, and every kind of malformed input is a ProtocolError."""

import struct

import pytest
import torch

from swarmllm.protocol import (
    ErrorCode, OpenSession, ProtocolError, ServerRecord, Step, decode_frame, decode_tensor, encode_frame, encode_tensor,
    parse_records,
)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_tensor_round_trip(dtype):
    x = torch.randn(1, 5, 16)
    meta, raw = encode_tensor(x, dtype)
    msg, payload = decode_frame(encode_frame(Step(session_id="s" * 16, step_id=3, start_position=7, tensor=meta), raw))
    assert msg.step_id == 3 and msg.start_position == 7
    y = decode_tensor(msg.tensor, payload)
    assert y.shape == x.shape and y.dtype == torch.float32
    tolerance = 0 if dtype == "float32" else 1e-2
    assert torch.allclose(x, y, atol=tolerance * 4, rtol=tolerance)


def test_fp32_is_bit_exact():
    x = torch.randn(1, 3, 8)
    meta, raw = encode_tensor(x, "float32")
    msg, payload = decode_frame(encode_frame(Step(session_id="s" * 16, step_id=0, start_position=0, tensor=meta), raw))
    assert torch.equal(decode_tensor(msg.tensor, payload), x)


@pytest.mark.parametrize("frame, fragment", [
    (b"", "too short"),
    (struct.pack("<I", 1000) + b"{}", "does not fit"),
    (struct.pack("<I", 2) + b"{}", "invalid message header"),
    (struct.pack("<I", 5) + b"hello", "invalid message header"),
    (encode_frame(Step(session_id="s" * 16, step_id=0, start_position=0,
                       tensor={"dtype": "float32", "shape": (1, 2, 4)}), b"\0" * 7), "payload is 7 bytes"),
])
def test_malformed_frames_are_protocol_errors(frame, fragment):
    with pytest.raises(ProtocolError) as info:
        decode_frame(frame)
    assert info.value.code == ErrorCode.MALFORMED
    assert fragment in str(info.value)


def test_unknown_fields_and_bad_values_rejected():
    good = OpenSession(session_id="x" * 16, model_id="m", start=0, end=3, max_length=16)
    text = good.model_dump_json().replace('"end":3', '"end":3,"evil":1').encode()
    with pytest.raises(ProtocolError):
        decode_frame(struct.pack("<I", len(text)) + text)
    text = good.model_dump_json().replace('"max_length":16', '"max_length":-1').encode()
    with pytest.raises(ProtocolError, match="max_length"):
        decode_frame(struct.pack("<I", len(text)) + text)


def test_parse_records_skips_garbage():
    record = ServerRecord(peer_id="p1", model_id="m", start=0, end=4, n_blocks=8, throughput=10,
                          free_cache_tokens=100, max_session_length=64)
    found = {"k0": {"p1": record.model_dump(mode="json"), "p2": {"peer_id": 5}}, "k1": {}}
    parsed = parse_records(found, "m")
    assert parsed == [record]
    assert parse_records(found, "other") == []
