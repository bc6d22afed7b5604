"""Synchronous facade over the swarm for the CLI, the generation loop and the gateway.

`SwarmClient.connect(initial_peers)` joins the DHT as a client (it stores nothing and
needs no reachable address, so it works from behind NAT; its identity is a throwaway one).
It reads only records that verify (`protocol.parse_records`: signed by the peer they speak
for, valid for the model's block count as its own header gives it); what they claim is
still a claim, which pings and routing check. It can list models, find and
ping servers, plan a chain and open `RemoteSession`s whose `forward(hidden, position)`
has the same contract as the local engine's forward function.

What it keeps (state.py's folder, unless `connect(keep_state=False)`): the receipts its sessions
verified (`receipts`: receipts.py, read by `swarmllm audit`) and each server's reputation
(`reputation`: reputation.py over reputation_store.py). Routing never uses a peer reputation
bans (a ping does not lift that ban, unlike the back-off after a failure), penalises low scores,
and breaks ties at random per session (`routing_seed`).
"""

from __future__ import annotations

import asyncio
import random
import time
import weakref
from collections import Counter
from typing import Callable, Iterable, Optional, Sequence

import torch

from swarmllm.client.routing import ChainLink, MissingBlocksError, missing_spans, plan_chain, usable
from swarmllm.client.chain import RemoteStepError
from swarmllm.client.estimates import SpeedEstimates, capped_priors
from swarmllm.client.load import server_loads
from swarmllm.client.ping import ping_peer
from swarmllm.client.radius import RadiusError, Scope, parse_radius, scoped_records
from swarmllm.client.receipts import ReceiptStore
from swarmllm.client.reputation import Reputation, load_trusted_gateways
from swarmllm.client.reputation_store import SqliteReputationStore
from swarmllm.client.session import InferenceSession
from swarmllm.client.verification import Verifier
from swarmllm.engine.generation import PREFILL_CHUNK
from swarmllm.protocol import (
    MODEL_REGISTRY_KEY, ErrorCode, ModelRecord, Pong, ServerRecord, ServerState, SwarmError, block_key, parse_model_records,
    parse_records,
)
from swarmllm.protocol.demand import (
    MAX_QUEUE_LENGTH, MAX_REQUESTS_PER_MINUTE, MAX_TOKENS_PER_MINUTE, DemandRecord, demand_key,
)
from swarmllm.protocol.records import MAX_RECORD_TTL, parse_demand_records
from swarmllm.swarm import BackgroundLoop, SwarmNode, dht_time


class RemoteSession:
    """A chain session usable from synchronous code."""

    def __init__(self, client: "SwarmClient", session: InferenceSession):
        self._client, self._session = client, session

    @property
    def chain(self) -> list[ChainLink]:
        return self._session.chain

    @property
    def session(self) -> InferenceSession:
        """The async session underneath, for code already running on the client's loop (many sessions at once)."""
        return self._session

    @property
    def last_step_seconds(self) -> float:
        return self._session.last_step_seconds

    @property
    def failovers(self) -> list:
        return self._session.failovers

    def forward(self, hidden: torch.Tensor, start_position: int) -> torch.Tensor:
        return self._client.loop.run(self._session.step(hidden, start_position))

    def verify_all(self) -> None:
        """Under --verify sample: check every server up to the session's end now (Rewind if a liar is caught)."""
        if self._session.verifier is not None:
            self._client.loop.run(self._session.verifier.check_all())

    def close(self) -> None:
        self._client.loop.run(self._session.close())

    def __enter__(self) -> "RemoteSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


NO_WITNESS_RETRY = 10.0  # s during which a span without a witness is not planned for again (any session)
WITNESS_FAILOVERS = 2  # a witness that needs more is dropped for another (verification.py)
ESTABLISHED_SCORE = 0.9  # reputation score of a peer preferred as a witness (8 clean verified positions, no mismatch)
TRUST_REFRESH = 10.0  # s between reads of the trusted owners (swarmllm pair / unpair take effect this soon)


class OutsideRadiusError(SwarmError):
    """No chain fits the session's trust radius (client/radius.py); the message names it and the blocks."""

    def __init__(self, model_id: str, error: RadiusError):
        super().__init__(f"{model_id}: {error}")
        self.radius, self.missing = error.radius, error.missing


class SwarmClient:
    """Discovery, routing, liveness bookkeeping and sessions; the sync methods block on the loop."""

    MEMORY = 120.0  # s: servers seen this recently may be re-validated by a ping when the DHT misses them

    def __init__(self, loop: BackgroundLoop, swarm: SwarmNode, *, receipts: Optional[ReceiptStore] = None,
                 reputation: Optional[Reputation] = None):
        self.loop, self.swarm = loop, swarm
        self.receipts = receipts            # where sessions keep the receipts they verified (None: nowhere)
        self.reputation = reputation if reputation is not None else Reputation()  # bans and penalties routing uses
        self.rtts: dict[str, float] = {}
        self.speeds = SpeedEstimates()  # seconds per block we measured per server (routing trusts these)
        self._bans: dict[str, tuple[float, int]] = {}  # peer -> (banned until, consecutive failures)
        self._seen: dict[str, dict[str, tuple[float, ServerRecord]]] = {}  # model -> peer -> (seen at, record)
        self._watchers: dict[str, asyncio.Task] = {}  # model -> task keeping _seen fresh
        self._kicks: dict[str, asyncio.Event] = {}    # model -> set to refresh at once
        self._no_witness: dict[tuple, float] = {}  # (model, start, end, excluded) -> until when no witness exists
        self.owner_id: Optional[str] = None  # my owner id (owners.py): servers it certifies are "local"
        self.trust_loader: Callable[[], frozenset] = frozenset  # the owner ids I paired with ("trusted")
        self._trusted: tuple[float, frozenset] = (float("-inf"), frozenset())
        self.load_aware = True  # routing counts load (load.py); False: speed only (benchmarks compare the two)
        self._live: weakref.WeakSet = weakref.WeakSet()  # sessions this client opened: its own count of load

    @classmethod
    def connect(cls, initial_peers: Sequence[str], *, keep_state: bool = True) -> "SwarmClient":
        """Join the swarm as a client. keep_state: keep verified receipts and reputation in the state
        folder (state.py: receipts.sqlite, reputation.sqlite; trusted gateways from trusted-gateways),
        else in memory only."""
        loop = BackgroundLoop()
        try:
            swarm = loop.run(SwarmNode.create(initial_peers, client_mode=True))
        except BaseException:
            loop.close()
            raise
        if not keep_state:
            return cls(loop, swarm)
        reputation = Reputation(SqliteReputationStore(), trusted=load_trusted_gateways())
        client = cls(loop, swarm, receipts=ReceiptStore(), reputation=reputation)
        client.use_owner_state()
        return client

    def use_owner_state(self) -> None:
        """Radii from the state folder: my owner key (made on first use) and the owners I paired with."""
        from swarmllm.owners import TrustStore, owner_key

        owner = owner_key()
        self.owner_id = owner.owner_id

        def trusted() -> frozenset:
            with TrustStore(owner) as store:
                return frozenset(store.trusted_owner_ids())
        self.trust_loader = trusted

    def lite_model(self, model_id: str):
        """The model's tokenizer and config, from a server's copy of its header (client/lite.py): no weights."""
        from swarmllm.client.lite import LiteError, fetch_header, lite_model

        found = self.loop.run(self.swarm.get_records([block_key(model_id, 0)]))
        records = parse_records(found, model_id, now=dht_time())
        for record in records:
            self.swarm.remember_addresses(record.peer_id, record.addresses)
        peers = [r.peer_id for r in sorted(records, key=lambda r: not r.ring) if r.peer_id not in self.banned()]
        if not peers:
            raise LiteError(f"no server of {model_id} answered in the DHT: the swarm does not serve it now")
        model = lite_model(model_id, self.loop.run(fetch_header(self.swarm, peers, model_id)))
        if any(r.n_blocks != model.config.n_blocks for r in records):
            raise LiteError(f"the header a server shared says {model.config.n_blocks} blocks, the swarm's records "
                            f"{sorted({r.n_blocks for r in records})}: refusing a mismatched model")
        return model

    def scope(self, radius: str = "public", privacy: Optional[str] = None, ring_ends: bool = False) -> Scope:
        """The routing scope of a session: `radius` (e.g. "trusted+public") and the privacy radius of its ends."""
        at, trusted = self._trusted
        if time.monotonic() - at > TRUST_REFRESH:
            trusted = frozenset(self.trust_loader())
            self._trusted = (time.monotonic(), trusted)
        return Scope(parse_radius(radius), parse_radius(privacy).preferred if privacy else None, self.owner_id,
                     trusted, ring_ends)

    def close(self) -> None:
        try:
            self.loop.run(self.swarm.shutdown(), timeout=10)
        finally:
            self.loop.close()
            if self.receipts is not None:
                self.receipts.close()
            closing = getattr(self.reputation.store, "close", None)
            if closing is not None:
                closing()

    def __enter__(self) -> "SwarmClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- liveness ----------------------------------------------------------------------
    def mark_failed(self, peer_id: str) -> None:
        """A call to this peer failed: skip it for a while, longer after each failure (2 s .. 60 s)."""
        _, failures = self._bans.get(peer_id, (0.0, 0))
        self._bans[peer_id] = (time.monotonic() + min(60.0, 2.0 * 2 ** failures), failures + 1)
        self.rtts.pop(peer_id, None)

    def banned(self) -> set[str]:
        """Peers skipped for now: recently failed (back-off), or banned by reputation (lied to us)."""
        now = time.monotonic()
        return {peer for peer, (until, _) in self._bans.items() if until > now} | self.reputation.banned_peers()

    def _bad_receipt(self, error: RemoteStepError) -> None:
        """A server broke the receipt rules. With one suspect the evidence is its own signed word (or its
        silence): a mismatch on its record and a ban. Two neighbours whose receipts disagree are only
        routed around (failover's back-off): one of them may be honest."""
        if len(error.suspects) == 1:
            self.reputation.record_mismatch(error.peer_id)
            self.reputation.ban(error.peer_id)

    def _stalled(self, peer_id: str) -> None:
        """A server took a step (its upstream signed that it sent it) and never finished it, while answering
        pings. Once may be an overloaded machine: a timeout on its record and a back-off; twice is a ban."""
        before = self.reputation.record(peer_id)
        self.reputation.record_timeout(peer_id)
        self.mark_failed(peer_id)
        if before is not None and before.timeouts >= 1:
            self.reputation.ban(peer_id)

    # --- discovery ---------------------------------------------------------------------
    async def _find_servers(self, model_id: str, n_blocks: int) -> list[ServerRecord]:
        """A DHT lookup of the model's servers (also remembered for `_recent`)."""
        found = await self.swarm.get_records([block_key(model_id, b) for b in range(n_blocks)])
        records = parse_records(found, model_id, n_blocks, now=dht_time())  # verified; n_blocks is our header's
        seen, now = self._seen.setdefault(model_id, {}), time.monotonic()
        for record in records:
            seen[record.peer_id] = (now, record)
            self.swarm.remember_addresses(record.peer_id, record.addresses)  # how to dial it (relay circuits)
        for peer in [p for p, (at, _) in seen.items() if now - at > self.MEMORY]:  # long gone: forget
            del seen[peer]
        return records

    def _recent(self, model_id: str, max_age: float) -> list[ServerRecord]:
        """Every record seen in the last `max_age` s, newest per peer.

        One DHT lookup can miss records while peers churn (lookups that hit dead peers come
        back partial); the union over the last seconds does not. Dead peers' records linger
        until they age out, which is harmless: they fail a ping and are skipped.
        """
        now = time.monotonic()
        return [record for at, record in self._seen.get(model_id, {}).values() if now - at <= max_age]

    def _watch(self, model_id: str, n_blocks: int, period: float = 2.0, max_in_flight: int = 3) -> None:
        """Keep refreshing the model's records in the background once we use the model.

        A new lookup starts every `period` s, or at once when a planner found blocks missing
        (`_kick`), without waiting for the previous one: a lookup that touches a frozen peer
        waits out the DHT's RPC timeout, and a replacement that just (re)joined must not wait
        behind it.
        """
        async def lookup() -> None:
            try:
                await self._find_servers(model_id, n_blocks)
            except Exception:  # a failed lookup is retried on the next round
                pass

        async def refresh_forever(kick: asyncio.Event) -> None:
            in_flight: set[asyncio.Task] = set()
            while True:
                if len(in_flight) < max_in_flight:
                    task = asyncio.get_running_loop().create_task(lookup())
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                try:
                    await asyncio.wait_for(kick.wait(), period)
                except asyncio.TimeoutError:
                    pass
                kick.clear()

        if model_id not in self._watchers:
            self._kicks[model_id] = asyncio.Event()
            self._watchers[model_id] = asyncio.get_running_loop().create_task(refresh_forever(self._kicks[model_id]))

    def _kick(self, model_id: str) -> None:
        """Blocks are missing from our view: look in the DHT now rather than at the next period."""
        if model_id in self._kicks:
            self._kicks[model_id].set()

    def find_servers(self, model_id: str, n_blocks: int) -> list[ServerRecord]:
        return self.loop.run(self._find_servers(model_id, n_blocks))

    def list_models(self) -> dict[str, ModelRecord]:
        """The model registry: {model id: ModelRecord} of every model some node announces."""
        found = self.loop.run(self.swarm.get_records([MODEL_REGISTRY_KEY]))[MODEL_REGISTRY_KEY]
        return parse_model_records(found, now=dht_time())

    def publish_demand(self, demand: Sequence[tuple[str, float, float, int]], window: float) -> bool:
        """Store this client's demand per model, [(model id, requests/min, tokens/min, queue length)], as
        signed DemandRecords (protocol/demand.py) expiring after MAX_RECORD_TTL s; True if all were stored."""
        now = dht_time()
        items = [(demand_key(model_id), DemandRecord(
            gateway_id=self.swarm.peer_id, model_id=model_id, requests_per_minute=min(rpm, MAX_REQUESTS_PER_MINUTE),
            tokens_per_minute=min(tpm, MAX_TOKENS_PER_MINUTE), queue_length=min(queue, MAX_QUEUE_LENGTH),
            window=window, announced_at=now)) for model_id, rpm, tpm, queue in demand]
        return self.loop.run(self.swarm.store_records(items, now + MAX_RECORD_TTL))

    def read_demand(self, model_ids: Iterable[str]) -> dict[str, list[DemandRecord]]:
        """Every gateway's verified DemandRecord per model (claims: the dashboard shows them as such)."""
        model_ids = list(model_ids)
        found = self.loop.run(self.swarm.get_records([demand_key(m) for m in model_ids]))
        now = dht_time()
        return {m: parse_demand_records(found.get(demand_key(m), {}), m, now=now) for m in model_ids}

    def recent_records(self, model_id: str, max_age: float) -> list[ServerRecord]:
        """Every record of the model seen in the last `max_age` s (what failover plans from)."""
        return self._recent(model_id, max_age)

    async def _ping(self, peer_ids: Iterable[str], timeout: float = 3.0) -> dict[str, float]:
        """RTTs of the peers that answer. A pong is also first-hand news of what the peer serves:
        the records we hold for it are confirmed (or corrected) and count as just seen."""
        ids = list(peer_ids)
        # 3 rounds: the first includes stream set-up
        answers = await asyncio.gather(*(ping_peer(self.swarm, p, timeout, rounds=3) for p in ids))
        measured = {}
        for peer, answer in zip(ids, answers):
            if answer is None:
                continue
            measured[peer], pong = answer
            self._confirm(peer, pong)
        self.rtts.update(measured)
        return measured

    def _confirm(self, peer: str, pong: Pong) -> None:
        known = self._seen.get(pong.model_id, {}).get(peer)
        if known is None or pong.end <= pong.start:
            return
        state = ServerState.ONLINE if pong.accepting else ServerState.LEAVING
        self._seen[pong.model_id][peer] = (time.monotonic(), known[1].model_copy(
            update={"start": pong.start, "end": pong.end, "state": state}))

    async def _revalidate(self, model_id: str, fresh: float) -> None:
        """Ping servers seen earlier (within MEMORY s) but not refreshed in the last `fresh` s."""
        now = time.monotonic()
        stale = [peer for peer, (at, _) in self._seen.get(model_id, {}).items() if fresh < now - at <= self.MEMORY]
        if stale:
            await self._ping(stale, timeout=1.0)

    def connection_paths(self, peer_ids: Iterable[str]) -> dict[str, str]:
        """How this client is connected to each peer now: "relayed" (through a relay's circuit), "direct", or
        "none" (no open connection)."""
        paths = self.loop.run(self.swarm.connection_paths())
        out = {}
        for peer in peer_ids:
            addresses = paths.get(peer, [])
            out[peer] = "none" if not addresses else \
                "direct" if any("/p2p-circuit" not in a for a in addresses) else "relayed"
        return out

    def ping(self, peer_ids: Iterable[str], timeout: float = 3.0) -> dict[str, float]:
        """RTT in seconds per reachable peer (unreachable peers are absent)."""
        return self.loop.run(self._ping(peer_ids, timeout))

    # --- routing -----------------------------------------------------------------------
    def opened_sessions(self) -> Counter:
        """Per peer, the sessions this client has open there now (routing trusts this count: load.py)."""
        return Counter(link.peer_id for session in list(self._live) if not session.closed for link in session.chain)

    async def _plan(self, model_id: str, n_blocks: int, max_length: int = 1, exclude: Iterable[str] = (),
                    start: int = 0, end: Optional[int] = None, max_age: float = 0.0,
                    seed: Optional[int] = None, scope: Optional[Scope] = None,
                    max_price: Optional[float] = None) -> list[ChainLink]:
        """Best chain now (within `scope`'s radius, when given). With max_age, plan from the records seen in
        the last max_age s.

        Failover and session opening use max_age: they must not wait on a DHT lookup while
        peers are dying, and once the model is watched a lookup adds nothing the background
        refresh will not bring within seconds (callers retry).
        """
        args = (model_id, n_blocks, max_length, exclude, start, end, seed, scope, max_price)
        if max_age > 0 and self._recent(model_id, max_age):
            try:
                return await self._plan_from(self._recent(model_id, max_age), *args, ping_timeout=1.0)
            except MissingBlocksError:
                if model_id in self._watchers:
                    # DHT lookups can come back partial for a while under churn: ask the servers
                    # we knew directly, and have the watcher look again at once.
                    self._kick(model_id)
                    await self._revalidate(model_id, max_age)
                    return await self._plan_from(self._recent(model_id, max_age), *args, ping_timeout=1.0)
        records = await self._find_servers(model_id, n_blocks)
        return await self._plan_from(self._recent(model_id, max_age) if max_age > 0 else records, *args)

    async def _plan_from(self, records: list[ServerRecord], model_id: str, n_blocks: int, max_length: int,
                         exclude: Iterable[str], start: int, end: Optional[int], seed: Optional[int] = None,
                         scope: Optional[Scope] = None, max_price: Optional[float] = None,
                         ping_timeout: float = 3.0) -> list[ChainLink]:
        skip = set(exclude) | self.banned()
        if scope is not None:  # only servers inside the radius; outside the privacy radius, middle blocks only
            candidates = [r for r in records if r.peer_id not in skip]
            try:
                _, _, records = scoped_records(candidates, scope, n_blocks, start, end, now=dht_time())
            except RadiusError as e:
                if not missing_spans(n_blocks, [r for r in candidates if usable(r, max_length)], start, end):
                    raise OutsideRadiusError(model_id, e) from None
                # nobody at all serves some blocks: plan_chain's MissingBlocksError says so (and failover waits)
        unknown = [r.peer_id for r in records if r.peer_id not in self.rtts and r.peer_id not in skip]
        if unknown:
            measured = await self._ping(unknown, ping_timeout)
            for peer in set(unknown) - set(measured):
                self.mark_failed(peer)

        def plan() -> list[ChainLink]:
            return plan_chain(model_id, n_blocks, records, self.rtts, block_seconds=self.speeds.block_seconds(records),
                              max_length=max_length, exclude=set(exclude) | self.banned(), start=start, end=end,
                              penalties=self.reputation.penalties(r.peer_id for r in records), seed=seed,
                              loads=server_loads(records, self.opened_sessions()) if self.load_aware else None,
                              max_price=max_price)
        try:
            return plan()
        except MissingBlocksError:
            # Back-off is a preference: if only recently failed peers cover a gap, take back
            # those that answer a ping now (never those banned for lying: reputation's bans hold).
            banned = [r.peer_id for r in records if r.peer_id in self._bans and r.peer_id not in set(exclude)]
            for peer in await self._ping(banned, timeout=1.0):
                self._bans.pop(peer, None)
            return plan()

    def plan(self, model_id: str, n_blocks: int, max_length: int = 1, exclude: Iterable[str] = ()) -> list[ChainLink]:
        return self.loop.run(self._plan(model_id, n_blocks, max_length, exclude))

    def _timed(self, model_id: str, chain: list[ChainLink], seconds: float) -> None:
        """A session's one-position step through `chain` took `seconds`: refine our speed estimates."""
        priors = capped_priors(self._recent(model_id, self.MEMORY) or [link.record for link in chain])
        self.speeds.observe([(link.peer_id, link.end - link.start) for link in chain], seconds, self.rtts, priors)

    # --- sessions ----------------------------------------------------------------------
    async def _open_session(self, model_id: str, n_blocks: int, max_length: int, wire_dtype: Optional[str],
                            chain: Optional[list[ChainLink]], prefill_chunk: Optional[int] = PREFILL_CHUNK,
                            attempts: int = 8, wait_for_capacity: float = 6.0,
                            routing_seed: Optional[int] = None, verify: str = "off",
                            scope: Optional[Scope] = None, lite_hidden_size: Optional[int] = None,
                            max_price: Optional[float] = None) -> InferenceSession:
        seed = routing_seed if routing_seed is not None else random.getrandbits(63)  # this session's tie-breaks

        async def replan(start: int, end: int, down: set) -> list[ChainLink]:
            # `down` were just marked failed: avoided, but re-pinged if nobody else covers the span
            return await self._plan(model_id, n_blocks, max_length, (), start, end, max_age=15.0, seed=seed,
                                    scope=scope, max_price=max_price)

        self._watch(model_id, n_blocks)
        last_error: Optional[RemoteStepError] = None
        deadline = time.monotonic() + wait_for_capacity
        for attempt in range(attempts):
            try:
                links = chain or await self._plan(model_id, n_blocks, max_length, max_age=15.0, seed=seed, scope=scope,
                                                  max_price=max_price)
            except MissingBlocksError:
                if last_error is not None and last_error.code not in (ErrorCode.UNREACHABLE, ErrorCode.CONNECTION_LOST,
                                                                ErrorCode.TIMEOUT):
                    raise last_error from None  # the gap is the server that just refused: say why it refused
                if time.monotonic() > deadline:
                    raise
                # A DHT lookup can miss records while peers churn, and failed servers come back:
                # look again for a few seconds before calling the blocks missing.
                await asyncio.sleep(1.0)
                continue
            dtype = wire_dtype
            if dtype is None:  # lossless: 16-bit only when every server computes in that dtype
                dtypes = {link.record.compute_dtype for link in links}
                dtype = dtypes.pop() if len(dtypes) == 1 and dtypes <= {"bfloat16", "float16"} else "float32"
            session = InferenceSession(self.swarm, model_id, links, max_length, wire_dtype=dtype, replanner=replan,
                                       prefill_chunk=prefill_chunk, on_peer_failure=self.mark_failed,
                                       on_step_timed=lambda chain, seconds: self._timed(model_id, chain, seconds),
                                       on_receipts=self._receipt_sink(model_id), on_bad_receipt=self._bad_receipt, on_stall=self._stalled,
                                       lite_hidden_size=lite_hidden_size)
            if verify != "off":
                session.verify_with(Verifier(session, verify, self._witness_opener(
                    model_id, n_blocks, max_length, dtype, seed, scope), self.reputation,
                    on_verdict=self._verdict_sink(session.session_id)))
            self._live.add(session)  # counted as load from now on: concurrent openers see it
            try:
                return await session.open()
            except RemoteStepError as e:
                self._live.discard(session)
                if chain is not None or attempt == attempts - 1:
                    raise
                self.mark_failed(e.peer_id)  # busy, full or gone: route around it
                last_error = e
        raise AssertionError("unreachable")

    def _witness_opener(self, model_id: str, n_blocks: int, max_length: int, wire_dtype: str, seed: int,
                        scope: Optional[Scope] = None):
        """What a Verifier opens its witnesses (and judges) with: sessions over [start, end) on peers outside
        `exclude`, each with its own failover. Chosen first among established peers (a clean record here:
        colluders must earn one before they are asked to vouch for each other) of the compute class
        `prefer` (bit-exact comparison), then any of that class, then established ones of any class, then any."""
        async def plan(start: int, end: int, exclude: set, prefer: str) -> list[ChainLink]:
            records = self._recent(model_id, 15.0) or await self._find_servers(model_id, n_blocks)
            same = [r for r in records if r.compute_class.key == prefer]
            established = {r.peer_id for r in records if self.reputation.score(r.peer_id) >= ESTABLISHED_SCORE}
            tiers = [[r for r in same if r.peer_id in established], same,
                     [r for r in records if r.peer_id in established], records]
            args = (model_id, n_blocks, max_length, exclude, start, end, seed, scope)  # witnesses see what servers see
            for tier in tiers[:-1]:
                try:
                    return await self._plan_from(tier, *args, ping_timeout=1.0)
                except MissingBlocksError:
                    continue
            return await self._plan_from(records, *args, ping_timeout=1.0)

        async def open_witness(start: int, end: int, exclude: set, prefer: str) -> InferenceSession:
            async def replan(s: int, e: int, down: set) -> list[ChainLink]:
                return await plan(s, e, exclude, prefer)
            key = (model_id, start, end, frozenset(exclude))
            if self._no_witness.get(key, 0.0) > time.monotonic():  # none a moment ago, for any session
                raise SwarmError(f"no server other than {', '.join(sorted(exclude))} covers blocks [{start}, {end}) "
                                 "right now")
            try:
                links = await plan(start, end, exclude, prefer)
            except MissingBlocksError:
                self._no_witness[key] = time.monotonic() + NO_WITNESS_RETRY
                raise
            for attempt in range(3):
                if attempt:
                    links = await plan(start, end, exclude, prefer)
                session = InferenceSession(self.swarm, model_id, links, max_length,
                                           wire_dtype=wire_dtype, replanner=replan, prefill_chunk=None,
                                           max_failovers=WITNESS_FAILOVERS,
                                           on_peer_failure=self.mark_failed, on_receipts=self._receipt_sink(model_id),
                                           on_bad_receipt=self._bad_receipt, on_stall=self._stalled)
                try:
                    return await session.open()
                except RemoteStepError as e:
                    if attempt == 2:
                        raise
                    self.mark_failed(e.peer_id)
            raise AssertionError("unreachable")
        return open_witness

    def _verdict_sink(self, session_id: str):
        if self.receipts is None:
            return lambda peer, first, end, verdict: None
        return lambda peer, first, end, verdict: self.receipts.mark(session_id, peer, first, end, verdict)

    def _receipt_sink(self, model_id: str):
        if self.receipts is None:
            return lambda session_id, receipts: None
        return lambda session_id, receipts: self.receipts.add(session_id, model_id, receipts)

    def open_session(self, model_id: str, n_blocks: int, max_length: int, *, wire_dtype: Optional[str] = None,
                     prefill_chunk: Optional[int] = PREFILL_CHUNK, chain: Optional[list[ChainLink]] = None,
                     routing_seed: Optional[int] = None, verify: str = "off", radius: Optional[str] = None,
                     privacy: Optional[str] = None, lite_hidden_size: Optional[int] = None,
                     max_price: Optional[float] = None) -> RemoteSession:
        """Open a session over `chain` (default: the best chain now, re-planned around failures).

        wire_dtype None = lossless for this chain: 16-bit when every server computes in that
        16-bit dtype (its outputs carry no more precision), else float32. routing_seed: this
        session's choice among equally good chains (routing.py; default random). verify: "sample" or
        "strict" re-computes the servers' spans on independent servers (verification.py). radius: the trust
        radius the chain stays in (client/radius.py: "local", "trusted", "public", widenings "trusted+public");
        privacy: the radius of the servers at the chain's ends (default: the narrowest that can serve). Both
        None: no scope (any server). lite_hidden_size: a lite client's session (client/lite.py): token ids go
        to the first server, which embeds them into states of this size; the chain's ends must ring. max_price:
        credits per 1,000 tokens the chain may cost in all (routing.py; PriceUnavailableError when none can).
        """
        lite = lite_hidden_size is not None
        scope = self.scope(radius or "public", privacy, ring_ends=lite) if radius or privacy or lite else None
        return RemoteSession(self, self.loop.run(self._open_session(
            model_id, n_blocks, max_length, wire_dtype, chain, prefill_chunk, routing_seed=routing_seed,
            verify=verify, scope=scope, lite_hidden_size=lite_hidden_size, max_price=max_price)))
