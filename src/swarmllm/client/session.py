"""One inference session over a chain of servers (async): open, step, close.

Opening sends `OpenSession` to every server of the chain on its own stream, each naming
the next server as its `next_hop` and the previous one as its `upstream` (the only peer it
will take Steps from; the first server takes them from us), and waits until all have
reserved KV cache (and answered with a protocol version within ours; a server that refuses ours,
`version_mismatch`, fails the opening and the caller routes around it). Servers take CloseSession, Reroute, SetUpstream and RingStop only from
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

Receipts (receipt_check.py): every server signs a receipt for every step it computes. A step's
output is handed out only once its result and every receipt of it are in and check out (signed by
the authenticated peer of the stream, hashes matching what was sent and received and each
other); a receipt that breaks the rules fails the step with `RemoteStepError(bad_receipt)` naming
the suspects, which failover replaces like a failed server. Verified receipts go to `on_receipts`
(the client's store, receipts.py) under this session's own id, `session_id`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from swarmllm.client.chain import Hop, RemoteStepError
from swarmllm.client.failover import Failover, FailoverEvent, Replanner
from swarmllm.client.receipt_check import ReceiptBook, ReceiptError, Signer
from swarmllm.client.routing import ChainLink
from swarmllm.client.timeouts import StepTimeouts
from swarmllm.engine.generation import PREFILL_CHUNK
from swarmllm.protocol import (
    SESSION_HANDLER, CloseSession, ErrorCode, ErrorReply, NextHop, OpenSession, ProtocolError, RingSpec, RingStop,
    SessionOpened, SetUpstream, Step, StepReceipt, StepResult, SwarmError, TensorMeta, TokenResult, decode_frame,
    decode_tensor, encode_frame, encode_tensor,
)
from swarmllm.protocol.messages import token_bytes
from swarmllm.protocol.receipts import digest
from swarmllm.protocol.versions import OUR_RANGE, range_text

__all__ = ["FailoverEvent", "Hop", "InferenceSession", "RemoteStepError", "RingChannel", "PREFILL_CHUNK"]


@dataclass
class RingChannel:
    """Step ids [base, end) of one ring (token k comes from step base + k) and where its
    TokenResults (once the step's receipts are verified) and errors are delivered."""

    base: int
    end: int
    start_position: int = 0          # position of the ring's first step
    first_positions: int = 1         # positions of that step (later ones have 1)
    signers: tuple[Signer, ...] = ()  # the chain when the ring started: who signs each ring step
    delivered: int = 0               # tokens handed out so far (the next is from step base + delivered)
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    _verified: dict = field(default_factory=dict)  # tokens verified ahead of an earlier one, by step id
    _queued: int = 0                 # tokens put in the queue so far

    def covers(self, step_id: int) -> bool:
        return self.base <= step_id < self.end

    def may_track(self, step_id: int, window: int = 64) -> bool:
        """Whether a receipt or token of `step_id` may open a record in the receipt book: a step of this
        ring not handed out yet, at most `window` ahead (so junk step ids cannot fill the book)."""
        first = self.base + self._queued
        return first <= step_id < min(self.end, first + window) and step_id not in self._verified

    def put_token(self, token: TokenResult) -> None:
        """A verified token: queued in step order (receipts of different servers arrive in any order)."""
        self._verified[token.step_id] = token
        while self.base + self._queued in self._verified:
            self.queue.put_nowait(self._verified.pop(self.base + self._queued))
            self._queued += 1

    def positions_of(self, step_id: int) -> tuple[int, int]:
        """(start position, positions) of ring step `step_id`."""
        k = step_id - self.base
        if k == 0:
            return self.start_position, self.first_positions
        return self.start_position + self.first_positions + k - 1, 1


def committed_chunks(chunks: list[int], start_position: int, n_new: int) -> list[int]:
    """The chunk lengths after a step of n_new positions at start_position: the chunks it replaces are
    dropped, one it starts inside is cut (a rollback), a gap before it would be one chunk."""
    chunks, total = list(chunks), sum(chunks)
    while chunks and total > start_position:
        total -= chunks.pop()
    if total < start_position:
        chunks.append(start_position - total)
    return chunks + [n_new]


class InferenceSession:
    def __init__(self, swarm, model_id: str, chain: list[ChainLink], max_length: int, *, wire_dtype: str = "float32",
                 step_timeout: Optional[float] = None, open_timeout: float = 5.0,
                 replanner: Optional[Replanner] = None, on_peer_failure: Callable[[str], None] = lambda peer: None,
                 max_failovers: int = 8, prefill_chunk: Optional[int] = PREFILL_CHUNK,
                 on_step_timed: Callable[[list[ChainLink], float], None] = lambda chain, seconds: None,
                 on_receipts: Callable[[str, list[StepReceipt]], None] = lambda session_id, receipts: None,
                 on_bad_receipt: Callable[[RemoteStepError], None] = lambda error: None,
                 on_stall: Callable[[str], None] = lambda peer: None, lite_hidden_size: Optional[int] = None):
        self.swarm, self.model_id = swarm, model_id
        # A lite client (no weights): its inputs are token ids ([1, T, 1] floats), sent as Step.token_ids for
        # the first server to embed into hidden states of this size.
        self.lite_hidden_size = lite_hidden_size
        self.session_id = uuid.uuid4().hex  # this client's name for the session (receipts are stored under it)
        self.on_bad_receipt = on_bad_receipt  # a server broke the receipt rules (failover also routes around it)
        self.receipts = ReceiptBook(model_id, lambda receipts: on_receipts(self.session_id, receipts))
        self.verifier = None  # a Verifier (verification.py) when opened with --verify sample|strict: set before open()
        self.max_length, self.wire_dtype = max_length, wire_dtype
        self.open_timeout = open_timeout
        self.prefill_chunk = prefill_chunk
        self.on_step_timed = on_step_timed  # one-position steps' times, for the client's speed estimates
        self.timeouts = StepTimeouts(step_timeout)
        self.failover = Failover(self, replanner, on_peer_failure, max_failovers, on_stall, on_bad_receipt)
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

    def verify_with(self, verifier) -> None:
        """Verify this session's servers (verification.py); before open(): servers must report their outputs."""
        self.verifier = verifier
        self.receipts.on_done = verifier.on_step_done

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
            if self.verifier is not None:  # strict: a witness for every span before the first step, or a clear error
                await self.verifier.prepare()
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
                    max_length=self.max_length, wire_dtype=self.wire_dtype, next_hop=next_hop, upstream=upstream,
                    report_outputs=self.verifier is not None)))
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
            if not OUR_RANGE[0] <= reply.protocol_version <= OUR_RANGE[1]:  # it must pick a version we speak
                raise RemoteStepError(hop.peer_id, ErrorCode.VERSION_MISMATCH, f"the server opened the session at "
                                      f"protocol v{reply.protocol_version}, outside this client's {range_text(OUR_RANGE)}")
            hop.protocol_version = reply.protocol_version
            hop.reader = asyncio.create_task(self._read(hop))

        results = await asyncio.gather(*(open_one(i, hop) for i, hop in enumerate(hops)), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            for hop in hops:
                await self.close_hop(hop)
            raise errors[0]

    async def _read(self, hop: Hop) -> None:
        """Route frames from one server: results and receipts go to the receipt book (which delivers
        a step once both are in and verified), errors fail steps."""
        sender = hop.stream.remote_peer_id  # authenticated by libp2p: what receipts are checked against
        try:
            while True:
                msg, payload = decode_frame(await hop.stream.recv())
                try:
                    if isinstance(msg, StepReceipt):
                        self._ring_step_known(msg.step_id)
                        self.receipts.add_receipt(sender, msg)
                    elif isinstance(msg, StepResult):
                        in_ring = self.verifier is not None and self._ring is not None and \
                            self._ring.covers(msg.step_id) and self._ring_step_known(msg.step_id)
                        if self.receipts.expects(msg.step_id):
                            tensor = decode_tensor(msg.tensor, payload)
                            if self.verifier is not None and (in_ring or
                                                              self.receipts.last_signer(msg.step_id) != sender):
                                # a reported output (a ring's last server reports its hidden states too)
                                self.verifier.tap(msg.step_id, sender, tensor, digest(payload))
                            else:
                                self.receipts.add_result(msg.step_id, sender, tensor, digest(payload))
                    elif isinstance(msg, TokenResult):
                        if self._ring_step_known(msg.step_id):
                            self.receipts.add_result(msg.step_id, sender, msg, None)
                    elif isinstance(msg, ErrorReply):
                        self._fail(RemoteStepError(msg.peer_id or hop.peer_id, msg.code, msg.message,
                                                   reporter=hop.peer_id), msg.step_id)
                except ReceiptError as e:
                    error = RemoteStepError(e.peer_ids[0], ErrorCode.BAD_RECEIPT, e.message, also=e.peer_ids[1:])
                    self.on_bad_receipt(error)
                    self._fail(error, e.step_id)
        except (ConnectionError, ProtocolError) as e:
            if not self._closed:
                self._fail(RemoteStepError(hop.peer_id, ErrorCode.CONNECTION_LOST, f"connection lost: {e}"), None)

    def _ring_step_known(self, step_id: int) -> bool:
        """Whether the receipt book tracks `step_id`; a step of the running ring is tracked from its
        first receipt or token on (its tokens reach the ring's queue once verified)."""
        ring = self._ring
        if self.receipts.expects(step_id) or ring is None or not ring.may_track(step_id):
            return self.receipts.expects(step_id)
        start, positions = ring.positions_of(step_id)
        return self.receipts.expect(step_id, start, positions, ring.signers, None, ring.put_token)

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

    @staticmethod
    def signers(hops: list[Hop]) -> tuple[Signer, ...]:
        """Who signs a step computed by `hops` (in chain order), as the receipt book checks them."""
        return tuple(Signer(hop.peer_id, hop.session_id, hop.link.start, hop.link.end,
                            hop.link.record.compute_class.key) for hop in hops)

    def expect(self, step_id: int, start_position: int, positions: int, input_hash: Optional[bytes],
               hops: Optional[list[Hop]] = None) -> asyncio.Future:
        """A future resolved by the result of `step_id` once every receipt of it is in and verified (or
        failed by an error about it). hops: who computes it (default the chain); input_hash: sha256 of the
        tensor bytes sent to the first of them, if known."""
        future = self._pending[step_id] = asyncio.get_running_loop().create_future()
        self.receipts.expect(step_id, start_position, positions, self.signers(hops or self.hops), input_hash,
                             lambda result: future.done() or future.set_result(result))
        return future

    def forget(self, step_id: int) -> None:
        self._pending.pop(step_id, None)
        self.receipts.forget(step_id)

    def timeout_error(self, step_id: int, timeout: float) -> RemoteStepError:
        """Why `step_id` is not done after `timeout` s: receipts that never came (a protocol violation of
        the servers that owe them, reported to on_bad_receipt), or no result (the last server's timeout:
        failover pings them all)."""
        arrived, missing = self.receipts.missing(step_id)
        if arrived and missing:
            error = RemoteStepError(missing[0], ErrorCode.BAD_RECEIPT, f"sent no receipt for step {step_id} within "
                                                                       f"{timeout:.1f} s", also=tuple(missing[1:]))
            self.on_bad_receipt(error)
            return error
        signers = self.receipts.signers(step_id)
        if missing and len(missing) < len(signers):
            # The servers before it signed that they computed the step and sent it on: it took the step and
            # never finished it (or its upstream lies about sending it; failover sees if it happens again).
            return RemoteStepError(missing[0], ErrorCode.TIMEOUT, f"took step {step_id} from its upstream server "
                                                                  f"and did not finish it within {timeout:.1f} s",
                                   stalled=True)
        return RemoteStepError(self.hops[-1].peer_id, ErrorCode.TIMEOUT,
                               f"step {step_id} got no result within {timeout:.1f} s")

    async def send_and_wait(self, hop: Hop, frame: bytes, step_id: int, timeout: float) -> torch.Tensor:
        """Send a frame to `hop` and wait for the result of `step_id` (registered with `expect`)."""
        future = self._pending[step_id]
        try:
            await hop.stream.send(frame)
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise self.timeout_error(step_id, timeout) from None
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
                   ring: Optional[RingSpec] = None, session_id: Optional[str] = None,
                   replay_end: Optional[int] = None) -> tuple[bytes, bytes]:
        """(the Step frame for the chain's first server, sha256 of its tensor bytes: the receipts' input hash).
        A lite session sends the token ids it keeps as inputs (Step.token_ids), hashed as token_bytes."""
        session_id = session_id or self.hops[0].session_id
        if self.lite_hidden_size is not None:
            ids = tuple(int(t) for t in hidden[0, :, 0].round().long().tolist())
            meta = TensorMeta(dtype="float32", shape=(1, len(ids), self.lite_hidden_size))
            return encode_frame(Step(session_id=session_id, step_id=step_id, start_position=start_position,
                                     tensor=meta, ring=ring, replay_end=replay_end, token_ids=ids)), \
                digest(token_bytes(ids))
        meta, raw = encode_tensor(hidden, self.wire_dtype)
        return encode_frame(Step(session_id=session_id, step_id=step_id, start_position=start_position,
                                 tensor=meta, ring=ring, replay_end=replay_end), raw), digest(raw)

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
        size = self.prefill_chunk
        if size and hidden.shape[1] > size:
            if self.verifier is not None:  # each chunk verified before the next (pipelining them: not yet)
                return torch.cat([await self.step_with_failover(hidden[:, o:o + size], start_position + o)
                                  for o in range(0, hidden.shape[1], size)], dim=1)
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
            frame, sent = self.step_frame(hidden, start_position, step_id)
            self.expect(step_id, start_position, n_new, sent)
            if self.verifier is not None:  # strict: witnesses start beside the servers they check
                self.verifier.begin_step(step_id, start_position, n_new,
                                         committed_chunks(self.chunks, start_position, n_new))
            started = time.perf_counter()
            try:
                output = await self.send_and_wait(self.hops[0], frame, step_id, self.timeout_for(n_new))
                if self.verifier is not None:  # RemoteStepError(mismatch): the liar is banned; retried on others
                    await self.verifier.check_step(start_position, n_new, committed_chunks(self.chunks, start_position,
                                                                                          n_new))
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
        if start_position < self.position:  # invariant: position == sum(chunks)
            self.rollbacks += 1
        self.chunks = committed_chunks(self.chunks, start_position, n_new)
        self.position = start_position + n_new

    def truncate(self, position: int) -> None:
        """Forget the committed positions from `position` (a chunk boundary) on: the next step starts there."""
        self.chunks = committed_chunks(self.chunks, position, 0)[:-1]
        self.position = sum(self.chunks)

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
        ring = self._ring = RingChannel(base, base + n_steps, start_position, hidden.shape[1], self.signers(self.hops))
        self.record_inputs(hidden, start_position)
        frame, sent = self.step_frame(hidden, start_position, base, ring=spec)
        self.receipts.expect(base, start_position, hidden.shape[1], ring.signers, sent, ring.put_token)
        try:
            await self.hops[0].stream.send(frame)
        except ConnectionError as e:
            self.close_ring(ring)
            raise RemoteStepError(self.hops[0].peer_id, ErrorCode.CONNECTION_LOST, str(e)) from None
        return ring

    async def next_ring_item(self, channel: RingChannel, n_new: int) -> TokenResult:
        """The ring's next token, or raises the RemoteStepError that broke it (a timeout included)."""
        timeout = self.timeout_for(n_new)
        try:
            item = await asyncio.wait_for(channel.queue.get(), timeout)
        except asyncio.TimeoutError:
            raise self.timeout_error(channel.base + channel.delivered, timeout) from None
        if isinstance(item, RemoteStepError):
            raise item
        channel.delivered += 1
        return item

    def close_ring(self, channel: RingChannel) -> None:
        if self._ring is channel:
            self._ring = None
        self.receipts.forget_where(channel.covers)

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
        if self.verifier is not None:
            await self.verifier.close()
        for hop in self.hops:
            await self.close_hop(hop)
        self._fail(RemoteStepError("", ErrorCode.CLOSED, "session closed"), None)

