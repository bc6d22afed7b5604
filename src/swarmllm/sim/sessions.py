"""Simulated clients and their inference sessions: plan, open, prefill, decode, verify, fail over.

A client (a gateway, or one user's machine) keeps what a real SwarmClient keeps: measured speeds
(client.estimates.SpeedEstimates), the RTTs it pinged, sessions it opened per server (for
client.load.server_loads), back-offs of peers that failed (2 s doubling to 60 s, as
SwarmClient.mark_failed) and reputation records (client.reputation). A session plans its chain with
client.routing.plan_chain, pinging unknown servers first (a dead record's server does not answer
within the 3 s ping timeout and is backed off), then runs steps:

- plain: client -> hop 1 -> ... -> hop k -> client; the client runs the LM head and sampling, then
  sends the next token. Speculative decoding (plain only) sends a draft of DraftLength.k tokens
  with the last one; each draft token is accepted with the scenario's acceptance rate until the
  first rejection (or, `speculative_bursty`, the whole draft with that probability: n-gram drafts).
- ring: the last server runs the head, sends the token to the first server and streams it to the
  client, which stays out of the loop.

A step that errors (a server left: its streams close) or passes StepTimeouts' bound (a server
crashed: silence) triggers failover: the servers that do not answer are replaced with plan_chain
over exactly their span (failed peers excluded), the replacements recompute the committed
positions (the replay), and the step is sent again. Verification (`sample`) re-computes each
hop's step on a witness serving the same blocks with client.reputation's sample_probability; a
liar caught this way is banned and replaced, its positions recomputed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Optional

from swarmllm.client.estimates import SpeedEstimates
from swarmllm.client.load import server_loads
from swarmllm.client.reputation import banned, is_banned, mismatched, new_record, routing_penalty, sample_probability, \
    verified
from swarmllm.client.routing import ChainLink, MissingBlocksError, plan_chain
from swarmllm.client.timeouts import StepTimeouts
from swarmllm.engine.speculative import DraftLength
from swarmllm.sim.hardware import Hardware
from swarmllm.sim.network import Place
from swarmllm.sim.swarm import MODEL_ID, Host, Job, SimNode, SimSwarm

PING_TIMEOUT = 3.0       # s, SwarmClient._plan's ping of servers it has not measured
ROUTE_RETRY = 2.0        # s between attempts while some blocks have no server
ROUTE_DEADLINE = 60.0    # s a session waits for a route before it fails


@dataclass
class SimClient:
    name: str
    place: Place
    host: Host
    hardware: Hardware                      # where the client's own embedding and LM head run
    step_overhead: float = 0.0              # s per step of the chain's own software path (event loops, framing,
                                            # daemons: fitted by benchmarks/sim_calibration.py), plain and ring
    estimates: SpeedEstimates = field(default_factory=SpeedEstimates)
    rtts: dict[str, float] = field(default_factory=dict)
    opened: dict[str, int] = field(default_factory=dict)
    backoff: dict[str, tuple[float, int]] = field(default_factory=dict)
    reputation: dict = field(default_factory=dict)

    def excluded(self, now: float) -> set[str]:
        return ({p for p, (until, _) in self.backoff.items() if until > now}
                | {p for p, r in self.reputation.items() if is_banned(r, now)})

    def mark_failed(self, peer: str, now: float) -> None:
        _, failures = self.backoff.get(peer, (0.0, 0))
        self.backoff[peer] = (now + min(60.0, 2.0 * 2 ** failures), failures + 1)
        self.rtts.pop(peer, None)
        self.estimates.forget(peer)


@dataclass
class Outcome:
    """What one session saw."""

    created: float
    prompt: int
    new_tokens: int
    opened: Optional[float] = None         # the chain's streams are open: the prompt's step goes out
    first_token: Optional[float] = None
    finished: Optional[float] = None
    token_times: list[float] = field(default_factory=list)
    failovers: int = 0
    failover_seconds: list[float] = field(default_factory=list)
    checks: int = 0
    caught: int = 0
    wrong_tokens: int = 0                  # tokens produced while a liar's output was in the chain, unchecked
    failed: Optional[str] = None
    hops: int = 0


class SimSession:
    def __init__(self, sim: "Sessions", client: SimClient, outcome: Outcome, seed: int):
        self.sim, self.client, self.out, self.seed = sim, client, outcome, seed
        self.chain: list[ChainLink] = []
        self.epochs: list[int] = []
        self.position = 0                  # committed positions
        self.chunks: list[int] = []        # ... as the steps that committed them (a replay resends them so)
        self.step_id = 0
        self.sent_at = 0.0
        self.step_positions = 0
        self.timeouts = StepTimeouts()
        self.draft = DraftLength() if sim.acceptance is not None else None
        self.witnessed: dict[tuple[str, int, int], int] = {}   # witness span -> the position it synced to
        self.failing_since: Optional[float] = None
        self.produced = 0                  # ring: tokens its last server sampled
        self.done = False
        self.key = 0

    # --- routing -------------------------------------------------------------------------------
    def start(self) -> None:
        self._plan(0, self.sim.shape.n_blocks, set(), self._opened_whole)

    def _plan(self, start: int, end: int, exclude: set[str], then, since: Optional[float] = None) -> None:
        loop, swarm, client = self.sim.loop, self.sim.swarm, self.client
        since = loop.now if since is None else since
        records = swarm.visible_records()
        wait = 0.0
        backed_off = client.excluded(loop.now)
        unknown = [r.peer_id for r in records
                   if r.peer_id not in client.rtts and r.peer_id not in exclude and r.peer_id not in backed_off]
        for peer in unknown:          # SwarmClient._plan pings servers it has not measured
            node = swarm.nodes.get(peer)
            if node is None or node.state == "gone":
                client.mark_failed(peer, loop.now)
                wait = max(wait, PING_TIMEOUT)
            else:
                client.rtts[peer] = self.sim.rtt(client, node)
                wait = max(wait, client.rtts[peer])
        now = loop.now
        skip = exclude | client.excluded(now)
        try:
            chain = plan_chain(MODEL_ID, swarm.shape.n_blocks, records, client.rtts,
                               block_seconds=client.estimates.block_seconds(records), max_length=1, exclude=skip,
                               start=start, end=end, seed=self.seed, loads=server_loads(records, client.opened),
                               penalties={p: routing_penalty(client.reputation.get(p), now) for p in
                                          client.reputation})
        except MissingBlocksError:
            if now - since > ROUTE_DEADLINE:
                self._finish(failed="no route")
                return
            loop.after(wait + ROUTE_RETRY, self._plan, start, end, exclude, then, since)
            return
        # Opening: a stream per hop (dial + OpenSession reply), in parallel.
        opening = max(2 * client.rtts.get(link.peer_id, 0.0) for link in chain)
        loop.after(wait + opening, then, chain)

    def _hold(self, chain: list[ChainLink]) -> list[int]:
        for link in chain:
            self.client.opened[link.peer_id] = self.client.opened.get(link.peer_id, 0) + 1
            self.sim.swarm.nodes[link.peer_id].sessions += 1
        return [self.sim.swarm.nodes[link.peer_id].epoch for link in chain]

    def _release(self, chain: list[ChainLink]) -> None:
        for link in chain:
            self.client.opened[link.peer_id] = max(0, self.client.opened.get(link.peer_id, 0) - 1)
            node = self.sim.swarm.nodes[link.peer_id]
            node.sessions = max(0, node.sessions - 1)

    def _opened_whole(self, chain: list[ChainLink]) -> None:
        self.chain, self.epochs = chain, self._hold(chain)
        self.out.hops = len(chain)
        self.out.opened = self.sim.loop.now
        self._send(self.out.prompt)

    # --- steps ---------------------------------------------------------------------------------
    def _send(self, positions: int) -> None:
        if self.done:
            return
        self.step_id += 1
        self.sent_at, self.step_positions = self.sim.loop.now, positions
        step = self.step_id
        first = self._node(0)
        delay = self.sim.message(self.client.place, first.place, positions)
        self.sim.loop.after(delay, self._arrive, step, 0)
        self.sim.loop.after(self.timeouts.step(positions), self._timeout, step)

    def _node(self, index: int) -> SimNode:
        return self.sim.swarm.nodes[self.chain[index].peer_id]

    def _alive(self, index: int) -> bool:
        node, link = self._node(index), self.chain[index]
        return node.epoch == self.epochs[index] and node.covers(link.start, link.end)

    def _arrive(self, step: int, index: int) -> None:
        if step != self.step_id or self.done:
            return
        node = self._node(index)
        if not self._alive(index):
            if not node.crashed:    # a closed stream: the client hears of it at once
                self.sim.loop.after(self.sim.message(node.place, self.client.place, 0, True), self._failed, step,
                                    [index])
            return                  # a crash: silence, until the step's timeout
        job = Job(self.step_positions, self.position, lambda t: self._computed(step, index))
        self.sim.swarm.submit(node, job)

    def _computed(self, step: int, index: int) -> None:
        if step != self.step_id or self.done:
            return
        node = self._node(index)
        if index + 1 < len(self.chain):
            delay = self.sim.message(node.place, self._node(index + 1).place, self.step_positions)
            self.sim.loop.after(delay, self._arrive, step, index + 1)
        elif self.sim.ring and self.out.first_token is not None:
            # The ring's last server samples, streams the token to the client and feeds the first server.
            # (The prompt's step returns to the client, which samples the first token and starts the ring.)
            threads = node.hardware.threads
            head = node.host.start(threads, node.hardware.head_seconds(self.sim.shape, 1))
            self.sim.loop.after(head, self._ring_next, step, node, threads)
        else:
            delay = self.sim.message(node.place, self.client.place, self.step_positions, True)
            self.sim.loop.after(delay, self._result, step)

    def _ring_next(self, step: int, last: SimNode, threads: int) -> None:
        last.host.done(threads)
        if step != self.step_id or self.done:
            return
        self.sim.loop.after(self.sim.message(last.place, self.client.place, 1, True), self._emit, 1)
        self._observe()
        self._check_hops(lambda: None)   # the ring does not wait for its checks (convict_ring_token later)
        self.position += self.step_positions
        self.chunks.append(self.step_positions)
        self.produced += 1
        if self.produced >= self.out.new_tokens:
            return                  # the last token is on its way to the client
        self.step_id += 1
        self.sent_at, self.step_positions = self.sim.loop.now, 1
        step = self.step_id
        self.sim.loop.after(self.client.step_overhead + self.sim.message(last.place, self._node(0).place, 1),
                            self._arrive, step, 0)
        self.sim.loop.after(self.timeouts.step(1), self._timeout, step)

    def _result(self, step: int) -> None:
        """The last hop's outputs reached the client: checks, head, sampling, the next step."""
        if step != self.step_id or self.done:
            return
        self._observe()
        self._check_hops(lambda: self._head(step))

    def _head(self, step: int) -> None:
        if step != self.step_id or self.done:
            return
        client = self.client
        rows = self.step_positions if self.draft is not None and self.out.first_token is not None else 1
        seconds = client.host.start(client.hardware.threads, client.hardware.head_seconds(self.sim.shape, rows))
        self.sim.loop.after(seconds, self._head_done, step)

    def _head_done(self, step: int) -> None:
        self.client.host.done(self.client.hardware.threads)
        self.sim.loop.after(self.client.step_overhead, self._sampled, step)   # latency, on no modelled core

    def _sampled(self, step: int) -> None:
        if step != self.step_id or self.done:
            return
        self.position += self.step_positions
        self.chunks.append(self.step_positions)
        tokens, k = 1, 0
        if self.draft is not None and self.out.first_token is not None and self.step_positions > 1:
            drafted = self.step_positions - 1
            accepted = 0
            if self.sim.bursty:      # an n-gram draft copies a span: all of it fits, or it fails early
                accepted = drafted if self.sim.rng.random() < self.sim.acceptance else 0
            else:                    # each draft token with the acceptance rate, until the first miss
                while accepted < drafted and self.sim.rng.random() < self.sim.acceptance:
                    accepted += 1
            self.draft.update(drafted, accepted)
            tokens = accepted + 1
            self.position -= drafted - accepted      # rejected draft positions are rolled back
            self.chunks[-1] -= drafted - accepted
        self._emit(tokens)
        if self.done:
            return
        if self.sim.ring:
            self.produced = len(self.out.token_times)   # the ring samples the rest
        remaining = self.out.new_tokens - len(self.out.token_times)
        if self.draft is not None and self.sim.rng.random() < self.sim.draft_share:
            k = max(0, min(self.draft.k, remaining - 1))
        self._send(1 + k)

    def _emit(self, tokens: int) -> None:
        if self.done:
            return
        now = self.sim.loop.now
        for _ in range(tokens):
            if len(self.out.token_times) >= self.out.new_tokens:
                break
            if self.out.first_token is None:
                self.out.first_token = now
            self.out.token_times.append(now)
            for callback in self.sim.on_token:
                callback(self)
            if any(self._node(i).liar and not self.sim.verify for i in range(len(self.chain))):
                self.out.wrong_tokens += 1
        if len(self.out.token_times) >= self.out.new_tokens:
            self._finish()

    def _observe(self) -> None:
        seconds = self.sim.loop.now - self.sent_at
        self.timeouts.observe(seconds, self.step_positions)
        if self.step_positions == 1 and self.failing_since is None and not self.sim.ring:  # a ring's steps go untimed
            self.client.estimates.observe([(link.peer_id, link.end - link.start) for link in self.chain], seconds,
                                          self.client.rtts, self.sim.swarm.priors())
        if self.failing_since is not None:
            self.out.failover_seconds.append(self.sim.loop.now - self.failing_since)
            self.failing_since = None

    # --- verification --------------------------------------------------------------------------
    def _check_hops(self, then) -> None:
        """Verifier.check_step: each hop is re-checked with its sample probability by a witness that
        serves the same blocks, catching up every position since it last synced; the session waits for
        the checks (plain decoding awaits check_step), then `then()` -- unless a liar was caught."""
        if not self.sim.verify:
            then()
            return
        now, client, end = self.sim.loop.now, self.client, self.position + self.step_positions
        jobs = []
        for index, link in enumerate(self.chain):
            if self.sim.rng.random() >= sample_probability(client.reputation.get(link.peer_id), now):
                continue
            witnesses = [n for n in self.sim.swarm.serving(link.start) if n.peer_id != link.peer_id
                         and n.covers(link.start, link.end) and not n.liar]
            if not witnesses:
                continue            # unverifiable span: no independent server covers it
            # The client opens its witness where a chain for that span would go: the quickest server there.
            witness = min(witnesses, key=lambda n: (n.hardware.step_seconds(self.sim.shape, 1, [1], [0]) *
                                                    (1 + len(n.queue)), n.peer_id))
            key = (witness.peer_id, link.start, link.end)
            jobs.append((index, link.peer_id, witness, max(1, end - self.witnessed.get(key, 0))))
            self.witnessed[key] = end
        if not jobs:
            then()
            return
        self.out.checks += len(jobs)
        pending, step = [len(jobs)], self.step_id

        def checked() -> None:
            pending[0] -= 1
            if pending[0] == 0 and step == self.step_id and not self.done:
                caught = [(i, p) for i, p, _, _ in jobs if self.sim.swarm.nodes[p].liar]
                for i, p, _, _ in jobs:
                    self._judged(p)
                if caught:
                    self._failed(step, [i for i, _ in caught], rewind=True)
                else:
                    then()
        for _, _, witness, positions in jobs:
            if not self.sim.swarm.submit(witness, Job(positions, end - positions, lambda t: checked(), kind="witness")):
                checked()

    def _judged(self, peer: str) -> None:
        now, client = self.sim.loop.now, self.client
        record = client.reputation.get(peer) or new_record(peer, now)
        if not self.sim.swarm.nodes[peer].liar:
            client.reputation[peer] = verified(record, now)
            return
        client.reputation[peer] = banned(mismatched(record, now), now)
        self.out.caught += 1

    # --- failover ------------------------------------------------------------------------------
    def _timeout(self, step: int) -> None:
        if step != self.step_id or self.done:
            return
        dead = [i for i in range(len(self.chain)) if not self._alive(i)]
        ping = max(self.client.rtts.get(link.peer_id, 0.0) for link in self.chain)
        if not dead:                # everyone answers a ping: slowness, not death
            self.timeouts.relax()
            self.sim.loop.after(ping + self.timeouts.step(self.step_positions), self._timeout, step)
            return
        self.sim.loop.after(max(ping, PING_TIMEOUT if any(self._node(i).crashed for i in dead) else ping),
                            self._failed, step, dead)

    def _failed(self, step: int, indices: list[int], rewind: bool = False) -> None:
        if step != self.step_id or self.done:
            return
        self.step_id += 1            # anything still in flight for the old step is dropped
        now = self.sim.loop.now
        if self.failing_since is None:
            self.failing_since = self.sent_at
        self.out.failovers += 1
        if self.out.failovers > self.sim.max_failovers:
            self._finish(failed="too many failovers")
            return
        failed = {self.chain[i].peer_id for i in indices}
        for peer in failed:
            if not rewind:
                self.client.mark_failed(peer, now)
        lo, hi = min(indices), max(indices)
        start, end = self.chain[lo].start, self.chain[hi].end
        old = self.chain[lo:hi + 1]
        self._plan(start, end, failed, lambda links: self._replaced(lo, hi, old, links))

    def _replaced(self, lo: int, hi: int, old: list[ChainLink], links: list[ChainLink]) -> None:
        if self.done:
            return
        self._release(old)
        epochs = self._hold(links)
        self.chain = self.chain[:lo] + links + self.chain[hi + 1:]
        self.epochs = self.epochs[:lo] + epochs + self.epochs[hi + 1:]
        self.out.hops = max(self.out.hops, len(self.chain))
        self._replay(lo, lo + len(links), self.step_id)

    def _replay(self, index: int, stop: int, step: int, chunk: int = 0) -> None:
        """The replacements recompute the committed positions in their original chunks (the prompt, then
        each step), one chunk at a time through the replaced hops in chain order; then the step is sent again."""
        if step != self.step_id or self.done:
            return
        if chunk >= len(self.chunks):
            self._send(self.step_positions)   # the failed step again, under a new step id
            return
        positions = self.chunks[chunk]
        context = sum(self.chunks[:chunk])

        def through(hop: int) -> None:
            if step != self.step_id or self.done:
                return
            if hop >= stop:
                self._replay(index, stop, step, chunk + 1)
                return
            if not self._alive(hop):
                self._failed(step, [hop])
                return
            node = self._node(hop)
            after = self._node(hop + 1).place if hop + 1 < len(self.chain) else self.client.place
            self.sim.swarm.submit(node, Job(positions, context, lambda t: self.sim.loop.after(
                self.sim.message(node.place, after, positions), through, hop + 1), kind="replay"))
        through(index)

    def _finish(self, failed: Optional[str] = None) -> None:
        if self.done:
            return
        self.done = True
        self.out.failed = failed
        self.out.finished = self.sim.loop.now
        self._release(self.chain)
        self.sim.session_ended(self)

    # --- departures ----------------------------------------------------------------------------
    def node_left(self, node: SimNode, crashed: bool) -> None:
        """A server of this session left or moved: a step in flight there errors at once unless it crashed."""
        if self.done or crashed:
            return
        for index, link in enumerate(self.chain):
            if link.peer_id == node.peer_id:
                self.sim.loop.after(self.sim.message(node.place, self.client.place, 0, True), self._failed,
                                    self.step_id, [index])
                return


class Sessions:
    """Everything sessions share: the loop, the swarm, the network and the decoding settings."""

    def __init__(self, loop, swarm: SimSwarm, network, rng: random.Random, *, ring: bool = False,
                 acceptance: Optional[float] = None, verify: bool = False, wire: str = "bfloat16",
                 max_failovers: int = 8):
        self.loop, self.swarm, self.network, self.rng = loop, swarm, network, rng
        self.shape = swarm.shape
        self.ring, self.acceptance, self.verify, self.wire = ring, acceptance, verify, wire
        self.max_failovers = max_failovers
        self.bursty = False                # speculative acceptance all or nothing per round (n-gram drafts)
        self.draft_share = 1.0             # the share of steps that carry a draft (an n-gram drafter has none
        self.on_token = []                 # ... where the text does not repeat itself)
        self.active: dict[int, SimSession] = {}
        self.outcomes: list[Outcome] = []
        self.on_end = []
        self._next = 0
        swarm.on_departure.append(self._departure)

    def rtt(self, client: SimClient, node: SimNode) -> float:
        return self.network.rtt(client.place, node.place)

    def message(self, src: Place, dst: Place, positions: int, to_client: bool = False) -> float:
        return self.network.message(src, dst, self.shape.frame_bytes(positions, self.wire) if positions else 64,
                                    to_client)

    def open(self, client: SimClient, prompt: int, new_tokens: int) -> SimSession:
        self._next += 1
        outcome = Outcome(self.loop.now, prompt, new_tokens)
        self.outcomes.append(outcome)
        session = SimSession(self, client, outcome, seed=self.rng.getrandbits(32))
        self.active[self._next] = session
        session.key = self._next
        session.start()
        return session

    def session_ended(self, session: SimSession) -> None:
        self.active.pop(session.key, None)
        for callback in self.on_end:
            callback(session)

    def _departure(self, node: SimNode, crashed: bool) -> None:
        for session in list(self.active.values()):
            session.node_left(node, crashed)
