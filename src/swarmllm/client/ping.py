"""Liveness and round-trip time of one server: a few `Ping`s on one stream."""

from __future__ import annotations

import asyncio
import time
from typing import Optional

from swarmllm.protocol import PING_HANDLER, Ping, Pong, ProtocolError, decode_frame, encode_frame


async def ping_peer(swarm, peer_id: str, timeout: float, rounds: int = 1) -> Optional[tuple[float, Pong]]:
    """(best round-trip time of `rounds` pings on one stream, last pong), or None if the peer
    does not answer them all within `timeout` s (stream set-up included)."""
    stream = None
    try:
        async with asyncio.timeout(timeout):
            stream = await swarm.open_stream(peer_id, PING_HANDLER, timeout=timeout)
            best, pong = None, None
            for nonce in range(rounds):
                started = time.perf_counter()
                await stream.send(encode_frame(Ping(nonce=nonce)))
                reply = decode_frame(await stream.recv())[0]
                if isinstance(reply, Pong):
                    best, pong = min(best or float("inf"), time.perf_counter() - started), reply
            return None if pong is None else (best, pong)
    except (ConnectionError, TimeoutError, ProtocolError):
        return None
    finally:
        if stream is not None:
            stream.close()
