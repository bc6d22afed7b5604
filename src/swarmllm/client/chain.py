"""The chain as a session sees it: its hops, and the error a failing hop raises."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import Optional

from swarmllm.client.routing import ChainLink
from swarmllm.protocol import ErrorCode, NextHop, SwarmError

# Errors that say the client itself is wrong: retrying elsewhere cannot help.
NOT_RETRYABLE = frozenset({ErrorCode.BAD_SHAPE, ErrorCode.TOO_LONG, ErrorCode.MALFORMED, ErrorCode.VERSION_MISMATCH})


class RemoteStepError(SwarmError):
    """A server of the chain failed a request; `peer_id` says which, `code` (an ErrorCode) why.

    `suspects` is `peer_id` plus `also`: the servers to replace (two when two neighbours' receipts
    disagree and the evidence cannot tell which of them lies)."""

    def __init__(self, peer_id: str, code: ErrorCode | str, message: str, also: tuple[str, ...] = (),
                 reporter: str = "", stalled: bool = False):
        super().__init__(f"server {peer_id} failed: {message}")
        self.peer_id = peer_id
        self.code = code if isinstance(code, ErrorCode) else ErrorCode.parse(code)
        self.suspects: tuple[str, ...] = (peer_id, *also)
        self.reporter = reporter or peer_id  # who said so: an ErrorReply may blame another server (a claim)
        self.stalled = stalled  # a timeout that the receipts pin on `peer_id`: it got the step, never finished it


@dataclass
class Hop:
    """One server of the chain as this session sees it."""

    link: ChainLink
    session_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    stream: object = None
    reader: Optional[asyncio.Task] = None
    warm: bool = True  # False while a replacement's KV cache has not been rebuilt yet
    protocol_version: int = 0  # the version the server negotiated (SessionOpened); 0 until it answered

    @property
    def peer_id(self) -> str:
        return self.link.peer_id

    def next_hop(self) -> NextHop:
        return NextHop(peer_id=self.peer_id, session_id=self.session_id)

    def close(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
        if self.stream is not None:
            self.stream.close()
