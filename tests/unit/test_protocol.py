"""Protocol: frames round-trip, and every kind of malformed input is a ProtocolError."""

import struct

import numpy as np
import pytest
import torch

from swarmllm.protocol import (
    ErrorCode, OpenSession, ProtocolError, Step, decode_frame, decode_tensor, encode_frame, encode_tensor,
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


def _json_frame(header: bytes) -> bytes:
    return b"J" + struct.pack("<I", len(header)) + header


@pytest.mark.parametrize("frame, fragment", [
    (b"", "empty frame"),
    (b"J\0\0", "too short"),
    (b"J" + struct.pack("<I", 1000) + b"{}", "does not fit"),
    (_json_frame(b"{}"), "invalid message header"),
    (_json_frame(b"hello"), "invalid message header"),
    (struct.pack("<I", 2) + b"{}", "unknown frame layout byte 0x02"),
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
        decode_frame(_json_frame(text))
    text = good.model_dump_json().replace('"max_length":16', '"max_length":-1').encode()
    with pytest.raises(ProtocolError, match="max_length"):
        decode_frame(_json_frame(text))


# --- blockwise int8 on the wire (int8_wire.py) -------------------------------------------
def _int8_round_trip(x):
    meta, raw = encode_tensor(x, "int8")
    msg, payload = decode_frame(encode_frame(Step(session_id="s" * 16, step_id=0, start_position=0, tensor=meta), raw))
    return decode_tensor(msg.tensor, payload), raw


def _int8_bytes(rows, cols):
    return rows * (2 * -(-cols // 32) + 4 * min(8, cols) + cols)


@pytest.mark.parametrize("shape", [(1, 4, 576), (1, 3, 640), (2, 5, 33), (1, 1, 31), (7,), (), (3, 0), (1, 0, 576)])
def test_int8_round_trip_within_half_a_step_of_each_block(shape):
    x = torch.randn(shape) * torch.logspace(-3, 3, shape[-1] if shape else 1)  # blocks of very different ranges
    y, raw = _int8_round_trip(x)
    assert y.shape == x.shape and y.dtype == torch.float32
    cols = shape[-1] if shape else 1
    rows = x.numel() // cols if cols else 0
    assert len(raw) == _int8_bytes(rows, cols)
    if x.numel():
        # The 8 largest values of a row travel in bfloat16 (relative error <= 2^-8). Every other value is
        # within half a step of its block's curve: s/2 on the linear one (s = absmax / 127); on the
        # square-law one the levels are s * q^2 / 127, so half a step near |x| is about s * (0.5 +
        # sqrt(|x| / 127s)). Plus the rounding of the fp16 scale (relative 2^-11, or absolute 3e-8 for
        # subnormal scales of blocks below ~0.008).
        x2, y2 = x.reshape(-1, cols), y.reshape(-1, cols)
        top = x2.abs().topk(min(8, cols), dim=1).indices
        assert ((y2.gather(1, top) - x2.gather(1, top)).abs() <= x2.gather(1, top).abs() * 2**-8).all()
        rest = x2.scatter(1, top, 0.0)
        absmax = torch.nn.functional.pad(rest.abs(), (0, -cols % 32)).view(rows, -1, 32).amax(-1)
        s = (absmax / 127).repeat_interleave(32, dim=1)[:, :cols]
        bound = s * (0.5 + (x2.abs() / (127 * s).clamp(min=1e-30)).sqrt()) * (1 + 1e-3) + 127 * 3e-8
        error = (x2 - y2).abs().scatter(1, top, 0.0)
        assert (error <= bound).all()


def test_int8_picks_the_square_law_curve_for_heavy_tailed_blocks_only():
    g = torch.Generator().manual_seed(0)
    # Values already on the linear grid (like a Q8_0 embedding table): linear is exact, so it is picked.
    grid = (torch.randn(1, 1, 64, generator=g) * 40).round().clamp(-126, 126)
    grid[0, 0, 3] = grid[0, 0, 40] = 127
    grid = grid * 2**-7  # absmax / 127 = 2^-7, exact in fp16
    # Heavy-tailed blocks (the residual stream): a quarter of the values are 100x larger.
    heavy = torch.randn(1, 1, 64, generator=g)
    heavy[0, 0, ::4] *= 100.0
    curves, errors = {}, {}
    for name, x in (("grid", grid), ("heavy", heavy)):
        x = torch.cat([torch.full((1, 1, 8), 1e4), torch.zeros(1, 1, 24), x], dim=2)  # outliers: a block of their own
        raw = encode_tensor(x, "int8")[1]
        curves[name] = list(np.frombuffer(raw[2:6], dtype=np.uint16) >> 15)  # curve bits of the 64 values' blocks
        x, y = x[..., 32:], decode_tensor(*encode_tensor(x, "int8"))[..., 32:]
        small = x.abs() < x.abs().median()
        errors[name] = float((y - x)[small].abs().max() / (x.abs().amax() / 127))
    assert curves == {"grid": [0, 0], "heavy": [1, 1]}
    assert errors["grid"] == 0.0
    assert errors["heavy"] < 0.25  # small values: well under the linear curve's half step


def test_int8_size_and_batches_quantize_like_single_positions():
    x = torch.randn(1, 6, 576)
    x[0, :, ::7] *= 30  # some heavy-tailed blocks, so both curves are in play
    meta, raw = encode_tensor(x, "int8")
    assert len(raw) == 6 * 644 and len(raw) / (x.numel() * 4) < 0.3
    rows = [decode_tensor(*encode_tensor(x[:, i:i + 1], "int8")) for i in range(6)]
    assert torch.equal(torch.cat(rows, dim=1), decode_tensor(meta, raw))
    assert encode_tensor(x, "int8")[1] == raw  # deterministic: a replay sends the same bytes


def test_int8_keeps_values_beyond_fp16_range():
    x = torch.randn(1, 2, 64)
    x[0, :, 5] = 1e6  # Gemma-like massive channel: an outlier, and its block neighbours stay fine
    x[0, 1, 40:] = 0.0
    y = decode_tensor(*encode_tensor(x, "int8"))
    assert torch.isfinite(y).all() and (y[0, :, 5] == torch.tensor(1e6).bfloat16().float()).all()
    assert (y[0, 1, 40:] == 0).all()
    assert (y - x)[:, :, torch.arange(64) != 5].abs().max() < 0.05


@pytest.mark.parametrize("payload", [b"", b"\x01\x02\x03", b"\xff" * 643, b"\xff" * 645])
def test_int8_wrong_payload_is_a_protocol_error(payload):
    meta = {"dtype": "int8", "shape": (1, 1, 576)}  # needs 18 * 2 + 8 * 4 + 576 = 644 bytes
    frame = encode_frame(Step(session_id="s" * 16, step_id=0, start_position=0, tensor=meta), payload)
    with pytest.raises(ProtocolError) as info:
        decode_frame(frame)
    assert info.value.code == ErrorCode.MALFORMED and "644" in str(info.value)
    with pytest.raises(ProtocolError):
        decode_tensor(Step.model_validate({"session_id": "s" * 16, "step_id": 0, "start_position": 0,
                                           "tensor": meta}).tensor, payload)


def test_int8_garbage_of_the_right_size_decodes_without_crashing():
    meta = Step.model_validate({"session_id": "s" * 16, "step_id": 0, "start_position": 0,
                                "tensor": {"dtype": "int8", "shape": (1, 2, 576)}}).tensor
    y = decode_tensor(meta, (bytes(range(256)) * 6)[:1288])  # NaN/inf scales, columns past the row: no exception
    assert y.shape == (1, 2, 576)


def test_unknown_wire_dtype_rejected():
    good = OpenSession(session_id="x" * 16, model_id="m", start=0, end=3, max_length=16, wire_dtype="int8")
    text = good.model_dump_json().replace('"int8"', '"int4"').encode()
    with pytest.raises(ProtocolError, match="wire_dtype"):
        decode_frame(_json_frame(text))


def test_cli_offers_every_wire_dtype():
    from swarmllm.cli_parser import WIRE_DTYPES as CLI_WIRE_DTYPES
    from swarmllm.protocol import WIRE_DTYPES

    assert CLI_WIRE_DTYPES == WIRE_DTYPES
