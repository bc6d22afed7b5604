"""Byte ranges of the model file over the swarm transport: the server side without a network."""

from __future__ import annotations

import asyncio
import json

import pytest

from swarmllm.protocol import ErrorReply, ProtocolError, RangeData, ReadRange, decode_frame, encode_frame
from swarmllm.server.file_sharing import FileService


class FakeStream:
    def __init__(self, frames):
        self.incoming, self.sent = list(frames), []

    async def recv(self):
        if not self.incoming:
            raise ConnectionError("closed")
        return self.incoming.pop(0)

    async def send(self, frame):
        self.sent.append(decode_frame(frame))


def ask(service, *requests):
    stream = FakeStream([encode_frame(r) for r in requests])
    with pytest.raises(ConnectionError):
        asyncio.run(service.serve_file_stream(stream))
    return stream.sent


def read(offset, length, model="m", name="m.gguf"):
    return ReadRange(model_id=model, file_name=name, offset=offset, length=length)


def test_a_complete_file_serves_any_range_within_it(tmp_path):
    path = tmp_path / "m.gguf"
    path.write_bytes(bytes(range(256)) * 4)
    replies = ask(FileService("m", str(path), partial=False), read(10, 5), read(1020, 10), read(0, 1, model="x"))
    (first, payload), (second, _), (third, _) = replies
    assert isinstance(first, RangeData) and bytes(payload) == bytes(range(10, 15)) and first.total_size == 1024
    assert isinstance(second, ErrorReply) and second.code == "not_available"  # past the end
    assert isinstance(third, ErrorReply) and "not m.gguf of x" in third.message


def test_a_partial_copy_serves_only_its_completed_ranges(tmp_path):
    path = tmp_path / "m.gguf"
    path.write_bytes(b"a" * 1000)
    (tmp_path / "m.gguf.download.json").write_text(json.dumps({"done": [[0, 100, "h"], [100, 300, "h"],
                                                                        [500, 600, "h"]]}))
    replies = ask(FileService("m", str(path), partial=True), read(50, 200), read(250, 300), read(500, 100))
    assert [type(m).__name__ for m, _ in replies] == ["RangeData", "ErrorReply", "RangeData"]


def test_range_payloads_are_validated_by_the_codec():
    frame = encode_frame(RangeData(model_id="m", offset=0, length=4, total_size=10), b"abcd")
    message, payload = decode_frame(frame)
    assert bytes(payload) == b"abcd"
    with pytest.raises(ProtocolError):
        decode_frame(encode_frame(RangeData(model_id="m", offset=0, length=4, total_size=10), b"abc"))
    with pytest.raises(ValueError):
        ReadRange(model_id="m", file_name="f", offset=0, length=10**9)  # above MAX_RANGE_BYTES
