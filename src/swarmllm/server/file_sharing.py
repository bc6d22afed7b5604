"""Nodes share the model file they hold: byte ranges over the swarm transport.

`FileService` answers `ReadRange` on FILE_HANDLER from the node's model file: any range of
a complete local file, or, for a partial copy fetched from a URL, the ranges its download
record lists as complete (the header and the node's span, usually). Anything else is
`ErrorReply(not_available)`, and a request for another model or file name too.

`SwarmRangeSource` is the asking side, a `download.fetcher.RangeSource`: it reads a range
from the first peer that has it. A node uses it only when given a manifest: peers are
untrusted, and without tensor hashes nothing would catch a peer's wrong bytes (see
download/fetcher.py); tensors that fail the manifest are fetched again from the URL.
The source is synchronous (the downloader runs on a worker thread) and drives the node's
event loop with `run_coroutine_threadsafe`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Optional, Sequence

from swarmllm.download.fetcher import DownloadError, missing
from swarmllm.protocol import (
    FILE_HANDLER, ErrorCode, ErrorReply, ProtocolError, RangeData, ReadRange, decode_frame, encode_frame,
)

logger = logging.getLogger(__name__)


class FileService:
    """Serves byte ranges of one model file (complete, or a partial copy with its record)."""

    def __init__(self, model_id: str, path: str, partial: bool):
        self.model_id, self.path, self.partial = model_id, path, partial
        self.file_name = os.path.basename(path)
        self.ranges_served = 0

    def held(self, offset: int, length: int) -> bool:
        size = os.path.getsize(self.path)
        if offset + length > size:
            return False
        if not self.partial:
            return True
        try:
            with open(self.path + ".download.json", encoding="utf-8") as f:
                done = [(int(a), int(b)) for a, b, _ in json.load(f)["done"]]
        except (OSError, ValueError, KeyError, TypeError):
            return False
        return not missing([(offset, offset + length)], done)

    def _read(self, offset: int, length: int) -> bytes:
        with open(self.path, "rb") as f:
            f.seek(offset)
            return f.read(length)

    async def serve_file_stream(self, stream) -> None:
        while True:
            frame = await stream.recv()
            msg = None
            try:
                msg, _ = decode_frame(frame)
                if not isinstance(msg, ReadRange):
                    raise ProtocolError(ErrorCode.MALFORMED, f"the file handler takes read_range, not {msg.type!r}")
                if msg.model_id != self.model_id or msg.file_name not in ("", self.file_name):
                    raise ProtocolError(ErrorCode.NOT_AVAILABLE, f"this node holds {self.file_name} of "
                                                                 f"{self.model_id}, not {msg.file_name} of {msg.model_id}")
                if not self.held(msg.offset, msg.length):
                    raise ProtocolError(ErrorCode.NOT_AVAILABLE, f"this node does not hold bytes "
                                                                 f"[{msg.offset}, {msg.offset + msg.length})")
                data = await asyncio.get_running_loop().run_in_executor(None, self._read, msg.offset, msg.length)
                self.ranges_served += 1
                await stream.send(encode_frame(RangeData(model_id=self.model_id, offset=msg.offset, length=len(data),
                                                         total_size=os.path.getsize(self.path)), data))
            except ProtocolError as e:
                await stream.send(encode_frame(ErrorReply(code=e.code.value, message=e.message)))


class SwarmRangeSource:
    """Reads ranges of a model file from peers that hold it (a RangeSource for the downloader)."""

    def __init__(self, swarm, loop: asyncio.AbstractEventLoop, model_id: str, file_name: str, size: int,
                 peer_ids: Sequence[str], timeout: float = 60.0):
        self.swarm, self.loop, self.model_id, self.file_name = swarm, loop, model_id, file_name
        self._size, self.timeout = size, timeout
        self.peer_ids = list(peer_ids)
        self.name = f"peers of {model_id}"
        self.bytes_from_peers = 0

    def size(self) -> int:
        return self._size

    def identity(self) -> str:
        return ""

    def read(self, offset: int, length: int) -> bytes:
        reasons = []
        for peer_id in list(self.peer_ids):
            future = asyncio.run_coroutine_threadsafe(self._read_from(peer_id, offset, length), self.loop)
            try:
                data = future.result(self.timeout)
            except (ConnectionError, ProtocolError, FutureTimeout, asyncio.TimeoutError) as e:
                future.cancel()
                reasons.append(f"{peer_id[-8:]}: {e}")
                continue
            self.peer_ids.remove(peer_id)
            self.peer_ids.insert(0, peer_id)  # ask the one that had it first next time
            self.bytes_from_peers += len(data)
            return data
        raise DownloadError(f"no peer holds bytes [{offset}, {offset + length}) of {self.file_name}"
                            + (f" ({'; '.join(reasons[:3])})" if reasons else ""))

    async def _read_from(self, peer_id: str, offset: int, length: int) -> bytes:
        stream = await self.swarm.open_stream(peer_id, FILE_HANDLER)
        try:
            await stream.send(encode_frame(ReadRange(model_id=self.model_id, file_name=self.file_name,
                                                     offset=offset, length=length)))
            msg, payload = decode_frame(await asyncio.wait_for(stream.recv(), self.timeout))
        finally:
            stream.close()
        if isinstance(msg, ErrorReply):
            raise ProtocolError(ErrorCode(msg.code) if msg.code in ErrorCode._value2member_map_
                                else ErrorCode.INTERNAL, msg.message)
        if not isinstance(msg, RangeData) or (msg.offset, msg.length, msg.total_size) != (offset, length, self._size):
            raise ProtocolError(ErrorCode.MALFORMED, "the peer answered another range or another file")
        return bytes(payload)


def local_model_file(path: str) -> Optional[str]:
    """The one file a node can share for a model path: the .gguf, or a folder's single .safetensors."""
    if os.path.isfile(path):
        return path
    if os.path.isdir(path):
        files = [f for f in os.listdir(path) if f.endswith(".safetensors")]
        if len(files) == 1:
            return os.path.join(path, files[0])
    return None
