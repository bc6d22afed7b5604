"""One inference session over a chain of servers (async): open, step, close.

Opening sends `OpenSession` to every server of the chain on its own stream, each naming
the next server as its `next_hop` and the previous one as its `upstream` (the only peer it
will take Steps from; the first server takes them from us), and waits until all have
reserved KV cache. Servers take CloseSession, Reroute, SetUpstream and RingStop only from
the peer that opened the session, so only this client can steer it. A step sends
hidden states to the first server only; the output arrives from the last server.

The session keeps what a replacement server needs to rebuild its cache: the inputs it sent
to block 0 (`inputs`) and the lengths of the committed steps (`chunks`). When a step fails
(an error reply, a lost stream, or silence past the timeout of `timeouts.StepTimeouts`), the
session asks its `Failover` (failover.py) to replace the failed servers and replay their
history, then sends the step again with a new step id; the caller sees no error and the same
outputs. Steps longer than `prefill_chunk` positions go through prefill.py (pipelined chunks).
Ring decoding (ring.py) uses the public methods below (`start_ring_step`, `next_ring_item`,
`stop_ring`), never the session's internals.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from swarmllm.client.chain import Hop, RemoteStepError
from swarmllm.client.failover import Failover, FailoverEvent, Replanner
from swarmllm.client.routing import ChainLink
from swarmllm.client.timeouts import StepTimeouts
from swarmllm.engine.generation import PREFILL_CHUNK
from swarmllm.protocol import (
    SESSION_HANDLER, CloseSession, ErrorCode, ErrorReply, NextHop, OpenSession, ProtocolError, RingSpec, RingStop,
    SessionOpened, SetUpstream, Step, StepResult, SwarmError, TokenResult, decode_frame, decode_tensor, encode_frame,
    encode_tensor,
)

__all__ = ["FailoverEvent", "Hop", "InferenceSession", "RemoteStepError", "RingChannel", "PREFILL_CHUNK"]


@dataclass
class RingChannel:
    """Step ids [base, end) of one ring (token k comes from step base + k) and where its
    TokenResults and errors are delivered."""

    base: int
    end: int
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)

    def covers(self, step_id: int) -> bool:
        return self.base <= step_id < self.end


class InferenceSession:
    def __init__(self, swarm, model_id: str, chain: list[ChainLink], max_length: int, *, wire_dtype: str = "float32",
                 step_timeout: Optional[float] = None, open_timeout: float = 5.0,
                 replanner: Optional[Replanner] = None, on_peer_failure: Callable[[str], None] = lambda peer: None,
                 max_failovers: int = 8, prefill_chunk: Optional[int] = PREFILL_CHUNK,
                 on_step_timed: Callable[[list[ChainLink], float], None] = lambda chain, seconds: None):
        self.swarm, self.model_id = swarm, model_id
        self.max_length, self.wire_dtype = max_length, wire_dtype
        self.open_timeout = open_timeout
        self.prefill_chunk = prefill_chunk
        self.on_step_timed = on_step_timed  # one-position steps' times, for the client's speed estimates
        self.timeouts = StepTimeouts(step_timeout)
        self.failover = Failover(self, replanner, on_peer_failure, max_failovers)
        self.hops = [Hop(link) for link in chain]
        self.position = 0               # positions the whole chain has committed
        self.inputs: Optional[torch.Tensor] = None  # [max_length, D]: what we sent to block 0, for replays
        self.chunks: list[int] = []     # lengths of the committed steps, in order (replays repeat them)
        self.rollbacks = 0              # steps that started before the end (rejected speculative drafts)
        self.last_step_seconds = 0.0
        self._next_step_id = 0
        self._pending: dict[int, asyncio.Future] = {}
        self._ring: Optional[RingChannel] = None  # the ring in progress (client/ring.py)
        self._closed = False

    @property
    def chain(self) -> list[ChainLink]:
        return [hop.link for hop in self.hops]

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def failovers(self) -> list[FailoverEvent]:
        return self.failover.events

    # --- opening ---------------------------------------------------------------------
    async def open(self) -> "InferenceSession":
        try:
            await self.open_hops(self.hops, None, None)
        except BaseException:
            await self.close()
            raise
        return self

    async def open_hops(self, hops: list[Hop], after: Optional[NextHop], before: Optional[str]) -> None:
        """Open sessions on `hops` (pushing to each other, the last one to `after`; the first one
        takes Steps from the server `before`, or from us if None)."""
        async def open_one(index: int, hop: Hop) -> None:
            try:
                hop.stream = await self.swarm.open_stream(hop.peer_id, SESSION_HANDLER, timeout=self.open_timeout)
            except ConnectionError as e:
                raise RemoteStepError(hop.peer_id, ErrorCode.UNREACHABLE, str(e)) from None
            next_hop = hops[index + 1].next_hop() if index + 1 < len(hops) else after
            upstream = hops[index - 1].peer_id if index > 0 else before
            try:
                await hop.stream.send(encode_frame(OpenSession(
                    session_id=hop.session_id, model_id=self.model_id, start=hop.link.start, end=hop.link.end,
                    max_length=self.max_length, wire_dtype=self.wire_dtype, next_hop=next_hop, upstream=upstream)))
                reply, _ = decode_frame(await asyncio.wait_for(hop.stream.recv(), self.open_timeout))
            except asyncio.TimeoutError:  # per hop, so the error names the server that is frozen
                raise RemoteStepError(hop.peer_id, ErrorCode.TIMEOUT, f"no answer to OpenSession within "
                                                                      f"{self.open_timeout:.0f} s") from None
            except (ConnectionError, ProtocolError) as e:
                raise RemoteStepError(hop.peer_id, ErrorCode.UNREACHABLE, f"no answer to OpenSession: {e}") from None
            if isinstance(reply, ErrorReply):
                raise RemoteStepError(hop.peer_id, reply.code, reply.message)
            if not isinstance(reply, SessionOpened):
                raise RemoteStepError(hop.peer_id, ErrorCode.MALFORMED, f"expected session_opened, got {reply.type}")
            hop.reader = asyncio.create_task(self._read(hop))

        results = await asyncio.gather(*(open_one(i, hop) for i, hop in enumerate(hops)), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            for hop in hops:
                await self.close_hop(hop)
            raise errors[0]

    async def _read(self, hop: Hop) -> None:
        """Route frames from one server: results resolve steps, errors fail them."""
        try:
            while True:
                msg, payload = decode_frame(await hop.stream.recv())
                if isinstance(msg, StepResult):
                    future = self._pending.pop(msg.step_id, None)
                    if future is not None and not future.done():
                        future.set_result(decode_tensor(msg.tensor, payload))
                elif isinstance(msg, TokenResult):
                    if self._ring is not None and self._ring.covers(msg.step_id):
                        self._ring.queue.put_nowait(msg)
                elif isinstance(msg, ErrorReply):
                    self._fail(RemoteStepError(msg.peer_id or hop.peer_id, msg.code, msg.message), msg.step_id)
        except (ConnectionError, ProtocolError) as e:
            if not self._closed:
                self._fail(RemoteStepError(hop.peer_id, ErrorCode.CONNECTION_LOST, f"connection lost: {e}"), None)

    def _fail(self, error: RemoteStepError, step_id: Optional[int]) -> None:
        if self._ring is not None and (step_id is None or self._ring.covers(step_id)):
            self._ring.queue.put_nowait(error)
        if step_id is not None and step_id not in self._pending:
            return  # about a step that already finished or was retried: stale, ignore it
        targets = [step_id] if step_id is not None else list(self._pending)
        for sid in targets:
            future = self._pending.pop(sid, None)
            if future is not None and not future.done():
                future.set_exception(error)

    # --- step ids and results ------------------------------------------------------------
    def new_step_id(self) -> int:
        self._next_step_id += 1
        return self._next_step_id - 1

    def reserve_step_ids(self, n: int) -> int:
        """The first of n consecutive fresh step ids."""
        first = self._next_step_id
        self._next_step_id += max(1, n)
        return first

    def expect(self, step_id: int) -> asyncio.Future:
        """A future resolved by the StepResult of `step_id` (or failed by an error about it)."""
        future = self._pending[step_id] = asyncio.get_running_loop().create_future()
        return future

    def forget(self, step_id: int) -> None:
        self._pending.pop(step_id, None)

    async def send_and_wait(self, hop: Hop, frame: bytes, step_id: int, timeout: float) -> torch.Tensor:
        """Send a frame to `hop` and wait for the StepResult of `step_id`."""
        future = self.expect(step_id)
        try:
            await hop.stream.send(frame)
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise RemoteStepError(self.hops[-1].peer_id, ErrorCode.TIMEOUT,
                                  f"step {step_id} got no result within {timeout:.1f} s") from None
        except ConnectionError as e:
            raise RemoteStepError(hop.peer_id, ErrorCode.CONNECTION_LOST, str(e)) from None
        finally:
            self.forget(step_id)

    def record_inputs(self, hidden: torch.Tensor, start_position: int) -> None:
        """Keep the inputs [1, T, D] sent to block 0 for positions start_position..: replays resend them."""
        if self.inputs is None:
            self.inputs = torch.empty(self.max_length, hidden.shape[2], dtype=hidden.dtype)
        self.inputs[start_position:start_position + hidden.shape[1]] = hidden[0]

    def step_frame(self, hidden: torch.Tensor, start_position: int, step_id: int,
                   ring: Optional[RingSpec] = None) -> bytes:
        meta, raw = encode_tensor(hidden, self.wire_dtype)
        return encode_frame(Step(session_id=self.hops[0].session_id, step_id=step_id, start_position=start_position,
                                 tensor=meta, ring=ring), raw)

    # --- steps -----------------------------------------------------------------------
    def timeout_for(self, n_positions: int) -> float:
        return self.timeouts.step(n_positions)

    async def step(self, hidden: torch.Tensor, start_position: int) -> torch.Tensor:
        """Run hidden states [1, T, D] for positions start_position.. through the chain.

        Steps longer than `prefill_chunk` positions are cut into chunks that are all sent at
        once (prefill.py), so that while server B runs chunk 1, server A already runs chunk 2.
        The local reference cuts the same way (`engine.generation.chunked_forward`).
        """
        if self._closed:
            raise SwarmError("the session is closed")
        if self.prefill_chunk and hidden.shape[1] > self.prefill_chunk:
            from swarmllm.client.prefill import pipelined_step
            return await pipelined_step(self, hidden, start_position)
        return await self.step_with_failover(hidden, start_position)

    async def step_with_failover(self, hidden: torch.Tensor, start_position: int) -> torch.Tensor:
        """One step, retried on replacement servers until it succeeds or failover gives up."""
        n_new = hidden.shape[1]
        self.record_inputs(hidden, start_position)
        failed_at: Optional[float] = None
        for attempt in range(self.failover.max_failovers + 1):
            step_id = self.new_step_id()
            frame = self.step_frame(hidden, start_position, step_id)
            started = time.perf_counter()
            try:
                output = await self.send_and_wait(self.hops[0], frame, step_id, self.timeout_for(n_new))
            except RemoteStepError as error:
                failed_at = await self.recover(error, attempt, failed_at)
                continue
            self.complete_step(start_position, n_new, time.perf_counter() - started, failed_at)
            return output
        raise AssertionError("unreachable")

    async def recover(self, error: RemoteStepError, attempt: int, failed_at: Optional[float]) -> float:
        """Fail over after `error` (attempt-th retry of one step; failed_at: when its first try failed,
        None if it had not), or re-raise when that cannot help. Returns when the step's first try failed."""
        return await self.failover.recover(error, attempt, failed_at)

    def complete_step(self, start_position: int, n_new: int, seconds: float, failed_at: Optional[float]) -> None:
        """A step's output arrived: time it, commit its positions, close the books on a failover."""
        self.last_step_seconds = seconds
        if failed_at is None:  # a retried step's time includes the recovery
            self.timeouts.observe(seconds, n_new)
            if n_new == 1:
                self.on_step_timed(self.chain, seconds)
        self.commit(start_position, n_new)
        if failed_at is not None:
            self.failover.finished(failed_at)

    def commit(self, start_position: int, n_new: int) -> None:
        """Positions [start_position, start_position + n_new) are computed by the whole chain.

        A step that starts before the end rolls back (speculative decoding after rejected
        drafts): drop the chunks it replaces and cut the one it starts inside. A cut chunk
        replays as a shorter step than it was computed in; that is exact for steps of at most
        EXACT_STEP_POSITIONS positions, whose rows the engine computes exactly as single steps
        (a verify step is one; tests/integration/test_failover.py fails over mid-speculation).
        """
        total = self.position  # invariant: position == sum(chunks)
        if start_position < total:
            self.rollbacks += 1
        while self.chunks and total > start_position:
            total -= self.chunks.pop()
        if total < start_position:
            self.chunks.append(start_position - total)
        self.chunks.append(n_new)
        self.position = start_position + n_new

    # --- ring decoding (ring.py) -------------------------------------------------------------
    @property
    def ring_supported(self) -> bool:
        """Whether the chain's first and last servers announced that they can ring."""
        return bool(getattr(self.hops[0].link.record, "ring", False) and
                    getattr(self.hops[-1].link.record, "ring", False))

    def first_hop(self) -> NextHop:
        return self.hops[0].next_hop()

    async def start_ring_step(self, hidden: torch.Tensor, start_position: int, n_steps: int,
                              spec: RingSpec) -> RingChannel:
        """Send the step that starts a ring of up to n_steps tokens; its tokens come to the channel."""
        base = self.reserve_step_ids(n_steps)
        self._ring = RingChannel(base, base + n_steps)
        self.record_inputs(hidden, start_position)
        try:
            await self.hops[0].stream.send(self.step_frame(hidden, start_position, base, ring=spec))
        except ConnectionError as e:
            self._ring = None
            raise RemoteStepError(self.hops[0].peer_id, ErrorCode.CONNECTION_LOST, str(e)) from None
        return self._ring

    async def next_ring_item(self, channel: RingChannel, n_new: int) -> TokenResult:
        """The ring's next token, or raises the RemoteStepError that broke it (a timeout included)."""
        timeout = self.timeout_for(n_new)
        try:
            item = await asyncio.wait_for(channel.queue.get(), timeout)
        except asyncio.TimeoutError:
            raise RemoteStepError(self.hops[-1].peer_id, ErrorCode.TIMEOUT,
                                  f"ring step got no token within {timeout:.1f} s") from None
        if isinstance(item, RemoteStepError):
            raise item
        return item

    def close_ring(self, channel: RingChannel) -> None:
        if self._ring is channel:
            self._ring = None

    def ring_stopper(self) -> tuple[Hop, str]:
        """Who to tell when the running ring must stop early: its last server and its session id
        (taken when the ring starts: a failover may replace that server later)."""
        return self.hops[-1], self.hops[-1].session_id

    async def stop_ring(self, stopper: tuple[Hop, str]) -> None:
        """Tell a ring's last server to stop (the client found a stop string); best effort."""
        hop, session_id = stopper
        if self._closed or hop.stream is None:
            return
        try:
            await asyncio.wait_for(hop.stream.send(encode_frame(RingStop(session_id=session_id))), 1.0)
        except (ConnectionError, asyncio.TimeoutError):
            pass

    async def set_upstream(self, hop: Hop, upstream: Optional[str]) -> None:
        """Tell `hop` to take Steps from `upstream` from now on (its previous server was replaced)."""
        try:
            await hop.stream.send(encode_frame(SetUpstream(session_id=hop.session_id, upstream=upstream)))
        except ConnectionError as e:
            raise RemoteStepError(hop.peer_id, ErrorCode.CONNECTION_LOST, str(e)) from None

    # --- closing ---------------------------------------------------------------------
    async def close_hop(self, hop: Hop) -> None:
        if hop.stream is not None and not hop.stream.closed:
            try:
                await asyncio.wait_for(hop.stream.send(encode_frame(CloseSession(session_id=hop.session_id))), 1)
            except (ConnectionError, asyncio.TimeoutError):
                pass
        hop.close()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for hop in self.hops:
            await self.close_hop(hop)
        self._fail(RemoteStepError("", ErrorCode.CLOSED, "session closed"), None)

