"""Node lifecycle: load a span, measure it, join the swarm, announce, serve, leave.

`ServerNode.run()` is the whole life of a `swarmllm serve` process:
1. resolve the model and read its config (no weights yet; for a URL, fetch the file's
   header into a local sparse copy, then only the chosen span's tensors, see download/);
2. join the swarm with the node's identity (kept across restarts: swarm/identity.py); if no span
   was given, choose one from the DHT records (its length from
   this machine's speed relative to the swarm's, see partitioner.node_span_length);
3. load only that span's tensors and measure its decode throughput;
4. open its work log (work_log.py: the steps it computes for whom, hashes and sizes only), register
   the session/push/ping handlers, the credits inbox (credits_inbox.py: gateways' signed statements), (and the file handler: peers fetching the
   model from a URL may read ranges of our copy, see file_sharing.py) and announce a `ServerRecord` under every
   block key, signed with the node's key, refreshed every `announce_period` s and expiring after `record_ttl` s,
   carrying the certificate of the node's owner key (owners.py: `--owner-key`, default the state folder's);
   with `lan`, also advertise its non-loopback addresses on the local network by mDNS (swarm/lan.py),
   until it stops (the advertisement is withdrawn on every way out of `run()`);
5. evict idle sessions; on stop, announce LEAVING, refuse new sessions, let in-flight
   steps finish (bounded by `drain_seconds`), and exit.

Stopping (SIGTERM, SIGINT) is bounded whatever the swarm is doing: a stop during start-up
ends it at the next phase; every DHT call made while serving or leaving has a timeout and
gives way to a stop; leaving takes at most LEAVE_ANNOUNCE_SECONDS + drain_seconds +
SHUTDOWN_SECONDS (about 9 s), even when every DHT peer is gone; and a node still alive
HARD_EXIT_SECONDS after the signal (or at a second signal) exits at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import re
import signal
import threading
import time
from dataclasses import dataclass, field, fields
from typing import Any, Mapping, Optional

import psutil

from swarmllm.download import RemoteModel, is_url
from swarmllm.protocol import (
    FILE_HANDLER, MAX_RECORD_TTL, MODEL_REGISTRY_KEY, PING_HANDLER, ModelRecord, PUSH_HANDLER, SESSION_HANDLER,
    ServerRecord, ServerState, block_key, parse_records,
)
from swarmllm.protocol.credits import CREDITS_HANDLER
from swarmllm.protocol.records import MAX_ADDRESSES, MAX_LOAD, MAX_PRICE, MAX_THROUGHPUT, MODEL_ID_PATTERN
from swarmllm.engine.dtypes import resolve_dtype
from swarmllm.server.backend import SpanBackend
from swarmllm.models.catalog import resolve_model
from swarmllm.owners import NodeCertificates, owner_key
from swarmllm.server.block_selection import block_coverage, choose_span, contested_by, plan_move, planning_view
from swarmllm.server.model_choice import ModelView, choose_model, plan_model_move, pressure
from swarmllm.server.model_moves import candidate_models, read_views
from swarmllm.server.file_sharing import FileService, SwarmRangeSource, local_model_file
from swarmllm.server.counters import NodeCounters
from swarmllm.server.credits_inbox import CreditInbox, CreditsHandler
from swarmllm.server.handlers import SessionService
from swarmllm.server.partitioner import node_span_length
from swarmllm.server.quotas import PeerQuotas, QuotaLimits, step_positions_limit
from swarmllm.server.receipts import ReceiptIssuer
from swarmllm.server.sessions import SessionTable
from swarmllm.server.status_http import StatusServer, node_report
from swarmllm.server.work_log import WorkLog, default_work_log_path
from swarmllm.swarm import Reach, SwarmNode, claim_identity, dht_time
from swarmllm.swarm.bandwidth import Traffic
from swarmllm.swarm.lan import DEFAULT_SWARM_NAME, LanAdvertiser, check_swarm_name

logger = logging.getLogger(__name__)

LEAVE_ANNOUNCE_SECONDS = 2.0  # storing the LEAVING record; with the DHT's peers gone it would take much longer
SHUTDOWN_SECONDS = 3.0        # leaving the DHT and stopping p2pd (then p2pd is killed)
HARD_EXIT_SECONDS = 15.0      # after a stop signal, whatever is still running


@dataclass(frozen=True)
class ServerConfig:
    model: Optional[str] = None                 # catalog name, path, or URL of a .gguf/.safetensors file; None:
    # choose among the catalog models on disk by the swarm's demand, and follow it (model_choice.py)
    initial_peers: tuple[str, ...] = ()
    blocks: Optional[tuple[int, int]] = None    # [start, end); None = choose from the DHT
    num_blocks: Optional[int] = None            # span length when choosing (default: sized by speed, see partitioner)
    host: str = "127.0.0.1"
    port: int = 0
    announce_addresses: tuple[str, ...] = ()
    max_session_length: int = 4096
    cache_memory_bytes: int = 512 * 2**20       # KV-cache budget for all sessions
    announce_period: float = 5.0
    record_ttl: float = MAX_RECORD_TTL          # peers refuse records that expire later than MAX_RECORD_TTL ahead
    session_timeout: float = 300.0              # idle sessions are evicted after this
    drain_seconds: float = 4.0                  # in-flight steps may finish this long after a stop (a step takes < 1 s)
    num_threads: Optional[int] = None
    max_memory_bytes: Optional[int] = None      # memory the node may use in all (weights + KV); None: what is free
    identity_path: Optional[str] = None         # the node's key (default: the state folder's, by node_name)
    node_name: str = "node"                     # which identity of the state folder (identity.py); kept across restarts
    throughput: Optional[float] = None          # announce this instead of measuring
    price: float = 0.0                          # credits per 1,000 tokens announced (0 = free; records.MAX_PRICE)
    rebalance_period: float = 30.0              # nodes that chose their blocks re-check every ~this often (0 = never)
    trusted_gateways: tuple[str, ...] = ()      # peer ids whose demand counts fully when choosing a model
    dtype: str = "auto"                         # compute dtype (see engine/dtypes.py)
    kv_dtype: str = "auto"                      # KV-cache storage: "auto" (compute dtype) or "int8"
    quant: str = "none"                         # weights kept as "none" (compute dtype), "int8" or "int4"
    claim_wait: float = 1.5                     # seconds a move claim propagates before it is confirmed
    max_batch: int = 16                         # sessions' ready steps run in one forward pass (1 = no batching)
    batch_wait: float = 0.005                   # seconds a batch may wait for steps of other active sessions
    download_dir: Optional[str] = None          # where a model URL's partial copy lives (default ~/.cache/swarmllm)
    model_manifest: Optional[str] = None        # JSON of tensor sha256s that fetched tensors must match
    ring: bool = True                           # offer ring decoding (loads the model's head when a ring starts here)
    relay: bool = True                          # when nobody can dial this node, be reached through a relay
    relays: tuple[str, ...] = ()                # relays to reserve at (default: the initial peers)
    reachability: str = "auto"                  # "auto" (ask peers to dial back), "public" or "private"
    work_log: Optional[str] = None              # SQLite work log (work_log.py); None: the state folder's; "off": none
    owner_key_path: Optional[str] = None        # owner key certifying this node (owners.py); None: the state
    # folder's owner.key (made on first use); "off": announce no owner
    lan: bool = False                           # advertise this node on the local network by mDNS (swarm/lan.py)
    swarm_name: str = DEFAULT_SWARM_NAME        # ... as a peer of this swarm (a label, not a secret)
    status_port: int = 0                        # the volunteer's status page on 127.0.0.1 (status_http.py); 0 = none
    # Per-peer quotas (server/quotas.py): what one authenticated peer may hold or use here.
    max_sessions_per_peer: int = 32             # sessions one peer may hold open
    max_memory_share: float = 0.5               # share of cache_memory_bytes one peer's sessions may reserve
    compute_share: float = 0.5                  # compute seconds per second a peer earns while other peers are served
    compute_burst: float = 2.0                  # compute seconds a peer may run ahead of that share
    max_streams_per_peer: int = 48              # open streams per peer
    max_bytes_in_flight: int = 256 * 2**20      # bytes of a peer's frames received and not yet handled
    max_step_positions: int = 2048              # positions per step (also bounded by the model's context length)
    max_upload_bps: Optional[float] = None      # cap on the node's stream upload, bits/s on the wire (bandwidth.py)
    max_download_bps: Optional[float] = None    # ... and download; None = no cap
    max_rollbacks: int = 1200                   # steps starting before the end of their session, per session ...
    rollback_window: float = 60.0               # ... per this many seconds

    def quota_limits(self, step_positions: int) -> QuotaLimits:
        """The per-peer quotas these fields describe, with the node's derived positions per step."""
        return QuotaLimits(
            max_sessions=self.max_sessions_per_peer, max_memory_share=self.max_memory_share,
            compute_share=self.compute_share, compute_burst=self.compute_burst, max_streams=self.max_streams_per_peer,
            max_bytes_in_flight=self.max_bytes_in_flight, step_positions=step_positions,
            max_rollbacks=self.max_rollbacks, rollback_window=self.rollback_window)

    @classmethod
    def from_flags(cls, flags: Mapping[str, Any]) -> "ServerConfig":
        """From `swarmllm serve`'s options by their flag names (--cache-memory-mb -> cache_memory_mb, ...):
        the one place where flag names and units map onto the config. Absent flags keep the defaults."""
        renamed = {"max_length": "max_session_length", "identity": "identity_path", "announce": "announce_addresses",
                   "name": "node_name", "owner_key": "owner_key_path"}
        converted = {"cache_memory_mb": ("cache_memory_bytes", lambda mb: int(mb * 2**20)),
                     "batch_wait_ms": ("batch_wait", lambda ms: ms / 1000), "no_ring": ("ring", lambda off: not off),
                     "max_in_flight_mb": ("max_bytes_in_flight", lambda mb: int(mb * 2**20)),
                     "initial_peers": ("initial_peers", tuple), "relays": ("relays", tuple),
                     "trusted_gateways": ("trusted_gateways", tuple),
                     "no_lan": ("lan", lambda off: not off), "max_memory": ("max_memory_bytes", lambda b: b),
                     "max_upload": ("max_upload_bps", lambda bps: bps),
                     "max_download": ("max_download_bps", lambda bps: bps)}
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {}
        for flag, value in flags.items():
            if flag in converted:
                name, convert = converted[flag]
                values[name] = convert(value)
            elif renamed.get(flag, flag) in known and value is not None:
                values[renamed.get(flag, flag)] = tuple(value) if flag == "announce" else value
        return cls(**values)

    def __post_init__(self) -> None:
        self.quota_limits(self.max_step_positions)  # raises ValueError (a sentence) on an impossible quota
        check_swarm_name(self.swarm_name)
        Traffic(self.max_upload_bps, self.max_download_bps)  # raises ValueError (a sentence) on a cap too low
        if not 0 <= self.status_port <= 65535:
            raise ValueError(f"--status-port must be a TCP port (1-65535), or 0 for no status page; got "
                             f"{self.status_port}")
        if self.throughput is not None and not 0 <= self.throughput <= MAX_THROUGHPUT:
            raise ValueError(f"--throughput must be between 0 and {MAX_THROUGHPUT:.0e} tokens/s, got {self.throughput}")
        if not 0 <= self.price <= MAX_PRICE:
            raise ValueError(f"--price must be between 0 and {MAX_PRICE:.0e} credits per 1,000 tokens, got {self.price}")
        if not 0 < self.record_ttl <= MAX_RECORD_TTL:
            raise ValueError(f"record_ttl must be in (0, {MAX_RECORD_TTL:.0f}] s: peers refuse records that expire "
                             "later than that")


@dataclass
class NodeStatus:
    peer_id: str = ""
    start: int = 0
    end: int = 0
    load_seconds: float = 0.0
    startup_seconds: float = 0.0
    throughput: float = 0.0
    addresses: list[str] = field(default_factory=list)
    reachability: str = "unknown"   # the reachability probe's verdict: public, private or unknown
    probe_answers: tuple = ()       # what each prober said (True / False / None: no answer)
    relayed: bool = False           # reached through a relay (its addresses lead with /p2p-circuit ones)
    moving_to: Optional[tuple[int, int]] = None  # claimed target while deciding whether to move
    model_id: str = ""              # the model served (chosen by demand when started without --model)
    state: str = "starting"         # "starting" | "serving" | "paused" | "draining"
    paused_reason: Optional[str] = None  # why it is paused (volunteer/schedule.py: schedule, machine in use)


def torch_dtype_bytes(name: str) -> int:
    return resolve_dtype(name).itemsize


class ServerNode:
    def __init__(self, config: ServerConfig):
        self.config = config
        self.status = NodeStatus()
        self._stop = asyncio.Event()
        self._batcher = None  # the running service's StepBatcher: its queue is announced as load
        self._model = config.model  # what is served now: a node without --model chooses it, and may move
        self._model_wish: Optional[str] = None  # the model the last check would have moved to
        self._remote = RemoteModel(config.model, config.download_dir, config.model_manifest) \
            if config.model is not None and is_url(config.model) else None
        self._swarm: Optional[SwarmNode] = None
        self._model_id = ""
        self._certificates: Optional[NodeCertificates] = None  # our owner's certificate for us, in every record
        self._paused_reason: Optional[str] = None  # set by pause(): announce LEAVING, take no new sessions
        self._pauses: dict[str, str] = {}  # source -> reason, of every pause() not yet resumed
        # What the status page (status_http.py) reads: set while running, never changed by it.
        self.started_at = time.time()
        self.counters = NodeCounters(self.started_at)  # uptime, memory, CPU, tokens and bytes, in every record
        self.service: Optional[SessionService] = None
        self.credits: Optional[CreditInbox] = None
        self.update_state = None  # the updater's state (volunteer/updater.py) when auto-update is on

    async def _model_for(self, start: Optional[int] = None, end: Optional[int] = None) -> str:
        """What to load blocks [start, end) from: the model as given, or (for a URL) a local
        partial copy holding the header and those blocks, fetched now if needed (from peers
        that hold them first, when a manifest can check their bytes)."""
        if self._remote is None:
            return self._model
        peers = await self._peer_source(start, end) if start is not None else None
        path = await asyncio.get_running_loop().run_in_executor(None, self._remote.local_path, start, end, False, peers)
        if peers is not None and peers.bytes_from_peers:
            logger.info("fetched %.1f MiB of blocks [%d, %d) from peers", peers.bytes_from_peers / 2**20, start, end)
        return path

    async def _peer_source(self, start: int, end: int) -> Optional[SwarmRangeSource]:
        if self._swarm is None or self.config.model_manifest is None:
            return None  # without a manifest nothing could check a peer's bytes: the URL only
        try:
            found = await self._swarm.get_records([block_key(self._model_id, b) for b in range(start, end)])
        except Exception as e:
            logger.warning("looking up peers to fetch from failed: %s", e)
            return None
        peers = [r.peer_id for r in parse_records(found, self._model_id, now=dht_time())
                 if r.state == ServerState.ONLINE and r.peer_id != self._swarm.peer_id]
        if not peers:
            return None
        size = await asyncio.get_running_loop().run_in_executor(None, self._remote.source.size)
        return SwarmRangeSource(self._swarm, asyncio.get_running_loop(), self._model_id,
                                os.path.basename(self._remote.file_path), size, peers)

    def _file_service(self) -> Optional[FileService]:
        """What this node shares of its model file with peers that fetch theirs."""
        if self._remote is not None:
            return FileService(self._model_id, self._remote.file_path, partial=True)
        path = local_model_file(resolve_model(self._model).path)
        return FileService(self._model_id, path, partial=False) if path else None

    @property
    def swarm(self) -> Optional[SwarmNode]:
        return self._swarm

    async def run(self, on_ready=None) -> None:
        """The node's whole life (module docstring), with its status page open throughout if asked for
        (a port already in use is a warning, not a reason to stop: the page is not the service)."""
        self.started_at = time.time()
        self.counters = NodeCounters(self.started_at)
        page = None
        if self.config.status_port:
            try:
                page = StatusServer(lambda: node_report(self), self.config.status_port)
                logger.info("status page: %s", page.url)
            except ValueError as e:  # the page is the volunteer's view, not the service: serve without it
                logger.warning("%s; serving without it", e)
        try:
            await self._run(on_ready)
        finally:
            if page is not None:
                page.close()

    async def _run(self, on_ready=None) -> None:
        began = time.perf_counter()
        backend_spec = SpanBackend.describe(await self._model_for()) if self._model else None  # UnknownModelError early
        if backend_spec is not None and not re.match(MODEL_ID_PATTERN, backend_spec.model_id):
            raise ValueError(f"the model id {backend_spec.model_id!r} (the file's name) may hold only letters, digits "
                             "and '.', '_', '+', '-' (at most 128, starting with a letter or digit); rename the file")
        identity = claim_identity(self.config.identity_path, self.config.node_name)
        try:
            if self.config.owner_key_path != "off":  # a bad owner key file is refused before joining
                self._certificates = NodeCertificates(owner_key(self.config.owner_key_path), identity.peer_id)
            reach = Reach(use_relays=self.config.relay, relays=self.config.relays,
                          reachability=self.config.reachability)
            swarm = await SwarmNode.create(self.config.initial_peers, host=self.config.host, port=self.config.port,
                                           announce_addresses=self.config.announce_addresses, identity=identity,
                                           reach=reach, bandwidth=Traffic(self.config.max_upload_bps,
                                                                          self.config.max_download_bps))
        except BaseException:
            identity.release()
            raise
        self._swarm = swarm
        work_log = credits = None
        lan = LanAdvertiser(self.config.swarm_name)
        try:
            if backend_spec is None:
                self._model = await self._choose_model(swarm)
                backend_spec = SpanBackend.describe(await self._model_for())
            self._model_id = self.status.model_id = backend_spec.model_id
            # A stop during start-up ends it at the next phase (a phase in an executor cannot be cut).
            start, end = await self._choose_blocks(swarm, backend_spec)
            model = await self._model_for(start, end)
            loaded = time.perf_counter()
            if self._stop.is_set():
                return
            backend = await self._load_backend(model, start, end)
            self.status.load_seconds = time.perf_counter() - loaded
            if self._stop.is_set():
                return
            self.status.throughput = self.config.throughput or await asyncio.get_running_loop().run_in_executor(
                None, backend.measure_throughput)
            if self._stop.is_set():
                return
            table = self._new_table(backend, start, end)
            work_log = self._open_work_log(swarm.peer_id)
            service = SessionService(swarm, backend, table, backend.model_id, max_batch=self.config.max_batch,
                                     batch_wait=self.config.batch_wait, quotas=PeerQuotas(self._quota_limits(backend)),
                                     receipts=ReceiptIssuer(identity.sign, swarm.peer_id, work_log))
            self._batcher = service.batcher  # its queue length is announced as load
            self.service = service
            await swarm.add_stream_handler(SESSION_HANDLER, service.serve_session_stream)
            await swarm.add_stream_handler(PUSH_HANDLER, service.serve_push_stream)
            await swarm.add_stream_handler(PING_HANDLER, service.serve_session_stream)
            files = self._file_service()
            if files is not None:
                await swarm.add_stream_handler(FILE_HANDLER, files.serve_file_stream)
            credits = self.credits = CreditInbox()  # gateways' signed credit statements for this node (credits_inbox.py)
            await swarm.add_stream_handler(CREDITS_HANDLER, CreditsHandler(credits, swarm.peer_id).serve)
            self.status.peer_id, self.status.start, self.status.end = swarm.peer_id, start, end
            self.status.addresses = await swarm.visible_addresses()
            self.status.reachability, self.status.relayed = swarm.reachability, swarm.relayed
            self.status.probe_answers = tuple(swarm.probe_answers)
            if self._paused_reason is not None:  # paused before it was ready (e.g. started outside its schedule)
                service.accepting, service.refusal = False, f"this node is paused ({self._paused_reason})"
            await self._announce(swarm, backend, table,
                                 ServerState.LEAVING if self._paused_reason else ServerState.ONLINE)
            if self.config.lan:
                await lan.start(swarm.peer_id, self.status.addresses, role="server", models=[backend.model_id])
            asyncio.get_running_loop().run_in_executor(None, self._preload_head, backend)
            self.status.startup_seconds = time.perf_counter() - began
            self.status.state = "paused" if self._paused_reason else "serving"
            if on_ready is not None:
                on_ready(self.status)
            await self._serve_until_stopped(swarm, backend, table, service)
        finally:
            await lan.stop()
            logger.info("stream traffic: %s", json.dumps(swarm.traffic.to_json()))  # benchmarks/bandwidth_cap.py
            await swarm.shutdown(SHUTDOWN_SECONDS)
            identity.release()
            if work_log is not None:
                work_log.close()
            if credits is not None:
                credits.close()

    def _open_work_log(self, peer_id: str) -> Optional[WorkLog]:
        if self.config.work_log == "off":
            return None
        return WorkLog(self.config.work_log or default_work_log_path(peer_id))

    async def _load_backend(self, model: str, start: int, end: int) -> SpanBackend:
        backend = await asyncio.get_running_loop().run_in_executor(
            None, SpanBackend.load, model, start, end, self.config.num_threads, self.config.dtype,
            self.config.kv_dtype, self.config.quant)
        if self._remote is not None or not self.config.ring:
            backend.source = None  # a partial copy holds no head (its bytes read as zeros): no ring decoding
        return backend

    @staticmethod
    def _preload_head(backend: SpanBackend) -> None:
        """Load the head in the background (after measuring, which it would slow down), so the
        first ring through this node does not wait for it. Only chain ends ever need it."""
        if backend.source is None or not backend.ends_a_chain:
            return
        try:
            backend.head()
        except LookupError as e:
            logger.warning("no ring decoding on this node: %s", e)

    def _quota_limits(self, backend) -> QuotaLimits:
        c = self.config
        return c.quota_limits(step_positions_limit(c.max_step_positions, backend.config.context_length,
                                                   c.max_session_length))

    def _new_table(self, backend, start: int, end: int) -> SessionTable:
        return SessionTable(start, end, backend.hidden_size,
                            budget_block_positions=self.config.cache_memory_bytes // backend.kv_bytes_per_block_position,
                            max_session_length=self.config.max_session_length,
                            history_cost_per_position=backend.history_bytes_per_position
                            / backend.kv_bytes_per_block_position)

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    async def wait_stopped(self, timeout: float) -> None:
        """Return when the node stops or after `timeout` s, whichever comes first."""
        try:
            await asyncio.wait_for(self._stop.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    @property
    def paused_reason(self) -> Optional[str]:
        return self._paused_reason

    @property
    def active_sessions(self) -> int:
        return len(self.service.table.sessions) if self.service is not None else 0

    def pause(self, reason: str, source: str = "schedule") -> None:
        """Stop taking sessions without leaving: within a second the serve loop announces LEAVING
        (routers stop choosing us) and refuses new sessions with `reason`; active sessions finish
        (drained, not cut); the blocks stay loaded for resume(). Each `source` (the schedule, the
        updater) pauses and resumes for itself: the node serves when none holds it paused."""
        self._pauses[source] = reason
        self._paused_reason = self.status.paused_reason = next(iter(self._pauses.values()))
        if self.status.state in ("serving", "paused"):
            self.status.state = "paused"

    def resume(self, source: str = "schedule") -> None:
        """Lift `source`'s pause: the serve loop announces ONLINE and takes sessions within a second,
        unless another source still holds the node paused."""
        self._pauses.pop(source, None)
        self._paused_reason = self.status.paused_reason = next(iter(self._pauses.values()), None)
        if self.status.state == "paused" and self._paused_reason is None:
            self.status.state = "serving"

    def paused_by(self, source: str) -> Optional[str]:
        return self._pauses.get(source)

    def install_signal_handlers(self) -> None:
        """SIGINT/SIGTERM stop the node; a second one, or HARD_EXIT_SECONDS without having
        exited, ends the process at once (p2pd dies with it, see swarm/daemon.py)."""
        loop = asyncio.get_running_loop()

        def on_signal(sig: int) -> None:
            if self._stop.is_set():
                logger.warning("second stop signal: exiting now")
                os._exit(128 + sig)
            self.stop()
            timer = threading.Timer(HARD_EXIT_SECONDS, self._hard_exit)
            timer.daemon = True
            timer.start()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig)

    @staticmethod
    def _hard_exit() -> None:
        logger.error("still running %.0f s after the stop signal: exiting now", HARD_EXIT_SECONDS)
        os._exit(1)

    async def _unless_stopped(self, coro) -> None:
        """Run `coro`, but give up on it as soon as the node is asked to stop."""
        task = asyncio.ensure_future(coro)
        stopped = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pending in (task, stopped):
                pending.cancel()

    async def _choose_blocks(self, swarm: SwarmNode, spec) -> tuple[int, int]:
        model_id, n_blocks = spec.model_id, spec.n_blocks
        if self.config.blocks is not None:
            start, end = self.config.blocks
            if not (0 <= start < end <= n_blocks):
                raise ValueError(f"--blocks {start}:{end} is outside the model's {n_blocks} blocks; "
                                 f"use START:END with 0 <= START < END <= {n_blocks}")
            return start, end
        found = await swarm.get_records([block_key(model_id, b) for b in range(n_blocks)])
        # Our own records from before a restart (same peer id) are not another server's.
        records = planning_view([r for r in parse_records(found, model_id, n_blocks, now=dht_time())
                                 if r.peer_id != swarm.peer_id])
        num_blocks = self.config.num_blocks or await self._auto_span_length(spec, records)
        return choose_span(n_blocks, num_blocks, records)

    async def _auto_span_length(self, spec, records: list[ServerRecord]) -> int:
        """Span length from this machine's speed relative to the swarm's, within its free memory."""
        block_bytes = spec.block_weights * torch_dtype_bytes(self.config.dtype)
        room = psutil.virtual_memory().available
        if self.config.max_memory_bytes is not None:
            room = min(room, self.config.max_memory_bytes)
        free = room - self.config.cache_memory_bytes
        max_blocks = max(1, free // block_bytes)
        online = [r for r in records if r.state == ServerState.ONLINE]
        block_rate = None
        if any(r.throughput > 0 for r in online):  # something to compare with: measure one block
            probe = await asyncio.get_running_loop().run_in_executor(
                None, SpanBackend.load, await self._model_for(0, 1), 0, 1, self.config.num_threads, self.config.dtype,
                self.config.kv_dtype)
            block_rate = await asyncio.get_running_loop().run_in_executor(None, probe.measure_throughput)
        length = node_span_length(spec.n_blocks, block_rate, max_blocks, online)
        logger.info("span length %d: %s blocks/s here vs the swarm's %d online records, room for %d blocks",
                    length, f"{block_rate:.1f}" if block_rate else "unmeasured", len(online), max_blocks)
        return length

    async def _maybe_move(self, swarm, backend, table: SessionTable, service: SessionService):
        """Move to other blocks if plan_move says it clearly helps the swarm; returns (backend, table).

        Two-phase, so that twins seeing the same hole do not both move into it (and then flap
        back together): claim the target in our record, wait for the claim to propagate, re-read;
        if a lower peer id claims an overlapping target, or the move no longer helps, withdraw.
        """
        target = await self._plan_move(swarm, backend, table)
        if target is None:
            return backend, table
        self.status.moving_to = target
        await self._announce(swarm, backend, table, ServerState.ONLINE, extra_blocks=range(*target))
        await asyncio.sleep(self.config.claim_wait)
        confirmed = await self._plan_move(swarm, backend, table, claimed=target)
        self.status.moving_to = None
        if confirmed != target:
            logger.info("not moving to [%d, %d): another node claimed it first or it no longer helps", *target)
            await self._announce(swarm, backend, table, ServerState.ONLINE)
            return backend, table
        old_start, old_end = self.status.start, self.status.end
        logger.warning("moving from blocks [%d, %d) to [%d, %d) to rebalance the swarm", old_start, old_end, *target)
        new_backend = await self._load_backend(await self._model_for(*target), *target)
        new_table = self._new_table(new_backend, *target)
        for session_id in list(table.sessions):  # their clients fail over to the old span's other servers
            service.close_session(session_id)
        service.backend, service.table = new_backend, new_table
        # Withdraw from the blocks we leave, then announce the new span.
        leaving = self._record(backend, table, ServerState.LEAVING)
        await swarm.store_records([(block_key(backend.model_id, b), leaving)
                                   for b in range(old_start, old_end) if not target[0] <= b < target[1]],
                                  dht_time() + self.config.record_ttl)
        self.status.start, self.status.end = target
        await self._announce(swarm, new_backend, new_table, ServerState.ONLINE)
        asyncio.get_running_loop().run_in_executor(None, self._preload_head, new_backend)
        return new_backend, new_table

    async def _plan_move(self, swarm, backend, table: SessionTable,
                         claimed: Optional[tuple[int, int]] = None) -> Optional[tuple[int, int]]:
        """plan_move over the DHT's current records; with `claimed`, None if a lower peer id contests it."""
        try:
            found = await asyncio.wait_for(
                swarm.get_records([block_key(backend.model_id, b) for b in range(backend.n_blocks)]),
                self.config.announce_period)
        except (Exception, asyncio.TimeoutError) as e:
            logger.warning("reading the DHT for rebalancing failed: %s", e or type(e).__name__)
            return None
        others = [r for r in parse_records(found, backend.model_id, backend.n_blocks, now=dht_time())
                  if r.state == ServerState.ONLINE and r.peer_id != self.status.peer_id]
        me = self._record(backend, table, ServerState.ONLINE)
        if claimed is not None:
            if contested_by(me, claimed, others):
                return None
            # Higher ids claiming the same blocks will withdraw: see them where they are now.
            others = [r.model_copy(update={"moving_to": None}) if r.moving_to is not None
                      and r.moving_to[0] < claimed[1] and claimed[0] < r.moving_to[1] else r for r in others]
        return plan_move(backend.n_blocks, me.model_copy(update={"moving_to": None}), planning_view(others))

    def _queued_steps(self) -> int:
        return self._batcher.queued if self._batcher is not None else 0

    async def _choose_model(self, swarm) -> str:
        """The catalog model on disk the swarm needs most (model_choice.choose_model over the DHT)."""
        candidates = candidate_models()
        if not candidates:
            raise ValueError("no catalog model is on disk to choose from: install one (`swarmllm models --install "
                             "smollm2-135m`) or pass --model")
        try:
            views = await read_views(swarm, candidates, swarm.peer_id, frozenset(self.config.trusted_gateways))
        except (Exception, asyncio.TimeoutError) as e:
            logger.warning("reading the swarm's demand failed (%s): choosing without it", e or type(e).__name__)
            views = [ModelView(m, n, (), 0.0, True) for m, n in candidates.items()]
        chosen = choose_model(views)
        logger.info("serving %s: %s", chosen, ", ".join(f"{v.model_id} demand {v.demand:.0f} tokens/min, "
                                                        f"pressure {pressure(v):.3g}" for v in views))
        return chosen

    async def _maybe_switch_model(self, swarm, backend, table: SessionTable, service: SessionService):
        """Move to another model if model_choice.plan_model_move says so: returns (backend, table), or None.

        A move happens only when two checks in a row plan the same target (the gain held for a
        rebalance period). Then: announce LEAVING on the old blocks first, as a claim (planners stop
        counting us there, so a second node deciding at the same time sees the blocks it would
        uncover and stays), wait `claim_wait`, re-check that every block we leave has another online
        server (else re-announce ONLINE and stay), load the new span, switch (our sessions close;
        their clients fail over to the old blocks' other servers) and announce the new span ONLINE."""
        candidates = candidate_models()
        me, trusted = self.status.peer_id, frozenset(self.config.trusted_gateways)
        try:
            views = await read_views(swarm, candidates, me, trusted, self.config.announce_period)
        except (Exception, asyncio.TimeoutError) as e:
            logger.warning("reading the DHT for the model choice failed: %s", e or type(e).__name__)
            return None
        current = next((v for v in views if v.model_id == backend.model_id), None)
        span = (self.status.start, self.status.end)
        target = plan_model_move(current, span, views) if current is not None else None
        wished, self._model_wish = self._model_wish, target
        if target is None or wished != target:
            return None
        began = time.perf_counter()
        leaving = self._record(backend, table, ServerState.LEAVING)
        old_keys = [block_key(backend.model_id, b) for b in range(*span)]
        try:
            claim = swarm.store_records([(key, leaving) for key in old_keys], dht_time() + self.config.record_ttl)
            await asyncio.wait_for(claim, self.config.announce_period)
            new_backend, start, end = await self._claim_and_load(swarm, backend, span, views, target, me, trusted)
        except (Exception, asyncio.TimeoutError) as e:  # a failed move leaves the node serving its old span
            logger.warning("not moving to %s: %s", target, e)
            new_backend = None
        if new_backend is None:
            await self._announce(swarm, backend, table, ServerState.ONLINE)
            return None
        logger.warning("moving from %s [%d, %d) to %s [%d, %d): the swarm's demand shifted",
                       backend.model_id, *span, target, start, end)
        new_table = self._new_table(new_backend, start, end)
        for session_id in list(table.sessions):
            service.close_session(session_id)
        service.backend, service.table, service.model_id = new_backend, new_table, new_backend.model_id
        self._model, self._model_id, self.status.model_id = target, new_backend.model_id, new_backend.model_id
        self.status.start, self.status.end = start, end
        await self._announce(swarm, new_backend, new_table, ServerState.ONLINE)
        await swarm.store_records([(key, leaving) for key in old_keys], dht_time() + self.config.record_ttl)
        self._model_wish = None
        logger.info("now serving %s [%d, %d) (%.1f s)", target, start, end, time.perf_counter() - began)
        asyncio.get_running_loop().run_in_executor(None, self._preload_head, new_backend)
        return new_backend, new_table

    async def _claim_and_load(self, swarm, backend, span, views, target: str, me: str, trusted: frozenset):
        """After our LEAVING claim: (the target's loaded backend, start, end), or (None, 0, 0) if leaving
        would uncover a block of ours."""
        await asyncio.sleep(self.config.claim_wait)
        old = await read_views(swarm, {backend.model_id: backend.n_blocks}, me, trusted, self.config.announce_period)
        counts, _ = block_coverage(backend.n_blocks, old[0].others)
        if any(counts[b] == 0 for b in range(*span)):
            logger.info("not moving to %s: blocks of %s would be left without a server", target, backend.model_id)
            return None, 0, 0
        spec = SpanBackend.describe(target)
        theirs = next(v for v in views if v.model_id == target)
        length = self.config.num_blocks or await self._auto_span_length(spec, list(theirs.others))
        start, end = choose_span(spec.n_blocks, length, theirs.others)
        new_backend = await self._load_backend(target, start, end)
        return new_backend, start, end

    def _record(self, backend, table: SessionTable, state: ServerState) -> ServerRecord:
        return ServerRecord(
            peer_id=self.status.peer_id, model_id=backend.model_id, start=self.status.start, end=self.status.end,
            n_blocks=backend.n_blocks, state=state, throughput=min(self.status.throughput, MAX_THROUGHPUT),
            free_cache_tokens=table.free_tokens, max_session_length=table.max_session_length,
            active_sessions=len(table.sessions), compute_class=backend.compute_class,
            queued_steps=min(self._queued_steps(), MAX_LOAD), price=self.config.price,
            addresses=tuple(self.status.addresses[:MAX_ADDRESSES]),
            announced_at=dht_time(), moving_to=self.status.moving_to,
            ring=backend.source is not None and backend.ends_a_chain,
            relayed=self._swarm is not None and self._swarm.relayed,
            owner=self._certificates.current(dht_time()) if self._certificates is not None else None,
            **self.counters.sample(self.service.tokens_processed if self.service is not None else 0,
                                   self._swarm.traffic if self._swarm is not None else None))

    async def _announce(self, swarm: SwarmNode, backend, table: SessionTable, state: ServerState,
                        extra_blocks: range = range(0), timeout: Optional[float] = None) -> None:
        """Store our record (signed by the swarm node) under every block we serve (and `extra_blocks`,
        e.g. a claimed target) and our registry entry, giving up after `timeout` s (default:
        announce_period). Every announcement, LEAVING included, expires record_ttl s from now: a
        DHT node keeps the later-expiring of two entries, so a shorter-lived LEAVING record would
        be refused while the last ONLINE one lingers."""
        record = self._record(backend, table, state)
        blocks = sorted(set(range(self.status.start, self.status.end)) | set(extra_blocks))
        items = [(block_key(backend.model_id, b), record) for b in blocks]
        items.append((MODEL_REGISTRY_KEY, ModelRecord(model_id=backend.model_id, n_blocks=backend.n_blocks)))
        try:
            await asyncio.wait_for(swarm.store_records(items, dht_time() + self.config.record_ttl),
                                   timeout or self.config.announce_period)
        except (Exception, asyncio.TimeoutError) as e:  # the DHT being briefly unreachable must not kill the node
            logger.warning("announcing to the DHT failed: %s", e or type(e).__name__)

    def _next_rebalance(self) -> float:
        if self.config.blocks is not None or self.config.rebalance_period <= 0:
            return float("inf")  # the operator chose the blocks
        # Jitter, so that nodes which started together do not all move at once.
        return time.monotonic() + self.config.rebalance_period * random.uniform(1.0, 1.5)

    async def _serve_until_stopped(self, swarm, backend, table, service: SessionService) -> None:
        next_announce = time.monotonic() + self.config.announce_period
        next_rebalance = self._next_rebalance()
        announced_sessions = len(table.sessions)
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), timeout=1.0)
            except asyncio.TimeoutError:
                pass
            service.evict_idle(self.config.session_timeout)
            paused = self._paused_reason is not None
            if paused == service.accepting and not self._stop.is_set():  # pause() or resume() since last time
                service.accepting, service.refusal = not paused, f"this node is paused ({self._paused_reason}); " \
                    "open the session elsewhere"
                state = ServerState.LEAVING if paused else ServerState.ONLINE
                await self._unless_stopped(self._announce(swarm, backend, table, state))
                next_announce = time.monotonic() + self.config.announce_period
                continue
            if paused:  # keep the LEAVING record fresh; no rebalancing while paused
                if time.monotonic() >= next_announce and not self._stop.is_set():
                    await self._unless_stopped(self._announce(swarm, backend, table, ServerState.LEAVING))
                    next_announce = time.monotonic() + self.config.announce_period
                continue
            if time.monotonic() >= next_rebalance and not self._stop.is_set():
                moved = await self._maybe_switch_model(swarm, backend, table, service) \
                    if self.config.model is None else None
                backend, table = moved or await self._maybe_move(swarm, backend, table, service)
                next_rebalance = self._next_rebalance()
            # Load is routing's input (client/load.py): announce at once (at most once a second) when the
            # number of sessions here changed, not only every announce_period.
            load_changed = len(table.sessions) != announced_sessions
            if (time.monotonic() >= next_announce or load_changed) and not self._stop.is_set():
                announced_sessions = len(table.sessions)
                await self._unless_stopped(self._announce(swarm, backend, table, ServerState.ONLINE))
                next_announce = time.monotonic() + self.config.announce_period
        # Leaving: tell routers first, then drain in-flight steps.
        self.status.state = "draining"
        service.accepting = False
        service.refusal = "this node is shutting down; open the session elsewhere"
        await self._announce(swarm, backend, table, ServerState.LEAVING, timeout=LEAVE_ANNOUNCE_SECONDS)
        deadline = time.monotonic() + self.config.drain_seconds
        while any(s.lock.locked() for s in table.sessions.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for session_id in list(table.sessions):
            service.close_session(session_id)
        batcher = service.batcher
        logger.info("ran %d steps in %d batches", batcher.steps_run, batcher.batches_run)
        service.executor.shutdown(wait=False, cancel_futures=True)
