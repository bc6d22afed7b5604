"""One inference session over a chain of servers (async), with failover at any position.

Opening sends `OpenSession` to every server of the chain on its own stream, each naming
the next server as its `next_hop`, and waits until all have reserved KV cache. A step sends
hidden states to the first server only; the output arrives from the last server.

Failover: any server may fail a step (error reply, lost stream, or silence past the step
timeout). The session then finds which servers failed (the one named, or by pinging all
of them after a timeout), asks the planner for a replacement of exactly their blocks,
opens sessions there, and rebuilds their KV caches by replay: the server before the gap
re-sends its stored outputs for every committed position (`Reroute`), or the client sends
its stored inputs if the gap starts at block 0. Then the failed step is sent again with a
new step id; upstream servers roll their caches back to its start position and recompute
it deterministically. The caller sees no error and the same outputs: greedy text is
identical to an unfaulted run and the sampler's RNG is untouched.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Optional

import torch

from swarmllm.client.routing import ChainLink
from swarmllm.engine.blocks import EXACT_STEP_POSITIONS
from swarmllm.protocol import (
    PING_HANDLER, SESSION_HANDLER, CloseSession, ErrorReply, NextHop, OpenSession, Ping, Pong, ProtocolError, Reroute,
    SessionOpened, Step, StepResult, SwarmError, TokenResult, decode_frame, decode_tensor, encode_frame, encode_tensor,
)

# Errors that say the client itself is wrong: retrying elsewhere cannot help.
NOT_RETRYABLE = {"bad_shape", "too_long", "malformed", "version_mismatch"}

Replanner = Callable[[int, int, set], Awaitable[list[ChainLink]]]

def fixed_timeout(n_positions: int) -> float:
    """A step's timeout before anything was measured: 5 s + 20 ms per position."""
    return 5.0 + 0.02 * n_positions


# Prompts longer than this many positions are prefilled in chunks of it, pipelined through
# the chain. Part of the computation's definition: the local reference chunks the same way.
PREFILL_CHUNK = 256


def chunked_forward(forward: Callable, size: Optional[int] = PREFILL_CHUNK) -> Callable:
    """forward_fn(hidden, start) running steps longer than `size` as consecutive chunks."""
    def run(hidden: torch.Tensor, start_position: int) -> torch.Tensor:
        if not size or hidden.shape[1] <= size:
            return forward(hidden, start_position)
        return torch.cat([forward(hidden[:, o:o + size], start_position + o) for o in range(0, hidden.shape[1], size)],
                         dim=1)
    return run


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


class RemoteStepError(SwarmError):
    """A server of the chain failed a request; `peer_id` says which, `code` why."""

    def __init__(self, peer_id: str, code: str, message: str):
        super().__init__(f"server {peer_id} failed: {message}")
        self.peer_id, self.code = peer_id, code


@dataclass
class Hop:
    """One server of the chain as this session sees it."""

    link: ChainLink
    session_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    stream: object = None
    reader: Optional[asyncio.Task] = None
    warm: bool = True  # False while a replacement's KV cache has not been rebuilt yet

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


@dataclass
class RingChannel:
    """Step ids [base, end) of one ring (token k comes from step base + k) and where its
    TokenResults and errors are delivered."""

    base: int
    end: int
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)

    def covers(self, step_id: int) -> bool:
        return self.base <= step_id < self.end


@dataclass
class FailoverEvent:
    peer_ids: list[str]          # servers replaced
    code: str                    # why the step first failed (later faults in the same recovery are in `trace`)
    blocks: tuple[int, int]      # the span replaced
    position: int                # committed positions replayed
    replacement: list[str]       # servers that took over
    seconds: float = 0.0         # from the failure to the retried step's success
    trace: list = field(default_factory=list)  # (seconds since the failure, what happened): where the time went


class InferenceSession:
    def __init__(self, swarm, model_id: str, chain: list[ChainLink], max_length: int, *, wire_dtype: str = "float32",
                 step_timeout: Optional[float] = None, open_timeout: float = 5.0,
                 replanner: Optional[Replanner] = None, on_peer_failure: Callable[[str], None] = lambda peer: None,
                 max_failovers: int = 8, prefill_chunk: Optional[int] = PREFILL_CHUNK):
        self.swarm, self.model_id = swarm, model_id
        self.max_length, self.wire_dtype = max_length, wire_dtype
        self.step_timeout, self.open_timeout = step_timeout, open_timeout
        self.replanner, self.on_peer_failure, self.max_failovers = replanner, on_peer_failure, max_failovers
        self.prefill_chunk = prefill_chunk
        self.hops = [Hop(link) for link in chain]
        self.position = 0               # positions the whole chain has committed
        self.inputs: Optional[torch.Tensor] = None  # [max_length, D]: what we sent to block 0, for replays
        self.chunks: list[int] = []     # lengths of the committed steps, in order (replays repeat them)
        self.rollbacks = 0              # steps that started before the end (rejected speculative drafts)
        self.last_step_seconds = 0.0
        self.failovers: list[FailoverEvent] = []
        self._next_step_id = 0
        self._trace: list[tuple[float, str]] = []  # of the failover in progress
        self._failed_at, self._first_error = 0.0, ""
        self._decode_seconds, self._decode_steps, self._slack = 0.0, 0, 8.0  # for the adaptive step timeout
        self._pending: dict[int, asyncio.Future] = {}
        self._ring: Optional[RingChannel] = None  # the ring in progress (client/ring.py)
        self._closed = False

    @property
    def chain(self) -> list[ChainLink]:
        return [hop.link for hop in self.hops]

    @property
    def closed(self) -> bool:
        return self._closed

    # --- opening ---------------------------------------------------------------------
    async def open(self) -> "InferenceSession":
        try:
            await self._open_hops(self.hops, None)
        except BaseException:
            await self.close()
            raise
        return self

    async def _open_hops(self, hops: list[Hop], after: Optional[NextHop]) -> None:
        """Open sessions on `hops` (pushing to each other, the last one to `after`)."""
        async def open_one(index: int, hop: Hop) -> None:
            try:
                hop.stream = await self.swarm.open_stream(hop.peer_id, SESSION_HANDLER, timeout=self.open_timeout)
            except ConnectionError as e:
                raise RemoteStepError(hop.peer_id, "unreachable", str(e)) from None
            next_hop = hops[index + 1].next_hop() if index + 1 < len(hops) else after
            try:
                await hop.stream.send(encode_frame(OpenSession(
                    session_id=hop.session_id, model_id=self.model_id, start=hop.link.start, end=hop.link.end,
                    max_length=self.max_length, wire_dtype=self.wire_dtype, next_hop=next_hop)))
                reply, _ = decode_frame(await asyncio.wait_for(hop.stream.recv(), self.open_timeout))
            except asyncio.TimeoutError:  # per hop, so the error names the server that is frozen
                raise RemoteStepError(hop.peer_id, "timeout", f"no answer to OpenSession within "
                                                              f"{self.open_timeout:.0f} s") from None
            except (ConnectionError, ProtocolError) as e:
                raise RemoteStepError(hop.peer_id, "unreachable", f"no answer to OpenSession: {e}") from None
            if isinstance(reply, ErrorReply):
                raise RemoteStepError(hop.peer_id, reply.code, reply.message)
            if not isinstance(reply, SessionOpened):
                raise RemoteStepError(hop.peer_id, "malformed", f"expected session_opened, got {reply.type}")
            hop.reader = asyncio.create_task(self._read(hop))

        results = await asyncio.gather(*(open_one(i, hop) for i, hop in enumerate(hops)), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            for hop in hops:
                await self._close_hop(hop)
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
                self._fail(RemoteStepError(hop.peer_id, "connection_lost", f"connection lost: {e}"), None)

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

    # --- steps -----------------------------------------------------------------------
    def timeout_for(self, n_positions: int) -> float:
        """How long a step may take before the chain is presumed stalled.

        A fixed 5 s (+20 ms per position) until this session has timed a few decode steps;
        then `slack` times their moving average (never under 1.5 s), so a frozen server is
        noticed in about a second on a fast chain. A timeout after which every server still
        answers a ping was a load spike, not a failure: `slack` doubles for the session.
        """
        if self.step_timeout is not None:
            return self.step_timeout
        default = fixed_timeout(n_positions)
        if self._decode_steps < 3:
            return default
        return min(default, max(1.5, self._slack * self._decode_seconds + 0.02 * n_positions))

    def _replay_timeout(self, n_positions: int) -> float:
        """A replay recomputes a whole history (in its original chunks) on the new servers only.

        On a chain whose decode steps are known to be quick, 2 s + 20 ms per position (scaled
        by `slack` after false alarms); otherwise, or when that is longer, 5 s + 20 ms per position.
        """
        default = fixed_timeout(n_positions)
        if self._decode_steps < 3 or self._decode_seconds > 0.2:
            return default
        return min(default, (2.0 + 0.02 * n_positions) * self._slack / 8.0)

    def _observe(self, seconds: float, n_positions: int) -> None:
        if n_positions <= EXACT_STEP_POSITIONS:  # decode and verify steps; prefill time says little about the next token
            self._decode_seconds = seconds if self._decode_steps == 0 else 0.8 * self._decode_seconds + 0.2 * seconds
            self._decode_steps += 1

    async def _send_and_wait(self, hop: Hop, frame: bytes, step_id: int, timeout: float) -> torch.Tensor:
        future = asyncio.get_running_loop().create_future()
        self._pending[step_id] = future
        try:
            await hop.stream.send(frame)
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise RemoteStepError(self.hops[-1].peer_id, "timeout",
                                  f"step {step_id} got no result within {timeout:.1f} s") from None
        except ConnectionError as e:
            raise RemoteStepError(hop.peer_id, "connection_lost", str(e)) from None
        finally:
            self._pending.pop(step_id, None)

    def _new_step_id(self) -> int:
        self._next_step_id += 1
        return self._next_step_id - 1

    def open_ring(self, n_steps: int) -> RingChannel:
        """Reserve step ids for a ring of up to n_steps steps; its results come to the channel."""
        base = self._new_step_id()
        self._next_step_id += n_steps - 1
        self._ring = RingChannel(base, base + n_steps)
        return self._ring

    def close_ring(self, channel: RingChannel) -> None:
        if self._ring is channel:
            self._ring = None

    async def step(self, hidden: torch.Tensor, start_position: int) -> torch.Tensor:
        """Run hidden states [1, T, D] for positions start_position.. through the chain.

        Steps longer than `prefill_chunk` positions are cut into chunks that are all sent at
        once, so that while server B runs chunk 1, server A already runs chunk 2 (pipelined
        prefill). The local reference cuts the same way (`chunked_forward`), so outputs agree.
        """
        if self._closed:
            raise SwarmError("the session is closed")
        n_new = hidden.shape[1]
        if self.inputs is None:
            self.inputs = torch.empty(self.max_length, hidden.shape[2], dtype=hidden.dtype)
        if self.prefill_chunk and n_new > self.prefill_chunk:
            return await self._pipelined(hidden, start_position)
        return await self._step(hidden, start_position)

    async def _pipelined(self, hidden: torch.Tensor, start_position: int) -> torch.Tensor:
        size, n_new = self.prefill_chunk, hidden.shape[1]
        self.inputs[start_position:start_position + n_new] = hidden[0]
        pieces = [(offset, hidden[:, offset:offset + size]) for offset in range(0, n_new, size)]
        futures, outputs = {}, []
        try:
            for offset, piece in pieces:
                step_id = self._new_step_id()
                meta, raw = encode_tensor(piece, self.wire_dtype)
                futures[step_id] = self._pending[step_id] = asyncio.get_running_loop().create_future()
                await self.hops[0].stream.send(encode_frame(Step(
                    session_id=self.hops[0].session_id, step_id=step_id, start_position=start_position + offset,
                    tensor=meta), raw))
            for (offset, piece), (step_id, future) in zip(pieces, futures.items()):
                try:
                    outputs.append(await asyncio.wait_for(future, self.timeout_for(piece.shape[1])))
                except asyncio.TimeoutError:
                    raise RemoteStepError(self.hops[-1].peer_id, "timeout", f"prefill chunk {step_id} timed out") \
                        from None
                self._commit(start_position + offset, piece.shape[1])
        except (RemoteStepError, ConnectionError):
            # Whatever was not committed goes the ordinary way, one chunk at a time, with failover.
            for offset, piece in pieces[len(outputs):]:
                outputs.append(await self._step(piece, start_position + offset))
        finally:
            for step_id in futures:
                self._pending.pop(step_id, None)
        return torch.cat(outputs, dim=1)

    async def _step(self, hidden: torch.Tensor, start_position: int) -> torch.Tensor:
        n_new = hidden.shape[1]
        self.inputs[start_position:start_position + n_new] = hidden[0]
        meta, raw = encode_tensor(hidden, self.wire_dtype)
        failed_at: Optional[float] = None
        for attempt in range(self.max_failovers + 1):
            step_id = self._new_step_id()
            frame = encode_frame(Step(session_id=self.hops[0].session_id, step_id=step_id,
                                      start_position=start_position, tensor=meta), raw)
            started = time.perf_counter()
            try:
                output = await self._send_and_wait(self.hops[0], frame, step_id, self.timeout_for(n_new))
            except RemoteStepError as error:
                failed_at = await self.recover(error, attempt, failed_at)
                continue
            self.complete_step(start_position, n_new, time.perf_counter() - started, failed_at)
            return output
        raise AssertionError("unreachable")

    async def recover(self, error: RemoteStepError, attempt: int, failed_at: Optional[float]) -> float:
        """Fail over after `error` (attempt-th retry of one step; failed_at: when its first try failed,
        None if it had not), or re-raise when that cannot help. Returns when the step's first try failed."""
        if error.code in NOT_RETRYABLE or self.replanner is None or attempt >= self.max_failovers:
            raise error
        if failed_at is None:
            failed_at = self._failed_at = time.perf_counter()
            self._trace, self._first_error = [], error.code
        self._note(f"step failed: {error.code} from {error.peer_id[-8:]}")
        await self._recover_until_done(error)
        return failed_at

    def complete_step(self, start_position: int, n_new: int, seconds: float, failed_at: Optional[float]) -> None:
        """A step's output arrived: time it, commit its positions, close the books on a failover."""
        self.last_step_seconds = seconds
        if failed_at is None:  # a retried step's time includes the recovery
            self._observe(seconds, n_new)
        self._commit(start_position, n_new)
        if failed_at is not None and self.failovers:
            self._note("retried step done")
            self.failovers[-1].seconds = time.perf_counter() - failed_at
            self.failovers[-1].trace = self._trace

    def _commit(self, start_position: int, n_new: int) -> None:
        # A step that starts before the end rolls back (speculative decoding after rejected
        # drafts): drop the chunks it replaces and cut the one it starts inside. A cut chunk
        # replays as a shorter step than it was computed in; that is exact for steps of at most
        # EXACT_STEP_POSITIONS positions, whose rows the engine computes exactly as single steps
        # (a verify step is one; tests/integration/test_failover.py fails over mid-speculation).
        total = self.position  # invariant: position == sum(chunks)
        if start_position < total:
            self.rollbacks += 1
        while self.chunks and total > start_position:
            total -= self.chunks.pop()
        if total < start_position:
            self.chunks.append(start_position - total)
        self.chunks.append(n_new)
        self.position = start_position + n_new

    # --- failover --------------------------------------------------------------------
    def _note(self, what: str) -> None:
        """Record a failover phase, timed from the failure (kept on the FailoverEvent)."""
        self._trace.append((round(time.perf_counter() - self._failed_at, 3), what))

    async def _alive(self, hop: Hop, timeout: float = 1.0) -> bool:
        return await ping_peer(self.swarm, hop.peer_id, timeout) is not None

    async def _failed_hops(self, error: RemoteStepError) -> tuple[list[int], set[str]]:
        """(hops to replace, peers that are down). Every hop is pinged: a server that answers is
        not excluded from the replacement even if its session here broke (a dropped stream),
        so the only live replica of a span is never ruled out by mistake."""
        alive = await asyncio.gather(*(self._alive(hop) for hop in self.hops))
        down = {i for i, ok in enumerate(alive) if not ok}
        # A timeout names the last hop only because that is where the result should have come from.
        named = set() if error.code == "timeout" else {i for i, h in enumerate(self.hops) if h.peer_id == error.peer_id}
        return sorted(down | named), {self.hops[i].peer_id for i in down}

    async def _recover_until_done(self, error: RemoteStepError, wait_for_capacity: float = 30.0) -> None:
        """Recover; if recovery itself fails (another server dies meanwhile), recover again."""
        deadline = time.monotonic() + wait_for_capacity
        failures = 0
        while True:
            try:
                await self._recover(error)
                return
            except RemoteStepError as again:
                self._note(f"recovery failed: {again.code} from {again.peer_id[-8:]}")
                failures += 1
                if again.code in NOT_RETRYABLE or failures > 2 * self.max_failovers or time.monotonic() > deadline:
                    raise
                error = again
            except SwarmError as e:  # no server covers the gap right now: wait for one to (re)join
                self._note(f"no replacement yet: {str(e)[:200]}")
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(1.0)

    async def _recover(self, error: RemoteStepError) -> None:
        failed, down = await self._failed_hops(error)
        self._note(f"pinged {len(self.hops)} hops: replace {failed}, down {[p[-8:] for p in down]}")
        for peer in down:
            self.on_peer_failure(peer)
        cold = [i for i, hop in enumerate(self.hops) if not hop.warm]  # replacements whose replay did not finish
        if error.code == "timeout" and not down:
            self._slack = min(64.0, self._slack * 2)  # slow, not dead: be more patient
        if not failed and not cold:  # everyone answers: a transient fault; retry as is
            await asyncio.sleep(0.1)
            return
        first, last = min(failed + cold), max(failed + cold)
        start, end = self.hops[first].link.start, self.hops[last].link.end
        old = self.hops[first:last + 1]
        links = await self.replanner(start, end, down)
        new = [Hop(link, warm=False) for link in links]
        self._note(f"planned [{start}, {end}) on {[link.peer_id[-8:] for link in links]}")
        after = self.hops[last + 1].next_hop() if last + 1 < len(self.hops) else None
        try:
            await self._open_hops(new, after)
        except RemoteStepError as e:  # a replacement that is gone too (its record has not expired yet)
            if e.peer_id in {hop.peer_id for hop in new}:
                self.on_peer_failure(e.peer_id)
            raise
        self.hops[first:last + 1] = new
        for hop in old:
            await self._close_hop(hop)
        self.failovers.append(FailoverEvent([h.peer_id for h in old], self._first_error, (start, end), self.position,
                                            [h.peer_id for h in new]))
        self._note("opened")
        await self._replay(first, new, end)
        self._note(f"replayed {self.position} positions")
        for hop in new:
            hop.warm = True

    async def _replay(self, first: int, new: list[Hop], replay_end: int) -> None:
        """Rebuild the new hops' caches for the committed positions, in the original chunks."""
        p, chunks = self.position, tuple(self.chunks)
        first_id = self._new_step_id()
        self._next_step_id += max(0, len(chunks) - 1)
        last_id = first_id + max(0, len(chunks) - 1)
        if first > 0:
            before = self.hops[first - 1]
            frame = encode_frame(Reroute(session_id=before.session_id, next_hop=new[0].next_hop(), replay_positions=p,
                                         replay_chunks=chunks, step_id=first_id, replay_end=replay_end))
            if p == 0:
                try:
                    await before.stream.send(frame)
                except ConnectionError as e:
                    raise RemoteStepError(before.peer_id, "connection_lost", str(e)) from None
                return
            await self._send_and_wait(before, frame, last_id, self._replay_timeout(p))
        elif p > 0:
            frames, position = [], 0
            for index, length in enumerate(chunks):
                meta, raw = encode_tensor(self.inputs[position:position + length].unsqueeze(0), self.wire_dtype)
                frames.append(encode_frame(Step(session_id=new[0].session_id, step_id=first_id + index,
                                                start_position=position, tensor=meta, replay_end=replay_end), raw))
                position += length
            for frame in frames[:-1]:
                await new[0].stream.send(frame)
            await self._send_and_wait(new[0], frames[-1], last_id, self._replay_timeout(p))

    # --- closing ---------------------------------------------------------------------
    async def _close_hop(self, hop: Hop) -> None:
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
            await self._close_hop(hop)
        self._fail(RemoteStepError("", "closed", "session closed"), None)
