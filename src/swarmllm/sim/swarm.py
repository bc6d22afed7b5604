"""The simulated nodes: join, choose blocks, announce, compute batches, leave or crash, move.

Each node decides with the real node's pure functions (package docstring): its span length with
partitioner.node_span_length, its window with block_selection.choose_span over the records it can
read (planning_view applied), and every `rebalance_period` (x U(1, 1.5), as server/node.py) whether
to move with plan_move, claiming the move first and yielding to a lower peer id that contests it.
Records are real `ServerRecord`s, announced every `announce_period` and visible until they expire
(`record_ttl` after the announcement): a crashed node's record outlives it, as in the DHT.

Compute: a node serves the steps queued for it one batch at a time, as server/batching.py does: with
batching on, what is queued in order up to `max_batch` steps and 1,024 positions, after waiting up to
5 ms for the steps of the other sessions open there; for the seconds its hardware class gives
(hardware.py). Nodes that share a host share its cores: a batch started
while other work runs there takes max(1, busy threads / cores) times longer.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Optional

from swarmllm.client.estimates import capped_priors
from swarmllm.protocol import ServerRecord, ServerState
from swarmllm.server.block_selection import choose_span, contested_by, plan_move, planning_view
from swarmllm.server.partitioner import node_span_length
from swarmllm.sim.events import Loop
from swarmllm.sim.hardware import Hardware, Shape
from swarmllm.sim.network import Place

MODEL_ID = "sim-model"


@dataclass
class Host:
    """A machine: its cores are shared by the nodes (and client) on it."""

    cores: float
    busy: float = 0.0

    def start(self, threads: float, seconds: float) -> float:
        """Seconds a piece of work of `seconds` alone takes when started now; call `done(threads)` after."""
        self.busy += threads
        return seconds * max(1.0, self.busy / self.cores)

    def done(self, threads: float) -> None:
        self.busy = max(0.0, self.busy - threads)


@dataclass
class Job:
    """A step (or a witness re-check, or a replay) waiting for or being computed by a node."""

    positions: int
    context: int
    on_done: Callable[[float], None]     # called with the time the node finished
    kind: str = "step"


@dataclass
class SimNode:
    peer_id: str
    hardware: Hardware
    place: Place
    host: Host
    start: int = 0
    end: int = 0
    state: str = "loading"               # loading, online, gone
    auto: bool = True                    # chose its blocks itself (and so rebalances)
    liar: bool = False                   # returns wrong outputs (verification's prey)
    price: float = 0.0
    joined_at: float = 0.0
    queue: deque = field(default_factory=deque)
    busy: bool = False
    waiting: Optional[object] = None     # set while the batcher waits for company (max_wait)
    sessions: int = 0
    moving_to: Optional[tuple[int, int]] = None
    epoch: int = 0                       # bumped when the node leaves or moves: in-flight work is lost
    crashed: bool = False                # vanished: its streams went silent (its record stays until it expires)
    computed_positions: int = 0
    busy_seconds: float = 0.0

    @property
    def online(self) -> bool:
        return self.state == "online"

    def covers(self, start: int, end: int) -> bool:
        return self.online and self.start <= start and end <= self.end


class SimSwarm:
    """The nodes of one model, their records, and the coverage they give over time."""

    def __init__(self, loop: Loop, shape: Shape, rng: random.Random, *, announce_period: float = 5.0,
                 record_ttl: float = 15.0, rebalance_period: float = 30.0, batching: bool = True,
                 max_batch: int = 16, disk_gbps: float = 1.0):
        self.loop, self.shape, self.rng = loop, shape, rng
        self.announce_period, self.record_ttl, self.rebalance_period = announce_period, record_ttl, rebalance_period
        self.batching, self.max_batch, self.disk_gbps = batching, max_batch, disk_gbps
        self.max_batch_positions, self.max_wait = 1024, 0.005   # server/batching.py StepBatcher's defaults
        self.claim_wait = 1.5   # s, server/node.py ServerConfig.claim_wait: a move claim is re-read after it
        self.nodes: dict[str, SimNode] = {}
        self._records: dict[str, tuple[ServerRecord, float]] = {}   # peer -> (record, expires at)
        self._visible: Optional[list[ServerRecord]] = None
        self._visible_at = -1.0
        self._priors_of, self._priors = None, {}
        self.block_counts = [0] * shape.n_blocks
        self._first_block: dict[int, dict[str, SimNode]] = {}   # start block -> online nodes whose span starts there
        self.covered_since: Optional[float] = None
        self.covered_seconds = 0.0
        self.moves = self.joins = self.departures = 0
        self.on_departure: list[Callable[[SimNode, bool], None]] = []   # sessions listen (node, crashed)
        self.on_join: list[Callable[[SimNode], None]] = []             # churn schedules the node's departure

    # --- records ---------------------------------------------------------------------------
    def record_of(self, node: SimNode, state: ServerState = ServerState.ONLINE) -> ServerRecord:
        span = max(1, node.end - node.start)
        return ServerRecord(
            peer_id=node.peer_id, model_id=MODEL_ID, start=node.start, end=node.end, n_blocks=self.shape.n_blocks,
            state=state, throughput=node.hardware.block_rate(self.shape) / span, free_cache_tokens=2**20,
            max_session_length=2**20, active_sessions=node.sessions, queued_steps=len(node.queue), price=node.price,
            moving_to=node.moving_to, ring=True, announced_at=self.loop.now)

    def announce(self, node: SimNode, state: ServerState = ServerState.ONLINE) -> None:
        self._records[node.peer_id] = (self.record_of(node, state), self.loop.now + self.record_ttl)
        self._visible = None

    def visible_records(self) -> list[ServerRecord]:
        """The unexpired records, as a client or node reading the DHT now would get them."""
        now = self.loop.now
        if self._visible is None or now - self._visible_at > 0.5:
            expired = [peer for peer, (_, until) in self._records.items() if until < now]
            for peer in expired:
                del self._records[peer]
            self._visible = [record for record, _ in self._records.values()]
            self._visible_at = now
        return self._visible

    def priors(self) -> dict[str, float]:
        """capped_priors over the visible records (what SwarmClient._timed passes), cached per read."""
        records = self.visible_records()
        if self._priors_of is not records:
            self._priors_of, self._priors = records, capped_priors(records)
        return self._priors

    def online_records(self) -> list[ServerRecord]:
        return [r for r in self.visible_records() if r.state == ServerState.ONLINE]

    def _announce_loop(self, node: SimNode, epoch: int) -> None:
        if node.state == "gone" or node.epoch != epoch:
            return
        if node.online:
            self.announce(node)
        self.loop.after(self.announce_period * self.rng.uniform(0.9, 1.1), self._announce_loop, node, epoch)

    # --- coverage --------------------------------------------------------------------------
    def serving(self, block: int) -> list[SimNode]:
        """Online nodes whose span includes `block` (witness candidates)."""
        return [node for start in range(0, block + 1) for node in self._first_block.get(start, {}).values()
                if node.end > block]

    def _count(self, node: SimNode, delta: int) -> None:
        for b in range(node.start, node.end):
            self.block_counts[b] += delta
        starting = self._first_block.setdefault(node.start, {})
        if delta > 0:
            starting[node.peer_id] = node
        else:
            starting.pop(node.peer_id, None)
        covered = min(self.block_counts) > 0
        if covered and self.covered_since is None:
            self.covered_since = self.loop.now
        elif not covered and self.covered_since is not None:
            self.covered_seconds += self.loop.now - self.covered_since
            self.covered_since = None

    def covered_share(self, since: float, until: float) -> float:
        total = self.covered_seconds + (until - self.covered_since if self.covered_since is not None else 0.0)
        return total / max(until - since, 1e-9)

    def reset_coverage(self) -> None:
        self.covered_seconds = 0.0
        if self.covered_since is not None:
            self.covered_since = self.loop.now

    # --- joining and leaving ---------------------------------------------------------------
    def join(self, node: SimNode, span: Optional[tuple[int, int]] = None, on_disk: bool = False,
             ready_in: Optional[float] = None) -> None:
        """A node arrives: it chooses blocks (unless given), loads them, and comes online."""
        node.joined_at = self.loop.now
        self.nodes[node.peer_id] = node
        self.joins += 1
        for listener in self.on_join:
            listener(node)
        max_blocks = node.hardware.max_blocks(self.shape)
        if max_blocks < 1:
            node.state = "gone"
            return
        if span is None:   # as server/node.py: the length from the online records, the window from all of them
            seen = [r for r in self.visible_records() if r.peer_id != node.peer_id]
            online = [r for r in seen if r.state == ServerState.ONLINE]
            length = node_span_length(self.shape.n_blocks, node.hardware.block_rate(self.shape), max_blocks, online)
            span = choose_span(self.shape.n_blocks, length, planning_view(seen))
            node.auto = True
        else:
            node.auto = False
        node.start, node.end = span
        seconds = ready_in if ready_in is not None else self.load_seconds(node, node.end - node.start, on_disk)
        self.loop.after(seconds, self._online, node, node.epoch)

    def load_seconds(self, node: SimNode, blocks: int, on_disk: bool) -> float:
        nbytes = blocks * self.shape.block_bytes(16 if not on_disk else node.hardware.weight_bits)
        rate = self.disk_gbps * 8e9 if on_disk else node.place.down_bps
        return nbytes * 8 / rate + 2.0   # + start-up: imports, measuring, first announcement

    def _online(self, node: SimNode, epoch: int) -> None:
        if node.state == "gone" or node.epoch != epoch:
            return
        node.state = "online"
        node.moving_to = None
        self._count(node, +1)
        self.announce(node)
        self.loop.after(self.announce_period, self._announce_loop, node, epoch)
        if node.auto and self.rebalance_period > 0:
            self.loop.after(self.rebalance_period * self.rng.uniform(1.0, 1.5), self._rebalance, node, epoch)

    def leave(self, node: SimNode, how: str = "leave") -> None:
        """The node goes: `leave` (announces leaving, closes its streams), `kill` (the process dies: the
        OS closes its connections, its record stays until it expires) or `vanish` (the machine or its
        network goes: silence, and the record stays)."""
        if node.state == "gone":
            return
        was_online = node.online
        node.state, node.epoch, node.crashed = "gone", node.epoch + 1, how == "vanish"
        node.queue.clear()
        self.departures += 1
        if was_online:
            self._count(node, -1)
        if how == "leave":
            self.announce(node, ServerState.LEAVING)
        for listener in self.on_departure:
            listener(node, node.crashed)

    # --- rebalancing -----------------------------------------------------------------------
    def _rebalance(self, node: SimNode, epoch: int) -> None:
        if node.state != "online" or node.epoch != epoch:
            return
        me = self.record_of(node)
        others = [r for r in self.online_records() if r.peer_id != node.peer_id]
        target = plan_move(self.shape.n_blocks, me, planning_view(others))
        if target is not None and (target[1] - target[0]) <= node.hardware.max_blocks(self.shape):
            node.moving_to = target
            self.announce(node)
            self.loop.after(self.claim_wait, self._confirm_move, node, epoch, target)
            return
        self.loop.after(self.rebalance_period * self.rng.uniform(1.0, 1.5), self._rebalance, node, epoch)

    def _confirm_move(self, node: SimNode, epoch: int, target: tuple[int, int]) -> None:
        if node.state != "online" or node.epoch != epoch:
            return
        me = self.record_of(node)
        others = [r for r in self.online_records() if r.peer_id != node.peer_id]
        confirmed = None if contested_by(me, target, others) else plan_move(
            self.shape.n_blocks, me.model_copy(update={"moving_to": None}), planning_view(others))
        if confirmed is None:
            node.moving_to = None
            self.announce(node)
            self.loop.after(self.rebalance_period * self.rng.uniform(1.0, 1.5), self._rebalance, node, epoch)
            return
        # Move as server/node.py does: load the new blocks while still serving the old ones, then close the
        # old span's sessions (their clients fail over) and announce the new span.
        new_blocks = len(set(range(*confirmed)) - set(range(node.start, node.end)))
        node.moving_to = None
        self.loop.after(self.load_seconds(node, new_blocks, on_disk=False), self._switch, node, epoch, confirmed)

    def _switch(self, node: SimNode, epoch: int, span: tuple[int, int]) -> None:
        if node.state != "online" or node.epoch != epoch:
            return
        self._count(node, -1)
        node.epoch += 1
        node.queue.clear()
        self.moves += 1
        for listener in self.on_departure:
            listener(node, False)
        node.start, node.end = span
        self._count(node, +1)
        self.announce(node)
        self.loop.after(self.announce_period, self._announce_loop, node, node.epoch)
        self.loop.after(self.rebalance_period * self.rng.uniform(1.0, 1.5), self._rebalance, node, node.epoch)

    # --- compute ---------------------------------------------------------------------------
    def submit(self, node: SimNode, job: Job) -> bool:
        """Queue a job on the node; False if the node cannot take it (gone, or no longer those blocks)."""
        if not node.online:
            return False
        node.queue.append(job)
        if not node.busy:
            if node.waiting is None:
                self._next_batch(node)
            elif len(node.queue) >= self._company(node):
                node.waiting = None          # everyone expected is here: no need to wait longer
                self._next_batch(node, waited=True)
        return True

    def _company(self, node: SimNode) -> int:
        """Steps server/batching.py waits for: one per session open here, up to max_batch."""
        return min(self.max_batch, max(1, node.sessions))

    def _waited(self, node: SimNode, token: object) -> None:
        if node.waiting is token and not node.busy:
            node.waiting = None
            self._next_batch(node, waited=True)

    def _next_batch(self, node: SimNode, waited: bool = False) -> None:
        if not node.queue or not node.online:
            node.busy = False
            return
        if self.batching and not waited and len(node.queue) < self._company(node):
            # StepBatcher._wait_for_company: up to max_wait for the other sessions' steps.
            token = node.waiting = object()
            node.busy = False
            self.loop.after(self.max_wait, self._waited, node, token)
            return
        # StepBatcher._take: what is queued, in order, up to max_batch steps and max_batch_positions positions.
        batch = [node.queue.popleft()]
        if self.batching:
            positions = batch[0].positions
            while node.queue and len(batch) < self.max_batch and positions + node.queue[0].positions <= \
                    self.max_batch_positions:
                positions += node.queue[0].positions
                batch.append(node.queue.popleft())
        alone = node.hardware.step_seconds(self.shape, node.end - node.start, [j.positions for j in batch],
                                           [j.context for j in batch])
        threads = node.hardware.threads
        seconds = node.host.start(threads, alone)
        node.busy = True
        node.busy_seconds += seconds
        node.computed_positions += sum(j.positions for j in batch) * (node.end - node.start)
        self.loop.after(seconds, self._batch_done, node, node.epoch, batch, threads)

    def _batch_done(self, node: SimNode, epoch: int, batch: list[Job], threads: int) -> None:
        node.host.done(threads)
        if node.epoch != epoch:   # the node left or moved meanwhile: the work is lost (sessions notice by
            node.busy = False     # timeout or error)
            self._next_batch(node)
            return
        for job in batch:
            job.on_done(self.loop.now)
        self._next_batch(node)
