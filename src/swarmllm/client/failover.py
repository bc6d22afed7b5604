"""Failover and replay: replace the servers that failed a step and rebuild their KV caches.

Any server may fail a step (error reply, lost stream, or silence past the step timeout). The
`Failover` of a session then finds which servers failed (the one named, or by pinging all of
them after a timeout), asks the planner for a replacement of exactly their blocks, opens
sessions there, and rebuilds their KV caches by replay: the server before the gap re-sends
its stored outputs for every committed position (`Reroute`), or the client sends its stored
inputs if the gap starts at block 0. The failed step is then sent again with a new step id;
upstream servers roll their caches back to its start position and recompute it
deterministically. The caller sees no error and the same outputs: greedy text is identical
to an unfaulted run and the sampler's RNG is untouched.

Servers take Steps only from the upstream peer named when the session was opened, so the
replacements are opened naming the server before the gap, and the server after the gap is
told its new upstream (`SetUpstream`) before anything is pushed to it. A server that refuses
with `over_quota` is alive but will not serve us now: it is replaced like a failed one and
marked failed, so the planner routes around it for a while.

It works through the session's public methods (open_hops, close_hop, send_and_wait,
reserve_step_ids, record of inputs and chunks); every phase is traced on the `FailoverEvent`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Awaitable, Callable, Optional

from swarmllm.client.chain import NOT_RETRYABLE, Hop, RemoteStepError
from swarmllm.client.ping import ping_peer
from swarmllm.client.routing import ChainLink
from swarmllm.protocol import ErrorCode, Reroute, SwarmError, encode_frame

if TYPE_CHECKING:
    from swarmllm.client.session import InferenceSession

Replanner = Callable[[int, int, set], Awaitable[list[ChainLink]]]


@dataclass
class FailoverEvent:
    peer_ids: list[str]          # servers replaced
    code: str                    # why the step first failed (later faults in the same recovery are in `trace`)
    blocks: tuple[int, int]      # the span replaced
    position: int                # committed positions replayed
    replacement: list[str]       # servers that took over
    seconds: float = 0.0         # from the failure to the retried step's success
    trace: list = field(default_factory=list)  # (seconds since the failure, what happened): where the time went


class Failover:
    """Recovery of one session's chain (see the module docstring)."""

    def __init__(self, session: "InferenceSession", replanner: Optional[Replanner],
                 on_peer_failure: Callable[[str], None], max_failovers: int = 8,
                 on_stall: Callable[[str], None] = lambda peer: None,
                 on_liar: Callable[[RemoteStepError], None] = lambda error: None):
        self.session, self.replanner = session, replanner
        self.on_peer_failure, self.max_failovers = on_peer_failure, max_failovers
        self.on_stall, self.on_liar = on_stall, on_liar  # reputation's: a stalled step, a server caught lying
        self._blamers: set[str] = set()  # servers whose ErrorReply blamed another server once already
        self.events: list[FailoverEvent] = []
        self._trace: list[tuple[float, str]] = []  # of the failover in progress
        self._failed_at, self._first_error = 0.0, ""

    async def recover(self, error: RemoteStepError, attempt: int, failed_at: Optional[float]) -> float:
        """Fail over after `error` (attempt-th retry of one step; failed_at: when its first try failed,
        None if it had not), or re-raise when that cannot help. Returns when the step's first try failed."""
        if error.code in NOT_RETRYABLE or self.replanner is None or attempt >= self.max_failovers:
            raise error
        if failed_at is None:
            failed_at = self._failed_at = time.perf_counter()
            self._trace, self._first_error = [], error.code.value
        self._note(f"step failed: {error.code.value} from {error.peer_id[-8:]}")
        await self._recover_until_done(error)
        return failed_at

    def finished(self, failed_at: float) -> None:
        """The retried step succeeded: close the books on the failover."""
        if self.events:
            self._note("retried step done")
            self.events[-1].seconds = time.perf_counter() - failed_at
            self.events[-1].trace = self._trace

    def _note(self, what: str) -> None:
        """Record a failover phase, timed from the failure (kept on the FailoverEvent)."""
        self._trace.append((round(time.perf_counter() - self._failed_at, 3), what))

    async def _alive(self, hop: Hop, timeout: float = 1.0) -> bool:
        return await ping_peer(self.session.swarm, hop.peer_id, timeout) is not None

    async def _failed_hops(self, error: RemoteStepError) -> tuple[list[int], set[str]]:
        """(hops to replace, peers that are down). Every hop is pinged: a server that answers is
        not excluded from the replacement even if its session here broke (a dropped stream),
        so the only live replica of a span is never ruled out by mistake."""
        hops = self.session.hops
        alive = await asyncio.gather(*(self._alive(hop) for hop in hops))
        down = {i for i, ok in enumerate(alive) if not ok}
        suspects = self._suspects(error, {hop.peer_id for hop in hops})
        named = {i for i, h in enumerate(hops) if h.peer_id in suspects}
        return sorted(down | named), {hops[i].peer_id for i in down}

    def _suspects(self, error: RemoteStepError, chain: set[str]) -> tuple[str, ...]:
        """Whom an error names, as far as the evidence goes. A plain timeout names the last hop only
        because that is where the result should have come from: nobody. A stall pinned by the receipts
        names the staller (on_stall: a second one bans it). An ErrorReply blaming another server is a
        claim: believed once per reporter; a reporter that blames again is the suspect itself."""
        if error.code == ErrorCode.TIMEOUT:
            if error.stalled:
                self.on_stall(error.peer_id)
                return error.suspects
            return ()
        if error.reporter != error.peer_id and error.reporter in chain:
            if error.reporter in self._blamers:
                self.on_liar(RemoteStepError(error.reporter, ErrorCode.MISMATCH, f"blamed a second server "
                                                                                 f"({error.peer_id}) for its failure"))
                return (error.reporter,)
            self._blamers.add(error.reporter)
        return error.suspects

    async def _recover_until_done(self, error: RemoteStepError, wait_for_capacity: float = 30.0) -> None:
        """Recover; if recovery itself fails (another server dies meanwhile), recover again."""
        deadline = time.monotonic() + wait_for_capacity
        failures = 0
        while True:
            try:
                await self._recover(error)
                return
            except RemoteStepError as again:
                self._note(f"recovery failed: {again.code.value} from {again.peer_id[-8:]}")
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
        session = self.session
        failed, down = await self._failed_hops(error)
        self._note(f"pinged {len(session.hops)} hops: replace {failed}, down {[p[-8:] for p in down]}")
        for peer in down:
            self.on_peer_failure(peer)
        if error.code == ErrorCode.OVER_QUOTA and error.peer_id not in down:
            self.on_peer_failure(error.peer_id)  # alive but refusing us: route around it while the ban lasts
        if error.code in (ErrorCode.BAD_RECEIPT, ErrorCode.MISMATCH):  # alive but lying: route around the suspects
            for peer in set(error.suspects) - down:
                self.on_peer_failure(peer)
        cold = [i for i, hop in enumerate(session.hops) if not hop.warm]  # replacements whose replay did not finish
        if error.code == ErrorCode.TIMEOUT and not down:
            session.timeouts.relax()  # slow, not dead: be more patient
        if not failed and not cold:  # everyone answers: a transient fault; retry as is
            await asyncio.sleep(0.1)
            return
        first, last = min(failed + cold), max(failed + cold)
        start, end = session.hops[first].link.start, session.hops[last].link.end
        old = session.hops[first:last + 1]
        links = await self.replanner(start, end, down)
        new = [Hop(link, warm=False) for link in links]
        self._note(f"planned [{start}, {end}) on {[link.peer_id[-8:] for link in links]}")
        following = session.hops[last + 1] if last + 1 < len(session.hops) else None
        after = following.next_hop() if following is not None else None
        before = session.hops[first - 1].peer_id if first > 0 else None
        try:
            await session.open_hops(new, after, before)
        except RemoteStepError as e:  # a replacement that is gone too (its record has not expired yet)
            if e.peer_id in {hop.peer_id for hop in new}:
                self.on_peer_failure(e.peer_id)
            raise
        if following is not None:  # before the replay or the retried step can reach it
            try:
                await session.set_upstream(following, new[-1].peer_id)
            except RemoteStepError:
                for hop in new:
                    await session.close_hop(hop)
                raise
        session.hops[first:last + 1] = new
        for hop in old:
            await session.close_hop(hop)
        if session.verifier is not None:  # their outputs and witnesses go with them
            await session.verifier.hops_replaced(old)
        self.events.append(FailoverEvent([h.peer_id for h in old], self._first_error, (start, end), session.position,
                                         [h.peer_id for h in new]))
        self._note("opened")
        await self._replay(first, new, end)
        self._note(f"replayed {session.position} positions")
        for hop in new:
            hop.warm = True

    async def _replay(self, first: int, new: list[Hop], replay_end: int) -> None:
        """Rebuild the new hops' caches for the committed positions, in the original chunks. Every
        replayed chunk is a step the new hops compute and sign receipts for."""
        session = self.session
        p, chunks = session.position, tuple(session.chunks)
        first_id = session.reserve_step_ids(len(chunks))
        last_id = first_id + max(0, len(chunks) - 1)
        if first > 0:
            before = session.hops[first - 1]
            frame = encode_frame(Reroute(session_id=before.session_id, next_hop=new[0].next_hop(), replay_positions=p,
                                         replay_chunks=chunks, step_id=first_id, replay_end=replay_end))
            if p == 0:
                try:
                    await before.stream.send(frame)
                except ConnectionError as e:
                    raise RemoteStepError(before.peer_id, ErrorCode.CONNECTION_LOST, str(e)) from None
                return
            sender, frames, hashes = before, [frame], [None] * len(chunks)  # `before` re-sends its stored outputs
        elif p > 0:
            frames, hashes, position = [], [], 0
            for index, length in enumerate(chunks):
                frame, sent = session.step_frame(session.inputs[position:position + length].unsqueeze(0), position,
                                                 first_id + index, session_id=new[0].session_id,
                                                 replay_end=replay_end)
                frames.append(frame)
                hashes.append(sent)
                position += length
            sender = new[0]
        else:
            return
        futures, position = [], 0
        for index, length in enumerate(chunks):
            futures.append(session.expect(first_id + index, position, length, hashes[index], hops=new))
            position += length
        try:
            for frame in frames[:-1]:
                await sender.stream.send(frame)
            await session.send_and_wait(sender, frames[-1], last_id, session.timeouts.replay(p))
            # The earlier chunks' results came first; their receipts are in by now or very soon.
            for index, future in enumerate(futures[:-1]):
                try:
                    await asyncio.wait_for(future, 1.0)
                except asyncio.TimeoutError:
                    raise session.timeout_error(first_id + index, 1.0) from None
        finally:
            for index in range(len(chunks)):
                session.forget(first_id + index)
