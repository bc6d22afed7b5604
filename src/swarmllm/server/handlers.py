"""Request handlers: wire messages in, compute, hidden states out to the next hop.

Flow of one step on a node: check the sender (below) -> validate (sessions.py) and the
opener's quotas (quotas.py) -> decode tensor -> run the span on the compute thread, batched
with the steps of other sessions that are ready at the same time (batching.py) -> encode ->
push to the next server (or reply to the client if this node is last). Every failure becomes
an `ErrorReply`; a bad message from one peer never affects another session, and never stops
the node.

Who may do what is decided from the stream's authenticated peer id alone (`stream.remote_peer_id`,
proven by libp2p's Noise handshake), never from a message: a session takes CloseSession,
Reroute, SetUpstream and RingStop only from the peer that opened it, Steps only from its
upstream server (or, on the chain's first server, from its opener), and RingTokens only from
the last server of the ring it runs. Anything else is refused with `ErrorReply(forbidden)` on
the offender's own stream, so the session and its client see nothing. Per-peer quotas
(quotas.py: streams, bytes in flight, sessions, KV memory, compute, step size, rollbacks)
refuse with `ErrorReply(over_quota)` naming the limit.

Receipts (v4, receipts.py): after every step it computes, once the output is on its way, the node
sends the session's client a signed `StepReceipt` on the client's stream and logs the step in its
work log (work_log.py).

Versions (protocol/versions.py): an OpenSession is served at the highest protocol version both
the client's range and this node's speak (the session keeps it; SessionOpened says it), or refused
with `ErrorReply(version_mismatch)` naming both ranges and who must upgrade.

Ring decoding (ring.py): the node at the end of the chain samples after a ring step and sends
the token to the first node (`RingToken` on a push stream) and to the client (`TokenResult`);
the first node embeds it and runs it like a step from the client.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Optional

import torch

from swarmllm.protocol import (
    PUSH_HANDLER, CloseSession, ErrorCode, ErrorReply, OpenSession, Ping, Pong, ProtocolError, QuotaError, QuotaInfo,
    Reroute, RingStop, RingToken, SessionOpened, SetUpstream, Step, StepResult, TensorMeta, TokenResult, decode_frame,
    decode_tensor, encode_frame, encode_tensor,
)
from swarmllm.protocol.messages import token_bytes
from swarmllm.protocol.versions import OUR_RANGE, negotiate
from swarmllm.protocol.records import block_key, parse_records
from swarmllm.protocol.receipts import digest
from swarmllm.server.batching import StepBatcher
from swarmllm.server.quotas import PeerQuotas
from swarmllm.server.receipts import ReceiptIssuer
from swarmllm.server.ring import RingState
from swarmllm.server.sessions import ServerSession, SessionTable
from swarmllm.swarm import dht_time

logger = logging.getLogger(__name__)


class SessionService:
    """Serves the session and push streams of one node."""

    def __init__(self, swarm, backend, table: SessionTable, model_id: str, max_batch: int = 16,
                 batch_wait: float = 0.005, quotas: Optional[PeerQuotas] = None,
                 receipts: Optional[ReceiptIssuer] = None):
        self.swarm, self.backend, self.table, self.model_id = swarm, backend, table, model_id
        self.peer_id: str = swarm.peer_id
        self.quotas = quotas if quotas is not None else PeerQuotas()
        self.receipts = receipts if receipts is not None else ReceiptIssuer(swarm.identity.sign, swarm.peer_id)
        self.sessions_served = self.steps_served = 0  # since start (the status page's counters, status_http.py)
        # One compute thread: the steps of all sessions run there, in batches of up to max_batch.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="swarmllm-compute")
        self.batcher = StepBatcher(self.executor, max_batch=max_batch, max_wait=batch_wait)
        self.accepting = True
        self.refusal = "this node is shutting down; open the session elsewhere"  # why, while not accepting
        self.tokens_processed = 0

    # --- stream entry points ---------------------------------------------------------
    async def serve_session_stream(self, stream) -> None:
        """A client's stream: OpenSession first, then Steps / Reroute / SetUpstream / RingStop / CloseSession / Ping."""
        peer = stream.remote_peer_id
        if not await self._stream_admitted(stream):
            return
        opened: list[str] = []
        try:
            while True:
                frame = await stream.recv()
                msg = None
                try:
                    with self._in_flight(peer, len(frame)):
                        msg, payload = decode_frame(frame)
                        await self._on_session_message(msg, payload, stream, opened)
                except ProtocolError as e:
                    await self._reply_error(stream, e, getattr(msg, "session_id", None), getattr(msg, "step_id", None))
        finally:
            for session_id in opened:  # the client went away: free what it held
                self.close_session(session_id)
            self.quotas.close_stream(peer)

    async def _on_session_message(self, msg, payload, stream, opened: list[str]) -> None:
        sender = stream.remote_peer_id
        if isinstance(msg, OpenSession):
            await self._open(msg, stream)
            opened.append(msg.session_id)
        elif isinstance(msg, Step):
            await self._step(msg, payload, sender=sender)
        elif isinstance(msg, Reroute):
            await self._reroute(msg, sender)
        elif isinstance(msg, SetUpstream):
            self._controlled(msg.session_id, sender, "change the upstream of").upstream = msg.upstream
        elif isinstance(msg, RingStop):
            self._ring_stop(msg, sender)
        elif isinstance(msg, CloseSession):
            self._controlled(msg.session_id, sender, "close")
            self.close_session(msg.session_id)
        elif isinstance(msg, Ping):
            await stream.send(encode_frame(Pong(
                nonce=msg.nonce, peer_id=self.peer_id, model_id=self.model_id, start=self.table.span_start,
                end=self.table.span_end, accepting=self.accepting)))
        else:
            raise ProtocolError(ErrorCode.MALFORMED, f"a server does not accept {msg.type!r} messages")

    async def serve_push_stream(self, stream) -> None:
        """The previous server's stream: Steps (or RingTokens from the chain's last server).
        Errors go to the session's client."""
        peer = stream.remote_peer_id
        if not await self._stream_admitted(stream):
            return
        try:
            while True:
                frame = await stream.recv()
                msg = None
                try:
                    with self._in_flight(peer, len(frame)):
                        msg, payload = decode_frame(frame)
                        if isinstance(msg, Step):
                            await self._step(msg, payload, sender=peer)
                        elif isinstance(msg, RingToken):
                            await self._ring_token(msg, peer)
                        else:
                            raise ProtocolError(ErrorCode.MALFORMED, f"push streams carry steps only, not {msg.type!r}")
                except ProtocolError as e:
                    # Tell the upstream server too: it relays the failure to its client.
                    await self._reply_error(stream, e, getattr(msg, "session_id", None), getattr(msg, "step_id", None))
        finally:
            self.quotas.close_stream(peer)

    async def _stream_admitted(self, stream) -> bool:
        """Count a new stream against its peer's quota; refuse it (with a reason) when over."""
        try:
            self.quotas.open_stream(stream.remote_peer_id)
        except QuotaError as e:
            await self._reply_error(stream, e, None, None)
            return False
        return True

    @contextmanager
    def _in_flight(self, peer: str, size: int):
        """A frame of `size` bytes from `peer` is held while it is handled (raises QuotaError when over)."""
        self.quotas.take_bytes(peer, size)
        try:
            yield
        finally:
            self.quotas.release_bytes(peer, size)

    def _controlled(self, session_id: str, sender: str, action: str) -> ServerSession:
        """The session, if `sender` opened it (only the opener may close, reroute, re-upstream it or stop its ring)."""
        session = self.table.get(session_id)
        if not session.may_control(sender):
            raise ProtocolError(ErrorCode.FORBIDDEN, f"peer {sender} did not open session {session_id}: only the "
                                                     f"peer that opened a session may {action} it")
        return session

    # --- operations --------------------------------------------------------------------
    async def _open(self, msg: OpenSession, stream) -> None:
        # The client's range against ours (versions.py): the highest common version, or a refusal naming both
        # ranges and who must upgrade.
        version = negotiate(OUR_RANGE, (msg.min_protocol_version, msg.protocol_version))
        if not self.accepting:
            raise ProtocolError(ErrorCode.SHUTTING_DOWN, self.refusal)
        self.table.check_open(msg, self.model_id)
        owner, cost = stream.remote_peer_id, self.table.cost(msg.max_length, msg.end - msg.start)
        self.quotas.admit_session(owner, cost, self.table.budget)
        try:
            cache = self.backend.new_cache(msg.start, msg.end, msg.max_length)
            history = torch.empty(msg.max_length, self.backend.hidden_size, dtype=self.backend.dtype)
        except BaseException:
            self.quotas.release_session(owner, cost)
            raise
        session = ServerSession(
            session_id=msg.session_id, start=msg.start, end=msg.end, max_length=msg.max_length,
            wire_dtype=msg.wire_dtype, next_hop=msg.next_hop, cache=cache, history=history,
            reserved_tokens=cost, client_stream=stream, owner=owner, upstream=msg.upstream,
            report_outputs=msg.report_outputs, protocol_version=version)
        self.table.add(session)
        self.sessions_served += 1
        await stream.send(encode_frame(SessionOpened(session_id=msg.session_id, peer_id=self.peer_id,
                                                     start=msg.start, end=msg.end, max_length=msg.max_length,
                                                     protocol_version=version)))

    async def _step(self, msg: Step, payload=None, hidden: Optional[torch.Tensor] = None, sender: str = "",
                    ring_token: bool = False) -> None:
        """Run a step from `sender`: hidden states from `payload` (as described by msg.tensor), or
        given (ring_token: an embedded RingToken, whose sender _ring_token checked)."""
        session = self.table.get(msg.session_id)
        if not ring_token and not session.may_step(sender):
            source = "its upstream server" if session.upstream is not None else "the peer that opened it"
            raise ProtocolError(ErrorCode.FORBIDDEN, f"peer {sender} may not send steps to session {msg.session_id}: "
                                                     f"it takes them only from {source}")
        async with session.lock:
            if session.closed:
                raise ProtocolError(ErrorCode.UNKNOWN_SESSION, f"session {msg.session_id} was closed")
            session.last_active = time.monotonic()
            rolls_back = msg.start_position < session.cached_positions
            try:  # everything is checked before the cache is touched; the opener pays for the step
                n_new = self.table.validate_step(session, msg)
                self.quotas.check_step_positions(n_new)
                self.quotas.check_rollback(session.rollbacks, rolls_back)
                if msg.token_ids is not None:  # a lite client's ids: this first server embeds them
                    hidden = self._embed_step(session, msg, sender)
                    received = token_bytes(msg.token_ids)
                elif hidden is None:
                    hidden = decode_tensor(msg.tensor, payload, self.backend.dtype)
                    received = payload
                else:  # a ring token's embedding: receipts hash it as float32 bytes
                    received = encode_tensor(hidden, "float32")[1]
                reserved = self.quotas.admit_compute(session.owner, n_new)
            except ProtocolError as e:
                await self._reply_error(session.client_stream, e, session.session_id, msg.step_id)
                return
            self.quotas.record_rollback(session.rollbacks, rolls_back)
            if not ring_token and session.upstream is None:
                self._note_ring(session, msg)
            compute_seconds = None
            try:
                output, compute_seconds = await self.batcher.run(
                    self.backend.model(session.start, session.end), hidden[0], session.cache, msg.start_position,
                    priority=self.quotas.priority(session.owner))
            except Exception as e:  # keep the node alive; the session stays consistent (see backend)
                logger.exception("compute failed for session %s", session.session_id)
                await self._reply_error(session.client_stream, ProtocolError(ErrorCode.INTERNAL, f"compute failed: {e}"),
                                        session.session_id, msg.step_id)
                return
            finally:
                self.quotas.settle_compute(session.owner, reserved, compute_seconds, n_new)
            if session.closed:  # closed while its step waited or computed (e.g. the node moved): nothing to send
                return
            output = output.unsqueeze(0)  # [1, T, D]
            session.last_step_id = msg.step_id
            session.history[msg.start_position:msg.start_position + n_new] = output[0]
            self.tokens_processed += n_new
            self.steps_served += 1
            meta, raw = encode_tensor(output, session.wire_dtype)
            # A failover replay stops where the old chain resumes: those servers hold these positions.
            replay_stops_here = msg.replay_end is not None and session.end >= msg.replay_end
            result = StepResult(session_id=session.session_id, step_id=msg.step_id,
                                start_position=msg.start_position, tensor=meta, compute_seconds=compute_seconds)
            if session.next_hop is None or replay_stops_here:
                ring = self._ring_for(session, msg)
                if ring is not None:
                    if session.report_outputs:  # before the token: the client checks the token against it
                        await self._send_quietly(session, encode_frame(result, raw))
                    await self._ring_next(session, ring, msg, output[0, -1], n_new, compute_seconds)
                else:
                    await session.client_stream.send(encode_frame(result, raw))
            else:
                await self._push(session, Step(session_id=session.next_hop.session_id, step_id=msg.step_id,
                                               start_position=msg.start_position, tensor=meta,
                                               replay_end=msg.replay_end, ring=msg.ring), raw)
                if session.report_outputs:
                    await self._send_quietly(session, encode_frame(result, raw))
            await self._send_receipt(session, msg, n_new, received, raw)

    @staticmethod
    async def _send_quietly(session: ServerSession, frame: bytes) -> None:
        """A frame to the session's client; a client gone away closes the session through its stream's end."""
        try:
            await session.client_stream.send(frame)
        except ConnectionError:
            pass

    async def _send_receipt(self, session: ServerSession, msg: Step, n_new: int, received, sent: bytes) -> None:
        """The signed receipt of a computed step, to the session's client (and the step into the work log)."""
        if session.closed:
            return
        frame = self.receipts.issue(
            session_id=session.session_id, requester=session.owner, step_id=msg.step_id,
            start_position=msg.start_position, positions=n_new, span=(session.start, session.end),
            model_id=self.model_id, input_hash=digest(received), input_bytes=len(received), output=sent,
            compute_class=self.backend.compute_class.key)
        try:
            await session.client_stream.send(frame)
        except ConnectionError:
            pass  # the client went away: its stream's end closes the session

    # --- ring decoding (ring.py) ----------------------------------------------------------
    def _note_ring(self, session: ServerSession, msg: Step) -> None:
        """On the chain's first server, a step from the client starts a ring that runs from here
        (RingTokens from its last server are taken for its step ids) or ends the one that ran."""
        ring = msg.ring
        if (ring is not None and msg.replay_end is None and ring.first_hop.peer_id == self.peer_id
                and ring.first_hop.session_id == session.session_id):
            session.ring_source = ring.last_peer_id
            session.ring_steps = range(msg.step_id + 1, msg.step_id + ring.max_tokens)
        else:
            session.ring_source, session.ring_steps = None, range(0)

    @staticmethod
    def _ring_for(session: ServerSession, msg: Step) -> Optional[RingState]:
        """The ring this step (at the end of the chain) belongs to, if any; starts or ends rings."""
        if msg.replay_end is not None:
            return None  # a failover replay: the client restarts its ring afterwards
        if msg.ring is not None:
            session.ring = RingState.start(msg.ring, msg.step_id)
        elif session.ring is not None and not session.ring.covers(msg.step_id):
            session.ring = None  # the client stepped on its own: the ring is over
        ring = session.ring
        return None if ring is None or ring.stopped else ring

    async def _ring_next(self, session: ServerSession, ring: RingState, msg: Step, last_hidden: torch.Tensor,
                         n_new: int, compute_seconds: float) -> None:
        """Sample the next token; send it to the first server (unless the ring ends) and to the client."""
        position = msg.start_position + n_new
        try:
            head = self.backend.head()
            token, finished = await asyncio.get_running_loop().run_in_executor(
                self.executor, ring.next_token, head, last_hidden, position, session.max_length)
        except LookupError as e:
            session.ring = None
            await self._reply_error(session.client_stream, ProtocolError(ErrorCode.UNSUPPORTED, f"no ring decoding "
                                    f"here: {e}"), session.session_id, msg.step_id)
            return
        if session.closed or session.ring is not ring:  # closed or restarted while it sampled: nothing to send
            return
        if finished:
            session.ring = None
        else:
            first = ring.spec.first_hop
            await self._send_ring_token(session, RingToken(session_id=first.session_id, step_id=msg.step_id + 1,
                                                           position=position, token_id=token))
        result = TokenResult(session_id=session.session_id, step_id=msg.step_id, position=position, token_id=token,
                             draws=ring.sampler.draws, finished=finished, compute_seconds=compute_seconds)
        try:
            await session.client_stream.send(encode_frame(result))
        except ConnectionError:
            pass  # the client went away: its stream's end closes the session

    async def _send_ring_token(self, session: ServerSession, token: RingToken) -> None:
        first = session.ring.spec.first_hop
        if first.peer_id == self.peer_id:  # the chain is this node alone (or starts here): no network
            asyncio.create_task(self._ring_token_quietly(token, session))
            return
        try:
            if session.ring_stream is None or session.ring_stream.closed:
                session.ring_stream = await self._open_push(first.peer_id, 0)
                asyncio.create_task(self._relay_downstream_errors(session, session.ring_stream, first.peer_id))
            await session.ring_stream.send(encode_frame(token))
        except ConnectionError as e:
            error = ProtocolError(ErrorCode.DOWNSTREAM, f"could not send ring token {token.step_id} to the first "
                                                        f"server {first.peer_id}: {e}")
            await self._reply_error(session.client_stream, error, session.session_id, token.step_id,
                                    peer_id=first.peer_id)

    def _embed_step(self, session: ServerSession, msg: Step, sender: str) -> torch.Tensor:
        """The embeddings of a step's token ids (Step.token_ids): only the chain's first server takes them,
        from the session's client, and only if it holds the model's embedding (a ring-capable node)."""
        if session.start != 0 or session.upstream is not None or sender != session.owner:
            raise ProtocolError(ErrorCode.FORBIDDEN, "token ids go to the chain's first server, from its client")
        if tuple(msg.tensor.shape) != (1, len(msg.token_ids), self.backend.hidden_size):
            raise ProtocolError(ErrorCode.BAD_SHAPE, f"a step of {len(msg.token_ids)} token ids describes tensor "
                                                     f"{list(msg.tensor.shape)}, not [1, {len(msg.token_ids)}, "
                                                     f"{self.backend.hidden_size}]")
        if msg.token_ids and not all(0 <= t < self.backend.config.vocab_size for t in msg.token_ids):
            raise ProtocolError(ErrorCode.BAD_SHAPE, f"a token id is outside the vocabulary "
                                                     f"({self.backend.config.vocab_size})")
        try:
            head = self.backend.head()
        except LookupError as e:
            raise ProtocolError(ErrorCode.UNSUPPORTED, f"this node cannot embed token ids: {e}") from None
        return head.embed(list(msg.token_ids)).to(self.backend.dtype)

    async def _ring_token_quietly(self, token: RingToken, origin: ServerSession) -> None:
        try:
            await self._ring_token(token, self.peer_id)
        except ProtocolError as e:
            await self._reply_error(origin.client_stream, e, origin.session_id, token.step_id)

    async def _ring_token(self, msg: RingToken, sender: str) -> None:
        """First server: embed the ring's token (from the ring's last server only) and run it as
        the session's next step."""
        if not self.table.get(msg.session_id).may_ring(sender, msg.step_id):
            raise ProtocolError(ErrorCode.FORBIDDEN, f"peer {sender} may not send ring token {msg.step_id} to "
                                                     f"session {msg.session_id}: tokens come only from the last server "
                                                     "of a ring running from here")
        try:
            head = self.backend.head()
        except LookupError as e:
            raise ProtocolError(ErrorCode.UNSUPPORTED, f"no ring decoding here: {e}") from None
        if msg.token_id >= self.backend.config.vocab_size:
            raise ProtocolError(ErrorCode.BAD_SHAPE, f"token id {msg.token_id} is outside the vocabulary "
                                                     f"({self.backend.config.vocab_size})")
        hidden = head.embed([msg.token_id])
        step = Step(session_id=msg.session_id, step_id=msg.step_id, start_position=msg.position,
                    tensor=TensorMeta(dtype="float32", shape=(1, 1, self.backend.hidden_size)))
        await self._step(step, hidden=hidden, ring_token=True)

    def _ring_stop(self, msg: RingStop, sender: str) -> None:
        session = self._controlled(msg.session_id, sender, "stop the ring of")
        if session.ring is not None:
            session.ring.stopped = True

    async def _reroute(self, msg: Reroute, sender: str) -> None:
        """Point the session at a new next server; optionally replay our outputs to it (its opener only:
        the outputs are the session's)."""
        session = self._controlled(msg.session_id, sender, "reroute")
        async with session.lock:
            session.last_active = time.monotonic()
            if msg.replay_positions > session.cached_positions:
                raise ProtocolError(ErrorCode.POSITION, f"cannot replay {msg.replay_positions} positions: the session "
                                                        f"has {session.cached_positions} cached")
            if msg.replay_positions and msg.next_hop is None:
                raise ProtocolError(ErrorCode.MALFORMED, "a replay needs a next hop to replay to")
            chunks = msg.replay_chunks or ((msg.replay_positions,) if msg.replay_positions else ())
            if sum(chunks) != msg.replay_positions or any(c <= 0 for c in chunks):
                raise ProtocolError(ErrorCode.MALFORMED, f"replay_chunks {list(chunks)[:8]}... must be positive and "
                                                         f"sum to replay_positions={msg.replay_positions}")
            if session.push_stream is not None:
                session.push_stream.close()
            session.push_stream, session.next_hop = None, msg.next_hop
            position = 0
            for index, length in enumerate(chunks):
                outputs = session.history[position:position + length].unsqueeze(0)
                meta, raw = encode_tensor(outputs, session.wire_dtype)
                await self._push(session, Step(session_id=msg.next_hop.session_id, step_id=msg.step_id + index,
                                               start_position=position, tensor=meta, replay_end=msg.replay_end), raw)
                position += length

    async def _push(self, session: ServerSession, step: Step, raw: bytes) -> None:
        next_peer = session.next_hop.peer_id
        try:
            if session.push_stream is None or session.push_stream.closed:
                session.push_stream = await self._open_push(next_peer, self.table.span_end)
                asyncio.create_task(self._relay_downstream_errors(session, session.push_stream, next_peer))
            await session.push_stream.send(encode_frame(step, raw))
        except ConnectionError as e:
            error = ProtocolError(ErrorCode.DOWNSTREAM, f"could not push step {step.step_id} to the next server "
                                                        f"{next_peer}: {e}")
            await self._reply_error(session.client_stream, error, session.session_id, step.step_id, peer_id=next_peer)

    async def _open_push(self, peer_id: str, block: int):
        """A push stream to `peer_id`, a server of `block`. A server this node has no address of (one behind
        a relay is not in the transport's own peer routing) is looked up in the DHT first: its verified
        record's addresses; and once more after a failed open, in case they changed."""
        if not self.swarm.knows_addresses(peer_id):
            await self._learn_addresses(peer_id, block)
        try:
            return await self.swarm.open_stream(peer_id, PUSH_HANDLER)
        except ConnectionError:
            if not await self._learn_addresses(peer_id, block):
                raise
            return await self.swarm.open_stream(peer_id, PUSH_HANDLER)

    async def _learn_addresses(self, peer_id: str, block: int) -> bool:
        """Remember the addresses `peer_id`'s record for `block` gives; whether it had a changed set."""
        try:
            found = await asyncio.wait_for(self.swarm.get_records([block_key(self.model_id, block)]), 5.0)
        except (Exception, asyncio.TimeoutError) as e:
            logger.debug("looking up %s's record failed: %s", peer_id, e or type(e).__name__)
            return False
        for record in parse_records(found, self.model_id, now=dht_time()):
            if record.peer_id == peer_id and record.addresses:
                return self.swarm.remember_addresses(peer_id, record.addresses)
        return False

    async def _relay_downstream_errors(self, session: ServerSession, push_stream, peer_id: str) -> None:
        """Errors the server we push to sends back on the push stream are relayed to our client."""
        try:
            while True:
                msg, _ = decode_frame(await push_stream.recv())
                if isinstance(msg, ErrorReply) and not session.closed:
                    await session.client_stream.send(encode_frame(ErrorReply(
                        code=ErrorCode.DOWNSTREAM.value, message=f"next server failed: {msg.message}",
                        session_id=session.session_id, step_id=msg.step_id, peer_id=peer_id)))
        except (ConnectionError, ProtocolError):
            pass

    def close_session(self, session_id: str) -> None:
        session = self.table.remove(session_id)
        if session is not None:
            self.quotas.release_session(session.owner, session.reserved_tokens)
            for stream in (session.push_stream, session.ring_stream):
                if stream is not None:
                    stream.close()
            session.cache = session.history = session.ring = None  # drop the tensors now

    def evict_idle(self, timeout: float) -> list[str]:
        evicted = self.table.idle_sessions(timeout)
        for session_id in evicted:
            logger.info("evicting idle session %s", session_id)
            session = self.table.sessions.get(session_id)
            self.close_session(session_id)
            if session is not None and session.client_stream is not None:
                session.client_stream.close()
        self.quotas.prune()
        return evicted

    async def _reply_error(self, stream, error: ProtocolError, session_id: Optional[str], step_id: Optional[int],
                           peer_id: Optional[str] = None) -> None:
        if stream is None:
            return
        quota = QuotaInfo(limit=error.limit, value=error.value, retry_after=error.retry_after) \
            if isinstance(error, QuotaError) else None
        reply = ErrorReply(code=error.code.value, message=error.message, session_id=session_id, step_id=step_id,
                           peer_id=peer_id or self.peer_id, quota=quota)
        try:
            await stream.send(encode_frame(reply))
        except ConnectionError:
            pass
