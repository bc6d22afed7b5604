"""A client's own last mile: frame streams seen through a slow link, in the client's process.

`DelayedSwarm(swarm, profile)` wraps a swarm node so that every stream it opens is a
`DelayedStream`: each frame sent or received arrives after its serialization at the profile's
rate plus the one-way delay, in order (the same `Pacer` model as the relays in netem.py, which
emulate the nodes' links). Benchmarks use it for a client that is far from every node.
"""

from __future__ import annotations

import asyncio

from swarmllm.harness.netem import PROFILES, LinkProfile, Pacer, sleep_until


class DelayedStream:
    """A frame stream (send / recv / close / closed) seen through a slow last mile: every frame
    sent or received arrives after its serialization at the profile's rate plus the one-way
    delay, in order. `send` returns at once, as a socket buffer would."""

    def __init__(self, inner, profile: LinkProfile):
        self._inner, self.profile = inner, profile
        self.remote_peer_id = getattr(inner, "remote_peer_id", "")
        self._up, self._down = Pacer(profile), Pacer(profile)
        self._outbox: asyncio.Queue = asyncio.Queue()
        self._inbox: asyncio.Queue = asyncio.Queue()
        self._closing = False
        self._tasks = [asyncio.create_task(self._send_loop()), asyncio.create_task(self._recv_loop())]

    @property
    def closed(self) -> bool:
        return self._closing or self._inner.closed

    async def send(self, frame: bytes) -> None:
        if self.closed:
            raise ConnectionError(f"stream to {self.remote_peer_id} is closed")
        await self._outbox.put((self._up.arrival(len(frame), asyncio.get_running_loop().time()), frame))

    async def recv(self) -> bytes:
        due, item = await self._inbox.get()
        await sleep_until(due)
        if isinstance(item, BaseException):
            self._inbox.put_nowait((due, item))  # every later recv fails the same way
            raise item
        return item

    async def _send_loop(self) -> None:
        while True:
            due, frame = await self._outbox.get()
            if frame is None:  # closed: everything queued before it has been sent
                self._inner.close()
                return
            await sleep_until(due)
            try:
                await self._inner.send(frame)
            except ConnectionError:
                return

    async def _recv_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                frame = await self._inner.recv()
            except ConnectionError as e:
                await self._inbox.put((self._down.arrival(0, loop.time()), e))
                return
            await self._inbox.put((self._down.arrival(len(frame), loop.time()), frame))

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            self._outbox.put_nowait((0.0, None))  # frames already sent still go out first (e.g. CloseSession)


class DelayedSwarm:
    """A swarm node whose streams all pass through `DelayedStream`: a client far from everyone.

    Wraps anything with `open_stream(peer_id, name, timeout=...)`; every other attribute is the
    wrapped node's."""

    def __init__(self, swarm, profile: LinkProfile | str):
        self._swarm = swarm
        self.profile = PROFILES[profile] if isinstance(profile, str) else profile

    def __getattr__(self, name: str):
        return getattr(self._swarm, name)

    async def open_stream(self, peer_id: str, name: str, *args, **kwargs):
        return DelayedStream(await self._swarm.open_stream(peer_id, name, *args, **kwargs), self.profile)
