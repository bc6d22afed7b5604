"""One inference session over a chain of servers (async).

Opening sends `OpenSession` to every server of the chain on its own stream, each naming
the next server as its `next_hop`, and waits until all have reserved KV cache. A step sends
hidden states to the first server only; the output arrives from the last server. Any
server may report an error on its stream; the pending step then fails with
`RemoteStepError` naming that server, so a caller can route around it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Optional

import torch

from swarmllm.client.routing import ChainLink
from swarmllm.protocol import (
    SESSION_HANDLER, CloseSession, ErrorReply, NextHop, OpenSession, ProtocolError, SessionOpened, Step, StepResult,
    SwarmError, decode_frame, decode_tensor, encode_frame, encode_tensor,
)


class RemoteStepError(SwarmError):
    """A server of the chain failed a request; `peer_id` says which, `code` why."""

    def __init__(self, peer_id: str, code: str, message: str):
        super().__init__(f"server {peer_id} failed: {message}")
        self.peer_id, self.code = peer_id, code


class InferenceSession:
    def __init__(self, swarm, model_id: str, chain: list[ChainLink], max_length: int, *, wire_dtype: str = "float32",
                 step_timeout: float = 30.0, open_timeout: float = 15.0):
        self.swarm, self.model_id, self.chain = swarm, model_id, chain
        self.max_length, self.wire_dtype = max_length, wire_dtype
        self.step_timeout, self.open_timeout = step_timeout, open_timeout
        self.session_ids = [uuid.uuid4().hex for _ in chain]
        self.streams: list = []
        self.position = 0               # positions processed by the whole chain so far
        self.last_step_seconds = 0.0
        self._next_step_id = 0
        self._pending: dict[int, asyncio.Future] = {}
        self._readers: list[asyncio.Task] = []
        self._closed = False

    async def open(self) -> "InferenceSession":
        try:
            await asyncio.wait_for(self._open_all(), self.open_timeout)
        except asyncio.TimeoutError:
            await self.close()
            raise RemoteStepError(self.chain[0].peer_id, "timeout", f"servers did not open the session within "
                                                                     f"{self.open_timeout:.0f} s") from None
        except BaseException:
            await self.close()
            raise
        return self

    async def _open_all(self) -> None:
        async def open_one(index: int, link: ChainLink):
            try:
                stream = await self.swarm.open_stream(link.peer_id, SESSION_HANDLER)
            except ConnectionError as e:
                raise RemoteStepError(link.peer_id, "unreachable", str(e)) from None
            next_hop = None
            if index + 1 < len(self.chain):
                next_hop = NextHop(peer_id=self.chain[index + 1].peer_id, session_id=self.session_ids[index + 1])
            await stream.send(encode_frame(OpenSession(
                session_id=self.session_ids[index], model_id=self.model_id, start=link.start, end=link.end,
                max_length=self.max_length, wire_dtype=self.wire_dtype, next_hop=next_hop)))
            try:
                reply, _ = decode_frame(await stream.recv())
            except (ConnectionError, ProtocolError) as e:
                stream.close()
                raise RemoteStepError(link.peer_id, "unreachable", f"no answer to OpenSession: {e}") from None
            if isinstance(reply, ErrorReply):
                stream.close()
                raise RemoteStepError(link.peer_id, reply.code, reply.message)
            if not isinstance(reply, SessionOpened):
                stream.close()
                raise RemoteStepError(link.peer_id, "malformed", f"expected session_opened, got {reply.type}")
            return stream

        results = await asyncio.gather(*(open_one(i, link) for i, link in enumerate(self.chain)),
                                       return_exceptions=True)
        self.streams = [r for r in results if not isinstance(r, BaseException)]
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]
        self._readers = [asyncio.create_task(self._read(link.peer_id, stream))
                         for link, stream in zip(self.chain, self.streams)]

    async def _read(self, peer_id: str, stream) -> None:
        """Route frames from one server: results resolve steps, errors fail them."""
        try:
            while True:
                msg, payload = decode_frame(await stream.recv())
                if isinstance(msg, StepResult):
                    future = self._pending.pop(msg.step_id, None)
                    if future is not None and not future.done():
                        future.set_result((msg, decode_tensor(msg.tensor, payload)))
                elif isinstance(msg, ErrorReply):
                    self._fail(RemoteStepError(msg.peer_id or peer_id, msg.code, msg.message), msg.step_id)
        except (ConnectionError, ProtocolError) as e:
            if not self._closed:
                self._fail(RemoteStepError(peer_id, "connection_lost", f"connection lost: {e}"), None)

    def _fail(self, error: RemoteStepError, step_id: Optional[int]) -> None:
        targets = [step_id] if step_id in self._pending else list(self._pending)
        for sid in targets:
            future = self._pending.pop(sid, None)
            if future is not None and not future.done():
                future.set_exception(error)

    async def step(self, hidden: torch.Tensor, start_position: int) -> torch.Tensor:
        """Run hidden states [1, T, D] for positions start_position.. through the chain."""
        if self._closed:
            raise SwarmError("the session is closed")
        step_id = self._next_step_id
        self._next_step_id += 1
        future = asyncio.get_running_loop().create_future()
        self._pending[step_id] = future
        meta, raw = encode_tensor(hidden, self.wire_dtype)
        started = time.perf_counter()
        try:
            await self.streams[0].send(encode_frame(Step(session_id=self.session_ids[0], step_id=step_id,
                                                         start_position=start_position, tensor=meta), raw))
            _, output = await asyncio.wait_for(future, self.step_timeout)
        except asyncio.TimeoutError:
            raise RemoteStepError(self.chain[-1].peer_id, "timeout",
                                  f"step {step_id} got no result within {self.step_timeout:.0f} s") from None
        except ConnectionError as e:
            raise RemoteStepError(self.chain[0].peer_id, "connection_lost", str(e)) from None
        finally:
            self._pending.pop(step_id, None)
        self.last_step_seconds = time.perf_counter() - started
        self.position = start_position + hidden.shape[1]
        return output

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for session_id, stream in zip(self.session_ids, self.streams):
            try:
                await asyncio.wait_for(stream.send(encode_frame(CloseSession(session_id=session_id))), 2)
            except (ConnectionError, asyncio.TimeoutError):
                pass
            stream.close()
        for task in self._readers:
            task.cancel()
        self._fail(RemoteStepError("", "closed", "session closed"), None)
